"""Training/serving skew, measured: what the online store served at each label time
against what the training set says.

    python -m pipelines.skew --pipeline=user --feature_log=updates.jsonl \\
        --labels=labels.csv --training_set=train.parquet [--out=skew.jsonl]

The feature log of an online run (``--feature_log``, written by the fused
engine) records for every update ``visible_ms``, the event time at which it
became visible (the entity's newest event time processed so far, or the time
of the timer that emitted it), and ``seq``, its place among the entity's
updates. The value served at label time T is rebuilt from it: of the
entity's updates with ``visible_ms <= T``, taken in ``(visible_ms, seq)``
order, the one the sink's ``as_of`` guard kept; none means the cold-start
default. Each label row is compared, feature by feature, with its row of the
training set (same label file, so the same rows in the same order).

Prints one JSON summary line (rows compared, rows equal, rows differing,
differing cells per feature) and writes every differing cell, with both
values, to ``--out`` (default: the first 20 on stderr). ``--fail_on_skew``
exits 1 when any row differs.

With ``--events`` (the stream as the online run received it: a replayed
file, or the records in the order they were produced) each differing cell
is explained where it can be: online, an entity's value at T held its
events that arrived before its first event later than T, so events at or
before T that arrived after that one (out of order within the entity, late,
or dropped as too late) are what the online value lacked. The summary then
counts the cells explained that way and those left unexplained.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import fastavro
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.catalogue import PIPELINES
from pipelines.labels import (
    ENTITY_COLUMN,
    TIMESTAMP_COLUMN,
    BadLabel,
    label_files,
    parse_row,
    read_rows,
)
from pipelines.storage import use_emulator_if_set
from pipelines.training_set import AS_OF, IS_DEFAULT
from transforms.declarations import Feature
from transforms.model import FeatureUpdate, decode_value


class ServedHistory:
    """Per entity and feature, what the store held from each ``visible_ms`` on."""

    def __init__(self) -> None:
        self._updates: dict[tuple[str, str], list[tuple[int, int, FeatureUpdate]]] = {}
        self._index: dict[tuple[str, str], tuple[list[int], list[FeatureUpdate]]] = {}
        self.lines = 0

    def add(self, update: FeatureUpdate) -> None:
        if update.visible_ms is None:
            raise ValueError(f"a feature-log line without visible_ms ({update.feature} of "
                             f"{update.entity_id}): the log was not written by the fused "
                             f"engine (--engine=fused, the default) of this version")
        self.lines += 1
        self._updates.setdefault((update.entity_id, update.feature), []).append(
            (update.visible_ms, update.seq or 0, update))

    def _build(self) -> None:
        for key, entries in self._updates.items():
            entries.sort(key=lambda e: (e[0], e[1]))
            times, kept = [], []
            current: FeatureUpdate | None = None
            for visible, _, update in entries:
                if current is None or update.newer_than(current):
                    current = update
                times.append(visible)
                kept.append(current)
            self._index[key] = (times, kept)
        self._updates.clear()

    def served(self, entity: str, feature: str, at_ms: int) -> FeatureUpdate | None:
        """The update the store held for ``feature`` of ``entity`` at ``at_ms``."""
        if self._updates:
            self._build()
        times, kept = self._index.get((entity, feature), ((), ()))
        i = bisect.bisect_right(times, at_ms)
        return kept[i - 1] if i else None


def read_log(pattern: str, features: set[str]) -> ServedHistory:
    """The feature-log lines of ``features`` in the files ``pattern`` matches."""
    history = ServedHistory()
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(f"no feature log matches {pattern!r}")
    for path in paths:
        with FileSystems.open(path) as f:
            for raw in f:
                line = json.loads(raw)
                if line["feature"] not in features:
                    continue
                history.add(FeatureUpdate(
                    line["entity_type"], line["entity_id"], line["feature"], line["value"],
                    line["as_of_ms"], line["final"], line.get("visible_ms"), line.get("seq")))
    return history


class ArrivalOrder:
    """Per entity, its events' times in the order the online run received them."""

    def __init__(self, entity_field: str, time_field: str) -> None:
        self._entity_field, self._time_field = entity_field, time_field
        self._times: dict[str, list[int]] = {}

    def read(self, pattern: str) -> ArrivalOrder:
        """JSON lines, or Avro container files if ``pattern`` ends in ``.avro``;
        lines that are not events are skipped (they were dead letters online)."""
        for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
            with FileSystems.open(path) as f:
                if path.endswith(".avro"):
                    for record in fastavro.reader(f):
                        self._add(record)
                    continue
                for raw in f:
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue
                    self._add(record)
        return self

    def _add(self, record: Any) -> None:
        if not isinstance(record, dict):
            return
        entity, ts = record.get(self._entity_field), record.get(self._time_field)
        if isinstance(entity, str) and isinstance(ts, int) and not isinstance(ts, bool):
            self._times.setdefault(entity, []).append(ts)

    def missing_at(self, entity: str, at_ms: int) -> list[int]:
        """The entity's event times <= ``at_ms`` that arrived after its first event
        later than ``at_ms``: what its online value at ``at_ms`` lacked."""
        times = self._times.get(entity, [])
        first_later = next((i for i, ts in enumerate(times) if ts > at_ms), len(times))
        return [ts for ts in times[first_later:] if ts <= at_ms]


def _cell(feature: Feature, value: Any, as_of: int | None, is_default: bool
          ) -> dict[str, Any]:
    if feature.value_type == "map" and isinstance(value, str):
        value = decode_value("map", value)
    return {"value": value, "as_of_ms": as_of, "is_default": is_default}


def compare(pipeline: str, log: str, labels: str, training_set: str,
            names: Sequence[str] | None = None, entity_column: str = ENTITY_COLUMN,
            timestamp_column: str = TIMESTAMP_COLUMN, events: str | None = None
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, differing cells) of a training set against an online run's log;
    with ``events``, each differing cell says what the online value lacked."""
    with FileSystems.open(training_set) as f:
        table = pq.read_table(f)
    columns = set(table.column_names)
    features = [f for f in PIPELINES[pipeline]
                if f.name in columns and (not names or f.name in names)]
    if not features:
        raise SystemExit(f"{training_set} has no column of a {pipeline} feature")
    history = read_log(log, {f.name for f in features})
    arrivals = (ArrivalOrder(features[0].entity, features[0].time_field).read(events)
                if events else None)
    trained = table.to_pylist()
    rows = list(_valid_labels(labels, entity_column, timestamp_column))
    if len(rows) != len(trained):
        raise SystemExit(f"{labels} has {len(rows)} valid label rows, {training_set} "
                         f"{len(trained)} rows: not a training set of these labels")
    differing: list[dict[str, Any]] = []
    per_feature = {f.name: 0 for f in features}
    rows_equal = 0
    for number, (label, row) in enumerate(zip(rows, trained, strict=True)):
        equal = True
        for f in features:
            update = history.served(label.entity, f.name, label.at_ms)
            served = (_cell(f, f.default, None, True) if update is None
                      else _cell(f, update.value, update.as_of_ms, False))
            offline = _cell(f, row[f.name], row[f.name + AS_OF], row[f.name + IS_DEFAULT])
            if (served["value"], served["is_default"]) != (offline["value"],
                                                           offline["is_default"]):
                equal = False
                per_feature[f.name] += 1
                cell = {"row": number, "entity": label.entity, "at_ms": label.at_ms,
                        "feature": f.name, "served": served, "training": offline}
                if arrivals is not None:
                    cell["arrived_after_a_later_event"] = arrivals.missing_at(
                        label.entity, label.at_ms)
                differing.append(cell)
        rows_equal += equal
    summary = {"pipeline": pipeline, "rows_compared": len(rows), "rows_equal": rows_equal,
               "rows_differing": len(rows) - rows_equal, "cells_differing": per_feature,
               "log_updates": history.lines}
    if arrivals is not None:
        explained = sum(1 for c in differing if c["arrived_after_a_later_event"])
        summary.update(cells_explained_by_arrival_order=explained,
                       cells_unexplained=len(differing) - explained)
    return summary, differing


def _valid_labels(pattern: str, entity_column: str, timestamp_column: str) -> Iterator[Any]:
    for number, path in enumerate(label_files(pattern)):
        for i, row in enumerate(read_rows(path)):
            try:
                yield parse_row(row, (number, i), entity_column, timestamp_column)
            except BadLabel:
                continue  # a dead letter of the training set too: it has no row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.skew",
                                     description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), required=True)
    parser.add_argument("--feature_log", required=True,
                        help="the online run's feature log (files or a glob)")
    parser.add_argument("--labels", required=True, help="the training set's label file(s)")
    parser.add_argument("--training_set", required=True, help="the training set (Parquet)")
    parser.add_argument("--features", default=None, help="comma-separated (default: all)")
    parser.add_argument("--entity_column", default=ENTITY_COLUMN)
    parser.add_argument("--timestamp_column", default=TIMESTAMP_COLUMN)
    parser.add_argument("--events", default=None,
                        help="the events as the online run received them (JSON lines or "
                             ".avro): explains differing cells by arrival order")
    parser.add_argument("--out", default=None, help="every differing cell, one JSON line each")
    parser.add_argument("--fail_on_skew", action="store_true",
                        help="exit 1 when a row differs")
    args = parser.parse_args(argv)
    use_emulator_if_set()
    names = [n.strip() for n in args.features.split(",")] if args.features else None
    summary, differing = compare(args.pipeline, args.feature_log, args.labels,
                                 args.training_set, names, args.entity_column,
                                 args.timestamp_column, args.events)
    if args.out:
        with FileSystems.create(args.out) as f:
            for cell in differing:
                f.write((json.dumps(cell, sort_keys=True) + "\n").encode("utf-8"))
    else:
        for cell in differing[:20]:
            sys.stderr.write(json.dumps(cell, sort_keys=True) + "\n")
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    if args.fail_on_skew and differing:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
