"""Point-in-time training sets from event archives, computed by the online features' code.

    python -m pipelines.training_set --pipeline=user --events='events/*.jsonl' \\
        --labels=labels.csv --output=train.parquet [--features=a,b] [--runner=...]

For each label row (an entity and a time T) the output holds, per feature,
the value the online store would have served at T had the stream been
processed in event-time order with no processing lag: the entity's events
with event time <= T are in (an event at exactly T is), nothing later is,
every timer due at or before T has fired, and of the updates emitted so far
the one the sink's ``as_of`` guard kept is the value. The features are the
catalogue's, run by the fused stage's own DoFn (``transforms.replay``), with
the same settings flags as the online pipelines: give both the same ones.

Columns of the output (Parquet, one row per valid label row, in label-file
order): the label columns unchanged; per feature ``<feature>`` (its value;
maps as JSON text, keys sorted, as Redis holds them), ``<feature>__as_of_ms``
(the served update's ``as_of``; null when none) and ``<feature>__is_default``
(true when nothing had been served by T: the value is the catalogue's
cold-start default). Label rows with no entity or an unusable time, and
malformed events, go to the dead-letter file (``--dead_letter``; default
``<output>.dead_letters.jsonl``) with the reason, and are counted.

Runs on the DirectRunner by default; ``--runner=FlinkRunner`` runs it as a
batch job on the local cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipelines.catalogue import PIPELINES
from pipelines.common import summarize, write_lines
from pipelines.labels import (
    ENTITY_COLUMN,
    TIMESTAMP_COLUMN,
    BadLabel,
    LabelRow,
    label_files,
    label_schema,
    parse_row,
    read_rows,
)
from pipelines.options import add_feature_arguments, engine_settings
from pipelines.produce import SCHEMA_FILES
from pipelines.storage import use_emulator_if_set
from runtime.direct import apply_direct_preset
from transforms.declarations import Feature
from transforms.decode import DEAD, EVENTS, EventSchema, ReadEvents
from transforms.engine import EngineSettings, FeatureEngine
from transforms.model import DeadLetter, FeatureUpdate, encode_value
from transforms.replay import point_in_time

AS_OF = "__as_of_ms"
IS_DEFAULT = "__is_default"
_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "map": pa.string(),
                "string": pa.string()}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The training set's own flags, and the rest for Beam (``--runner=...``).

    Its flags are parsed apart from Beam's options: Beam registers every
    options class in one parser, where ``--labels`` is Dataflow's job labels
    and the feature flags are the online pipelines' own.
    """
    parser = argparse.ArgumentParser(prog="python -m pipelines.training_set",
                                     description=__doc__.split("\n", 1)[0])
    group = parser.add_argument_group("training set")
    group.add_argument("--pipeline", choices=sorted(PIPELINES), required=True,
                       help="whose features: the catalogue's pipeline")
    group.add_argument("--events", required=True,
                       help="JSON lines, or Avro container files if it ends in .avro; "
                            "globs; any Beam filesystem path (gs://)")
    group.add_argument("--labels", required=True,
                       help="CSV (with a header) or .parquet label rows; globs, gs://")
    group.add_argument("--output", required=True, help="the training set, Parquet")
    group.add_argument("--features", default=None,
                       help="comma-separated feature names (default: all of the pipeline)")
    group.add_argument("--entity_column", default=ENTITY_COLUMN)
    group.add_argument("--timestamp_column", default=TIMESTAMP_COLUMN,
                       help="epoch ms or ISO-8601 (no zone: UTC)")
    group.add_argument("--dead_letter", default=None,
                       help="bad label rows and events, one JSON line each "
                            "(default <output>.dead_letters.jsonl)")
    add_feature_arguments(parser.add_argument_group("features"), engine=False)
    args, rest = parser.parse_known_args(list(argv))
    return args, rest


def selected_features(pipeline: str, names: str | None) -> list[Feature]:
    """The pipeline's features named in ``names`` (all when None); one entity field."""
    features = list(PIPELINES[pipeline])
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        known = {f.name: f for f in features}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise SystemExit(f"--features: {unknown} are not features of the {pipeline} "
                             f"pipeline (it has {', '.join(known)})")
        features = [known[n] for n in dict.fromkeys(wanted)]
    if len({f.entity for f in features}) > 1:
        raise SystemExit("--features: a training set's features must share one entity "
                         "field (one label entity per row)")
    return features


def output_schema(labels: pa.Schema, features: Sequence[Feature]) -> pa.Schema:
    """The label columns, then per feature its value, ``as_of`` and default flag."""
    fields = list(labels)
    for f in features:
        fields += [pa.field(f.name, _ARROW_TYPES[f.value_type]),
                   pa.field(f.name + AS_OF, pa.int64()),
                   pa.field(f.name + IS_DEFAULT, pa.bool_())]
    names = [field.name for field in fields]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SystemExit(f"label columns {clashes} clash with the training set's feature "
                         f"columns; rename them in the label file")
    return pa.schema(fields)


def feature_columns(features: Sequence[Feature], served: dict[str, FeatureUpdate]
                    ) -> dict[str, Any]:
    """The feature columns of one row from the updates served at its time."""
    out: dict[str, Any] = {}
    for f in features:
        update = served.get(f.name)
        value = f.default if update is None else update.value
        out[f.name] = encode_value(value) if f.value_type == "map" else value
        out[f.name + AS_OF] = None if update is None else update.as_of_ms
        out[f.name + IS_DEFAULT] = update is None
    return out


class _ReadLabelsFn(beam.DoFn):
    """One label file -> ``(entity, LabelRow)``, or dead letters for bad rows."""

    def __init__(self, entity_column: str, timestamp_column: str) -> None:
        self._entity_column = entity_column
        self._timestamp_column = timestamp_column
        self._rows = Metrics.counter("training_set", "label_rows")
        self._dead = Metrics.counter("training_set", "label_dead_letters")

    def process(self, indexed: tuple[int, str]) -> Iterator[Any]:
        number, path = indexed
        for i, row in enumerate(read_rows(path)):
            self._rows.inc()
            try:
                label = parse_row(row, (number, i), self._entity_column,
                                  self._timestamp_column)
            except BadLabel as e:
                self._dead.inc()
                yield pvalue.TaggedOutput(DEAD, DeadLetter(
                    f"{path}#{i + 1}", f"label row {i + 1}: {e}",
                    json.dumps(row, default=str, sort_keys=True)))
                continue
            yield label.entity, label


class _PointInTimeFn(beam.DoFn):
    """An entity's events and label rows -> one training row per label row."""

    def __init__(self, pipeline: str, features: Sequence[Feature],
                 settings: EngineSettings) -> None:
        self._pipeline = pipeline
        self._features = list(features)
        self._settings = settings
        self._entities = Metrics.counter("training_set", "entities_replayed")
        self._events = Metrics.counter("training_set", "events_replayed")
        self._written = Metrics.counter("training_set", "rows")
        self._defaults = {f.name: Metrics.counter("training_set", f"{f.name}_defaults")
                          for f in features}

    def setup(self) -> None:
        entity = self._features[0].entity
        self._fn = FeatureEngine(self._features, self._settings,
                                 self._pipeline).fused_fns()[entity]
        self._time_field = self._features[0].time_field

    def process(self, joined: tuple[str, dict[str, Iterable[Any]]]
                ) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
        entity, groups = joined
        labels = [(label.at_ms, label) for label in groups["labels"]]
        if labels:  # an entity no label asks about needs no replay
            yield from self._rows(entity, list(groups["events"]), labels)

    def _rows(self, entity: str, events: list[dict[str, Any]],
              labels: list[tuple[int, LabelRow]]
              ) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
        self._entities.inc()
        self._events.inc(len(events))
        labels.sort(key=lambda pair: pair[1].position)  # a stable order for equal times
        for _, label, served in point_in_time(self._fn, entity, events, labels,
                                              self._time_field):
            columns = feature_columns(self._features, served)
            for f in self._features:
                if columns[f.name + IS_DEFAULT]:
                    self._defaults[f.name].inc()
            self._written.inc()
            yield label.position, {**label.row, **columns}


# Where each row came from in the label files, in the part files only.
_FILE, _ROW = "__label_file", "__label_row"


def _with_position(pair: tuple[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    (number, row), columns = pair
    return {**columns, _FILE: number, _ROW: row}


def merge_parts(parts: list[str], output: str, schema: pa.Schema) -> str:
    """Writes the rows of the part files to ``output`` in label-file order, then
    deletes the parts (and their directory, on a filesystem that has them).

    The rows are gathered here, in one process, and not through a single-key
    GroupByKey, which would carry them all as one element between the runner
    and the Python worker (on Flink, past the TaskManager's direct memory)."""
    tables = []
    for path in parts:
        with FileSystems.open(path) as f:
            tables.append(pq.read_table(pa.BufferReader(f.read())))
    table = pa.concat_tables(tables) if tables else _part_schema(schema).empty_table()
    table = table.sort_by([(_FILE, "ascending"), (_ROW, "ascending")]).drop_columns(
        [_FILE, _ROW]).cast(schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with FileSystems.create(output) as f:
        f.write(sink.getvalue().to_pybytes())
    if parts:
        FileSystems.delete(parts)
    if FileSystems.exists(_parts_dir(output)):  # a local directory; object stores have none
        FileSystems.delete([_parts_dir(output)])
    return output


def _part_schema(schema: pa.Schema) -> pa.Schema:
    """The output's columns and each row's place in the label files."""
    return schema.append(pa.field(_FILE, pa.int64())).append(pa.field(_ROW, pa.int64()))


def _parts_dir(output: str) -> str:
    return f"{output}.parts"


def build(pipeline: beam.Pipeline, options: argparse.Namespace) -> None:
    """Adds the training set's reads, point-in-time join and writes to ``pipeline``."""
    features = selected_features(options.pipeline, options.features)
    files = label_files(options.labels)
    schema = output_schema(label_schema(files[0]), features)
    entity_field = features[0].entity
    settings = engine_settings(options)

    events = pipeline | "ReadEvents" >> ReadEvents(
        options.events, EventSchema(SCHEMA_FILES[options.pipeline]))
    keyed_events = events[EVENTS] | "KeyEventsByEntity" >> beam.Map(
        lambda e: (str(e[entity_field]), e))
    labels = (pipeline
              | "LabelFiles" >> beam.Create(list(enumerate(files)))
              | "ReadLabels" >> beam.ParDo(_ReadLabelsFn(
                  options.entity_column, options.timestamp_column)).with_outputs(
                      DEAD, main="labels"))
    rows = ({"events": keyed_events, "labels": labels["labels"]}
            | "JoinByEntity" >> beam.CoGroupByKey()
            | "PointInTime" >> beam.ParDo(_PointInTimeFn(options.pipeline, features,
                                                         settings)))
    # Each bundle's rows go to a part file (Beam's Parquet sink); one step then
    # writes them to the output in label-file order.
    (rows
     | "WithPosition" >> beam.Map(_with_position)
     | "WriteParts" >> beam.io.WriteToParquet(f"{_parts_dir(options.output)}/part",
                                              _part_schema(schema), file_name_suffix=".parquet")
     | "PartNames" >> beam.combiners.ToList()
     | "InLabelOrder" >> beam.Map(merge_parts, options.output, schema))
    dead = (events[DEAD], labels[DEAD]) | "FlattenDeadLetters" >> beam.Flatten()
    write_lines(dead, options.dead_letter or f"{options.output}.dead_letters.jsonl",
                "DeadLetters")


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv``, writes the training set, returns and prints its counters."""
    from runtime.flink import is_flink, with_flink_defaults

    use_emulator_if_set()
    training, beam_argv = parse_args(argv or [])
    if is_flink(beam_argv):
        # A bounded job: batch mode, no checkpoints, and big bundles (nobody waits
        # for a value: the per-bundle cost is all there is to save).
        if not any(a.startswith("--bundle_preset") for a in beam_argv):
            beam_argv = ["--bundle_preset=catch_up", *beam_argv]
        # Flink's pipelined batch exchanges deadlock on plans that branch and
        # join again (side inputs do): a 1M-event training set stalled with
        # every stage idle. Blocking exchanges between stages do not.
        if not any(a.startswith("--execution_mode_for_batch") for a in beam_argv):
            beam_argv = ["--execution_mode_for_batch=BATCH_FORCED", *beam_argv]
        beam_argv = with_flink_defaults(beam_argv, streaming=False, checkpoint_interval_ms=None,
                                        externalized_checkpoints=False,
                                        finish_bundle_before_checkpointing=False)
    options = PipelineOptions(beam_argv)
    options.view_as(SetupOptions).save_main_session = False
    apply_direct_preset(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, training)
    result = pipeline.run()
    result.wait_until_finish()
    summary = {"pipeline": "training_set", "output": training.output, **summarize(result)}
    print(json.dumps(summary, sort_keys=True))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
