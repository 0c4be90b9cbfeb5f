"""Wiring shared by the feature pipelines: sources, side outputs, sinks, the run."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipelines.options import FeatureOptions
from runners.direct import apply_direct_preset
from transforms.decode import DEAD, EVENTS, EventSchema, ReadEvents
from transforms.merge import MergeFeatureVectors
from transforms.model import DeadLetter
from transforms.redis_sink import RedisSinkConfig, WriteToRedis

_LOG = logging.getLogger(__name__)

# Builds the features of one pipeline: (keyed-free events, options) -> (updates, late events).
FeatureGraph = Callable[[beam.PCollection, FeatureOptions],
                        tuple[list[beam.PCollection], list[beam.PCollection]]]


def _write_lines(pcoll: beam.PCollection, path: str, label: str) -> None:
    """Writes JSON lines: to exactly ``path`` for a bounded input, else windowed files.

    An unbounded stream never ends, so it cannot be one file: it becomes files
    ``<path>-<window>-<shard>`` per minute of event time.
    """
    lines = pcoll | f"{label}ToJson" >> beam.Map(lambda r: r.to_json())
    if pcoll.is_bounded:
        lines | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="",
                                                      num_shards=1)
        return
    from apache_beam.io import fileio
    from apache_beam.transforms.window import FixedWindows

    (lines
     | f"Window{label}" >> beam.WindowInto(FixedWindows(60))
     | f"Write{label}" >> fileio.WriteToFiles(
         path=str(Path(path).parent), shards=1,
         file_naming=fileio.default_file_naming(Path(path).name, ".jsonl")))


class _LogDeadLetters(beam.DoFn):
    """Without --dead_letter, dead letters are logged (and still counted)."""

    def process(self, dead: DeadLetter) -> None:
        payload = dead.payload if isinstance(dead.payload, str) else repr(dead.payload)
        _LOG.warning("dead letter from %s: %s; payload %.200s", dead.source, dead.reason, payload)


def build(pipeline: beam.Pipeline, options: FeatureOptions, schema: EventSchema,
          features: FeatureGraph) -> None:
    """Adds source, features and sinks of a feature pipeline to ``pipeline``."""
    if options.input:
        decoded = pipeline | "ReadEvents" >> ReadEvents(options.input, schema)
    elif options.topic:
        from pipelines.kafka_source import ReadEventsFromKafka

        decoded = pipeline | "ReadEvents" >> ReadEventsFromKafka(options, schema)
    else:
        raise SystemExit("give --input=FILE, or --bootstrap_servers and --topic")

    updates, late = features(decoded[EVENTS], options)
    all_updates = updates | "FlattenUpdates" >> beam.Flatten()

    if options.dead_letter:
        _write_lines(decoded[DEAD], options.dead_letter, "DeadLetters")
    if options.dead_letter_topic:
        from pipelines.kafka_source import WriteLinesToKafka

        decoded[DEAD] | "DeadLettersToKafka" >> WriteLinesToKafka(
            options, options.dead_letter_topic)
    if not (options.dead_letter or options.dead_letter_topic):
        decoded[DEAD] | "LogDeadLetters" >> beam.ParDo(_LogDeadLetters())
    if late and (options.late_output or options.late_topic):
        late_events = late | "FlattenLate" >> beam.Flatten()
        if options.late_output:
            _write_lines(late_events, options.late_output, "LateEvents")
        if options.late_topic:
            from pipelines.kafka_source import WriteLinesToKafka

            late_events | "LateToKafka" >> WriteLinesToKafka(options, options.late_topic)
    if options.feature_log:
        _write_lines(all_updates, options.feature_log, "FeatureLog")
    if options.redis_url:
        config = RedisSinkConfig(
            url=options.redis_url, layout=options.redis_layout, prefix=options.redis_prefix,
            key_ttl_s=options.redis_key_ttl_s, batch_size=options.redis_batch_size,
            flush_ms=options.redis_flush_ms)
        (all_updates
         | "MergeVectors" >> MergeFeatureVectors()
         | "WriteToRedis" >> WriteToRedis(config))


def run(argv: Sequence[str] | None, schema_file: str, features: FeatureGraph,
        name: str) -> dict[str, int]:
    """Parses ``argv``, runs the pipeline to completion, returns and logs its counters."""
    options = PipelineOptions(argv)
    options.view_as(SetupOptions).save_main_session = False
    apply_direct_preset(options)
    feature_options = options.view_as(FeatureOptions)
    schema = EventSchema(feature_options.reader_schema or schema_file)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, feature_options, schema, features)
    result = pipeline.run()
    result.wait_until_finish()
    summary = summarize(result)
    print(json.dumps({"pipeline": name, **summary}, sort_keys=True))
    return summary


def summarize(result: Any) -> dict[str, int]:
    """The pipeline's counters, named ``namespace.name``."""
    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except (NotImplementedError, KeyError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[key] = totals.get(key, 0) + int(value or 0)
    return totals
