"""Test helpers: run a keyed feature transform and capture its outputs."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.keys import KeyByEntity


def batch_options() -> PipelineOptions:
    # allow_unsafe_triggers keeps the DirectRunner off Prism (see runtime/direct.py).
    return PipelineOptions(["--allow_unsafe_triggers"])


def stream_options() -> PipelineOptions:
    options = PipelineOptions(["--allow_unsafe_triggers"])
    options.view_as(StandardOptions).streaming = True
    return options


# The pipeline pickles its matchers, so they reach results through a module
# global (the DirectRunner runs them in this process), not through a closure.
_CAPTURED: dict[str, list[Any]] = {}


class _Capture:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, actual: list[Any]) -> None:
        _CAPTURED.setdefault(self._name, []).extend(actual)


def _capture_into(results: dict[str, list[Any]], tag: str) -> _Capture:
    name = f"{id(results)}:{tag}"
    _CAPTURED[name] = results[tag]
    return _Capture(name)


def _timestamped(event: dict[str, Any]) -> TimestampedValue:
    return TimestampedValue(event, Timestamp(micros=event["eventTimestamp"] * 1000))


def run_batch(transform: beam.PTransform, events: list[dict[str, Any]],
              tags: tuple[str, ...] = ("updates", "late")) -> dict[str, list[Any]]:
    """Runs ``transform`` on ``events`` keyed by userId (bounded); returns outputs by tag."""
    results: dict[str, list[Any]] = {tag: [] for tag in tags}
    with TestPipeline(options=batch_options()) as p:
        out = (p | beam.Create(events) | beam.Map(_timestamped)
               | KeyByEntity() | transform)
        for tag in tags:
            pcoll = out if len(tags) == 1 else out[tag]
            assert_that(pcoll, _capture_into(results, tag), label=f"capture_{tag}")
    return results


def run_stream(transform: beam.PTransform, stream: TestStream,
               tags: tuple[str, ...] = ("updates", "late"), keyed: bool = True
               ) -> dict[str, list[Any]]:
    """Runs ``transform`` on a TestStream of events keyed by userId (streaming
    DirectRunner); ``keyed=False``: on the stream's elements as they are."""
    results: dict[str, list[Any]] = {tag: [] for tag in tags}
    with TestPipeline(options=stream_options()) as p:
        elements = p | stream
        out = (elements | KeyByEntity() if keyed else elements) | transform
        for tag in tags:
            pcoll = out if len(tags) == 1 else out[tag]
            assert_that(pcoll, _capture_into(results, tag), label=f"capture_{tag}")
    return results


def event(user: str, ts: int, kind: str = "click", value: float = 0.0,
          **extra: Any) -> dict[str, Any]:
    """A UserInteractionEvent-shaped dict (ride fields go in ``extra``)."""
    return {"userId": user, "eventType": kind, "eventValue": value, "eventTimestamp": ts,
            **extra}


FAR_FUTURE_MS = 10**13


def stream_of(*steps: Any) -> TestStream:
    """A TestStream from steps: an event dict, or an int (advance the watermark to ms)."""
    ts = TestStream()
    for step in steps:
        if isinstance(step, int):
            ts = ts.advance_watermark_to(Timestamp(micros=step * 1000))
        else:
            ts = ts.add_elements([_timestamped(step)])
    # The streaming DirectRunner stops at an infinite watermark without firing
    # pending timers; a far-future watermark first flushes them, as Flink does.
    return ts.advance_watermark_to(Timestamp(micros=FAR_FUTURE_MS * 1000)
                                   ).advance_watermark_to_infinity()


def finals(updates: list[Any], feature: str | None = None) -> list[Any]:
    return [u for u in updates if u.final and (feature is None or u.feature == feature)]


class Cell:
    """A ReadModifyWriteState cell that stores bytes, as a checkpoint does."""

    coder = FastPrimitivesCoder()

    def __init__(self, value: Any = None) -> None:
        self.raw = None if value is None else self.coder.encode(value)

    def read(self) -> Any:
        return None if self.raw is None else self.coder.decode(self.raw)

    def write(self, value: Any) -> None:
        self.raw = self.coder.encode(value)

    def clear(self) -> None:
        self.raw = None
