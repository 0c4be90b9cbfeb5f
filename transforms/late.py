"""Late events: how stateful transforms know the watermark, and where late data goes.

A Python DoFn cannot read the watermark. Every event-time timer that fires at
``T`` proves the watermark has reached ``T``, so each stateful transform keeps
the largest fired timer time per key (its *clock*) and calls an input *too late*
only when that lower bound proves it: the element's window ends, plus the
allowed lateness, before the clock. Anything else is accepted and repairs the
value. So no element is dropped silently: it is counted, or routed to the
``late`` output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

LATE = "late"

MAX_TIMER_MS = GlobalWindow().max_timestamp().micros // 1000


class LateEvent(NamedTuple):
    """An event too late for a feature, routed aside instead of dropped.

    Attributes:
        feature: the feature (or group) that could not take it.
        event: the event as decoded.
        watermark_ms: the watermark lower bound that made it too late.
    """

    feature: str
    event: dict[str, Any]
    watermark_ms: int

    def to_json(self) -> str:
        return json.dumps({"feature": self.feature, "event": self.event,
                           "watermark_ms": self.watermark_ms}, sort_keys=True)


def too_late(window_max_ms: int, allowed_lateness_ms: int, clock_ms: int) -> bool:
    """Beam's droppable rule against a known watermark lower bound ``clock_ms``.

    >>> too_late(999, 60_000, 61_000)
    True
    >>> too_late(999, 60_000, 60_999)
    False
    """
    return window_max_ms + allowed_lateness_ms < clock_ms


def to_ms(ts: Timestamp) -> int:
    """A Beam timestamp in epoch ms (floor)."""
    return ts.micros // 1000


def set_event_timer(timer: Any, at_ms: int) -> None:
    """Sets a dynamic event-time timer at ``at_ms``, one per distinct time.

    Times past the global window's end are clamped to it: they fire at the end
    of a bounded input or never in a stream, as their unclamped time would. A
    timer that takes epoch ms (``set_ms``: a part of the fused stage) gets them
    as they are.
    """
    at_ms = min(at_ms, MAX_TIMER_MS)
    set_ms = getattr(timer, "set_ms", None)
    if set_ms is not None:
        set_ms(at_ms)
    else:
        timer.set(Timestamp(micros=at_ms * 1000), dynamic_timer_tag=str(at_ms))


def clear_event_timer(timer: Any, at_ms: int) -> None:
    """Clears the dynamic timer ``set_event_timer`` set at ``at_ms``."""
    at_ms = min(at_ms, MAX_TIMER_MS)
    clear_ms = getattr(timer, "clear_ms", None)
    if clear_ms is not None:
        clear_ms(at_ms)
    else:
        timer.clear(dynamic_timer_tag=str(at_ms))


class EventClock:
    """Event-time timers against a watermark held back by a bounded out-of-orderness.

    Kafka's CreateTime policy (as Beam's cross-language ReadFromKafka sets it)
    advances the watermark to the newest record time with no delay. A stateful
    transform given ``delay_ms`` treats the watermark as ``W - delay_ms``: its
    timers fire ``delay_ms`` later and its clock reads that much earlier, so
    events up to ``delay_ms`` out of order are on time, not late repairs.

    Args:
        delay_ms: the bounded out-of-orderness; 0 uses the watermark as it is.
    """

    def __init__(self, delay_ms: int = 0) -> None:
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.delay_ms = delay_ms

    def set(self, timer: Any, at_ms: int) -> None:
        """A dynamic timer firing when the effective watermark reaches ``at_ms``."""
        set_event_timer(timer, at_ms + self.delay_ms)

    def clear(self, timer: Any, at_ms: int) -> None:
        """Clears the dynamic timer ``set`` set at ``at_ms``."""
        clear_event_timer(timer, at_ms + self.delay_ms)

    def set_static(self, timer: Any, at_ms: int) -> None:
        """The (single) timer of its spec, at effective time ``at_ms``."""
        at_ms = min(at_ms + self.delay_ms, MAX_TIMER_MS)
        set_ms = getattr(timer, "set_ms", None)
        if set_ms is not None:
            set_ms(at_ms, dynamic=False)
        else:
            timer.set(Timestamp(micros=at_ms * 1000))

    def now(self, fired: Timestamp) -> int:
        """The effective watermark a firing at ``fired`` proves (epoch ms)."""
        return to_ms(fired) - self.delay_ms

    def tick(self, state: dict[str, Any], fired: Timestamp) -> int:
        """On a timer firing: moves ``state["clock"]`` (the key's known
        watermark) forward and returns the effective watermark of this firing."""
        now = self.now(fired)
        known = state.get("clock")
        state["clock"] = now if known is None else max(known, now)
        return now


class _RouteLateFn(beam.DoFn):
    """Per key: passes events on, or routes those later than the known watermark."""

    CLOCK = ReadModifyWriteStateSpec("clock", VarIntCoder())
    TICK = TimerSpec("late_tick", beam.TimeDomain.WATERMARK)

    def __init__(self, feature: str, allowed_lateness_ms: int, time_field: str,
                 clock: EventClock) -> None:
        self._clock = clock
        self._feature = feature
        self._lateness = allowed_lateness_ms
        self._time_field = time_field
        self._late = Metrics.counter("late", f"{feature}_too_late")

    def process(self, kv: tuple[str, dict[str, Any]],
                clock=beam.DoFn.StateParam(CLOCK),
                tick=beam.DoFn.TimerParam(TICK)) -> Iterator[Any]:
        _, event = kv
        ts = event[self._time_field]
        known = clock.read()
        if known is not None and too_late(ts, self._lateness, known):
            self._late.inc()
            yield pvalue.TaggedOutput(LATE, LateEvent(self._feature, event, known))
            return
        # Learn when the watermark passes this event: its firing moves the clock.
        # One timer per key and second bounds the timers a busy key keeps.
        self._clock.set(tick, (ts // 1000 + 1) * 1000)
        yield kv

    @on_timer(TICK)
    def _tick(self, fired=beam.DoFn.TimestampParam, clock=beam.DoFn.StateParam(CLOCK)) -> None:
        now = self._clock.now(fired)
        clock.write(max(clock.read() or now, now))


class RouteLateEvents(beam.PTransform):
    """A late-event router for keyed events: too-late ones go to ``late``.

    Input and main output: ``(key, event)``. An event is too late when its
    timestamp plus ``allowed_lateness_ms`` is behind the watermark known for its
    key (see the module docstring). Outputs tagged main ``events`` and ``late``.
    """

    def __init__(self, feature: str, allowed_lateness_ms: int = 0,
                 time_field: str = "eventTimestamp", watermark_delay_ms: int = 0) -> None:
        super().__init__()
        self._fn = _RouteLateFn(feature, allowed_lateness_ms, time_field,
                                EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> pvalue.DoOutputsTuple:
        return keyed | "RouteLate" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_outputs(LATE, main="events")
