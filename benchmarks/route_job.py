"""One window kind's features compiled either way Beam offers, as a job section 6c runs.

    python -m benchmarks.route_job --pipeline=user --kind=tumbling --route=windowed \\
        <the flags of pipelines.user_features>

``--kind`` picks the pipeline's declarations of one window kind (``KINDS``);
``--route`` compiles them:

- ``stateful``: the product's engine (``transforms.engine.FeatureEngine``, the
  fused stage) with only those declarations.
- ``windowed``: ``WindowInto`` with the declaration's Beam window function,
  allowed lateness and a trigger (speculative panes at most every second of
  processing time, the on-time pane at the watermark, a pane per late
  element; accumulating), then ``CombinePerKey`` on the runner's
  GroupByKey; lifetime features are ``GlobalWindows`` with a repeated
  processing-time trigger. On Flink the windowing, merging (sessions) and
  triggering run in Java; Python decodes, filters, keys and combines what
  each pane holds. Too-late events are dropped by the runner: this route has
  no late output.

Both start with a step named ``<Pipeline>Features`` that takes every event
(the fused stage; a pass-through before the windows), so the section counts
events, not GroupByKey inputs. Same source, decoding and Redis sink as the
feature pipelines (``pipelines.common.run``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from pipelines.catalogue import PIPELINES
from pipelines.common import run
from pipelines.options import FeatureOptions, engine_settings
from transforms.aggregations import Accumulator
from transforms.declarations import Feature
from transforms.engine import FeatureEngine, camel
from transforms.model import FeatureUpdate

KINDS = {"user": ("tumbling", "session", "lifetime"), "ride": ("sliding",)}


def features_of(pipeline: str, kind: str) -> list[Feature]:
    found = [f for f in PIPELINES[pipeline] if f.window_kind == kind]
    if kind == "sliding":
        found = [f for f in found if f.aggregation.op == "sum"][:1]
    if not found:
        raise SystemExit(f"pipeline {pipeline!r} declares no {kind} feature")
    return found


class _Combine(beam.CombineFn):
    """A declaration's aggregation as a CombineFn: the accumulator is a list of the
    engine's accumulators (merging concatenates; reading reads them together)."""

    def __init__(self, op: str, time_field: str) -> None:
        self._acc = Accumulator(op)
        self._time_field = time_field

    def create_accumulator(self) -> list[Any]:
        return [self._acc.create()]

    def add_input(self, accs: list[Any], value: Any) -> list[Any]:
        accs[-1] = self._acc.add(accs[-1], value[0], value[1])
        return accs

    def merge_accumulators(self, accumulators: Any) -> list[Any]:
        return [a for accs in accumulators for a in accs]

    def extract_output(self, accs: list[Any]) -> Any:
        return self._acc.value(accs)


class _Session(beam.CombineFn):
    """A session's (first, last event time, events the filter passed)."""

    def create_accumulator(self) -> list[int]:
        return [2**62, -(2**62), 0]

    def add_input(self, acc: list[int], value: Any) -> list[int]:
        ts, counted = value
        return [min(acc[0], ts), max(acc[1], ts), acc[2] + counted]

    def merge_accumulators(self, accumulators: Any) -> list[int]:
        accs = list(accumulators)
        return [min(a[0] for a in accs), max(a[1] for a in accs), sum(a[2] for a in accs)]

    def extract_output(self, acc: list[int]) -> list[int]:
        return acc


def _trigger(kind: str) -> Any:
    if kind == "lifetime":
        return trigger.Repeatedly(trigger.AfterProcessingTime(1))
    return trigger.AfterWatermark(early=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
                                  late=trigger.AfterCount(1))


def _window_fn(f: Feature) -> Any:
    if f.window_kind == "sliding":
        return window.SlidingWindows(f.window_ms // 1000, f.window.tile_s)
    return f.window


class _Updates(beam.DoFn):
    def __init__(self, features: list[Feature], kind: str) -> None:
        self._features = features
        self._kind = kind

    def process(self, kv: tuple[str, Any], win=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam) -> Iterator[FeatureUpdate]:
        key, value = kv
        final = pane.timing in (PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE)
        for f in self._features:
            if self._kind == "session":
                first, last, counted = value
                v = counted if f.aggregation.op == "count" else (last - first) // 1000
                yield FeatureUpdate(f.entity_type, key, f.name, v, last, final)
            elif self._kind == "lifetime":
                yield FeatureUpdate(f.entity_type, key, f.name, value, 0, False)
            else:
                yield FeatureUpdate(f.entity_type, key, f.name, value,
                                    win.end.micros // 1000, final)


def windowed(pipeline: str, kind: str, events: beam.PCollection) -> beam.PCollection:
    features = features_of(pipeline, kind)
    first = features[0]
    entity, time_field = first.entity, first.time_field
    passed = events | f"{camel(pipeline)}Features" >> beam.Map(lambda e: e)
    if kind == "session":
        count_f = next((f for f in features if f.aggregation.op == "count"), None)
        where = count_f.where if count_f else None
        keyed = passed | "KeyValue" >> beam.Map(
            lambda e: (e[entity], (e[time_field], 1 if where is None or where(e) else 0)))
        combine: beam.CombineFn = _Session()
    else:
        where = first.where
        field = first.aggregation.field
        picked = passed if where is None else passed | "Where" >> beam.Filter(where)
        keyed = picked | "KeyValue" >> beam.Map(
            lambda e: (e[entity], (e.get(field) if field else None, e[time_field])))
        combine = _Combine(first.aggregation.op, time_field)
    lateness = 0 if kind == "lifetime" else first.allowed_lateness_s
    return (keyed
            | "Window" >> beam.WindowInto(
                window.GlobalWindows() if kind == "lifetime" else _window_fn(first),
                trigger=_trigger(kind), allowed_lateness=lateness,
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
            | "Combine" >> beam.CombinePerKey(combine)
            | "ToUpdates" >> beam.ParDo(_Updates(features, kind)).with_output_types(
                FeatureUpdate)
            # The sink merges updates per bundle in the global window.
            | "Unwindow" >> beam.WindowInto(window.GlobalWindows()))


def graph_for(pipeline: str, kind: str, route: str) -> Any:
    def graph(events: beam.PCollection, options: FeatureOptions
              ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
        if route == "stateful":
            return FeatureEngine(features_of(pipeline, kind), engine_settings(options),
                                 pipeline).expand(events)
        return [windowed(pipeline, kind, events)], []

    return graph


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    mine = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args
            if a.startswith(("--pipeline=", "--kind=", "--route="))}
    rest = [a for a in args if not a.startswith(("--pipeline=", "--kind=", "--route="))]
    pipeline, kind = mine.get("--pipeline", "user"), mine["--kind"]
    route = mine.get("--route", "windowed")
    if route == "windowed":
        # Beam refuses repeated processing-time triggers on GlobalWindows and
        # speculative panes that never end, unless told these are intended.
        rest.append("--allow_unsafe_triggers")
    run(rest, PIPELINES[pipeline][0].source, graph_for(pipeline, kind, route),
        f"{pipeline}_{kind}_{route}")


if __name__ == "__main__":
    main()
