"""Tumbling event-time window aggregates with allowed lateness and late repair.

Beam's ``FixedWindows`` semantics (window ``[start, start + size)``, fired when
the watermark passes its end, late panes within the allowed lateness, later
data dropped) built as a keyed stateful DoFn, so that nothing is dropped
silently: too-late events go to the ``late`` output instead. The window
assignment is ``FixedWindows``' own; what a window holds is an accumulator of
``transforms.aggregations`` (for a sum, exact partial sums).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import FixedWindows
from apache_beam.utils.timestamp import Timestamp

from transforms.aggregations import Accumulator
from transforms.fused import FeaturePart
from transforms.late import LATE, EventClock, LateEvent, to_ms, too_late
from transforms.model import USER, FeatureUpdate
from transforms.state_layout import StateLayout

LAYOUT = StateLayout("TumblingSum")  # version 1: see transforms/state_layout.py


class _TumblingFn(beam.DoFn):
    """State per key: open windows (start -> [on_time_fired, accumulator]) and the clock."""

    STATE = ReadModifyWriteStateSpec("windows", FastPrimitivesCoder())
    FIRE = TimerSpec("tumbling_fire", beam.TimeDomain.WATERMARK)

    def __init__(self, feature: str, value_field: str | None, acc: Accumulator, default: Any,
                 size_ms: int, lateness_ms: int, early_firings: bool, time_field: str,
                 entity_type: str, clock: EventClock) -> None:
        self._clock = clock
        self._feature = feature
        self._value_field = value_field
        self._acc = acc
        self._default = default
        self._size = size_ms
        self._lateness = lateness_ms
        self._early = early_firings
        self._time_field = time_field
        self._entity_type = entity_type
        self._windowfn = FixedWindows(size_ms / 1000)
        self._last_window: tuple[int, int] | None = None  # [start, end) ms, last assigned
        self._late = Metrics.counter("late", f"{feature}_too_late")
        self._late_firings = Metrics.counter("late", f"{feature}_late_firings")

    def _window_start(self, ts_ms: int) -> int:
        """The start of the window ``FixedWindows`` assigns ``ts_ms`` to (its last
        answer again while events fall in the same window, as in a backlog they do)."""
        last = self._last_window
        if last is not None and last[0] <= ts_ms < last[1]:
            return last[0]
        (window,) = self._windowfn.assign(
            FixedWindows.AssignContext(Timestamp(micros=ts_ms * 1000)))
        self._last_window = (to_ms(window.start), -(-window.end.micros // 1000))
        return self._last_window[0]

    def _update(self, key: str, start: int, acc: Any, final: bool) -> FeatureUpdate:
        value = self._acc.value([acc])
        return FeatureUpdate(self._entity_type, key, self._feature,
                             self._default if value is None else value, start + self._size, final)

    def process(self, kv: tuple[str, dict[str, Any]],
                state=beam.DoFn.StateParam(STATE),
                fire=beam.DoFn.TimerParam(FIRE)) -> Iterator[Any]:
        key, event = kv
        ts = event[self._time_field]
        value = event.get(self._value_field) if self._value_field else None
        if value is None and self._acc.needs_value:
            return
        st = LAYOUT.read(state) or {"w": {}, "clock": None}
        start = self._window_start(ts)
        end = start + self._size
        clock = st["clock"]
        if clock is not None and too_late(end - 1, self._lateness, clock):
            self._late.inc()
            yield pvalue.TaggedOutput(LATE, LateEvent(self._feature, event, clock))
            return
        is_new = start not in st["w"]
        window = st["w"].setdefault(start, [False, self._acc.create()])
        window[1] = self._acc.add(window[1], value, ts)
        if window[0] or (clock is not None and end <= clock):
            # The on-time pane is out: this is a late firing, final like it.
            self._late_firings.inc()
            window[0] = True
            yield self._update(key, start, window[1], final=True)
        else:
            if is_new:  # a window's timers are set once, by its first event
                self._clock.set(fire, end)
            if self._early:
                yield self._update(key, start, window[1], final=False)
        if is_new:
            self._clock.set(fire, end + self._lateness)
        state.write(st)

    @on_timer(FIRE)
    def _fire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
              state=beam.DoFn.StateParam(STATE)) -> Iterator[FeatureUpdate]:
        st = LAYOUT.read(state)
        if st is None:
            return
        now = self._clock.tick(st, fired)
        # Timers may fire out of order (a bounded input fires them all at once):
        # act on every window that is due, not only the one this timer was for.
        for start in sorted(st["w"]):
            fired_on_time, acc = st["w"][start]
            end = start + self._size
            if end <= now and not fired_on_time:
                st["w"][start][0] = True
                yield self._update(key, start, acc, final=True)
            if end + self._lateness <= now:
                del st["w"][start]
        state.write(st)


class TumblingAggregate(FeaturePart):
    """Per-key aggregation of a field over tumbling event-time windows.

    Input: ``(entity_id, event)``. Main output: ``FeatureUpdate`` with
    ``as_of_ms`` = the window's end; ``final`` for the on-time pane and for
    every late firing, not for early (speculative) ones. Tagged ``late``:
    ``LateEvent`` for events whose window closed more than the allowed
    lateness ago. Values are order independent (sums are exact).

    Args:
        feature: feature name of the output.
        value_field: event field aggregated (None for ``count``).
        op: the aggregation (``transforms.aggregations.OPS``).
        size_ms: window size.
        allowed_lateness_ms: how long after its end a window still takes data.
        early_firings: emit a speculative value on every event before the
            window closes (freshness).
        watermark_delay_ms: bounded out-of-orderness (see ``late.EventClock``).
        max_distinct: ``count_distinct``: distinct values kept per window.
    """

    STEP = "Tumbling"

    def __init__(self, feature: str, value_field: str | None, op: str = "sum",
                 size_ms: int = 300_000, allowed_lateness_ms: int = 60_000,
                 early_firings: bool = True, time_field: str = "eventTimestamp",
                 entity_type: str = USER, watermark_delay_ms: int = 0,
                 max_distinct: int | None = None, default: Any = None) -> None:
        super().__init__()
        if size_ms <= 0 or allowed_lateness_ms < 0:
            raise ValueError("size_ms must be > 0 and allowed_lateness_ms >= 0")
        acc = Accumulator(op, max_distinct,
                          Metrics.counter("aggregate", f"{feature}_distinct_saturated").inc)
        self._fn = _TumblingFn(feature, value_field, acc, default, size_ms, allowed_lateness_ms,
                               early_firings, time_field, entity_type,
                               EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> pvalue.DoOutputsTuple:
        return keyed | self.STEP >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate).with_outputs(
            LATE, main="updates")


class TumblingSum(TumblingAggregate):
    """Per-key sum of a field over tumbling event-time windows
    (``TumblingAggregate`` with ``op="sum"``; its step keeps the name savepoints know)."""

    STEP = "TumblingSum"

    def __init__(self, feature: str, value_field: str, size_ms: int = 300_000,
                 allowed_lateness_ms: int = 60_000, early_firings: bool = True,
                 time_field: str = "eventTimestamp", entity_type: str = USER,
                 watermark_delay_ms: int = 0) -> None:
        super().__init__(feature, value_field, "sum", size_ms, allowed_lateness_ms,
                         early_firings, time_field, entity_type, watermark_delay_ms,
                         default=0.0)
