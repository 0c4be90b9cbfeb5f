"""Lifetime aggregates: one value per entity over every event it ever had (``GlobalWindows``).

``value = aggregation of the field over all events so far``, published with
``as_of_ms`` = the newest event time aggregated: speculative on every event
while the watermark is behind that time, final when it passes (one static
timer per key), and kept until the key has been idle for the state TTL, if
one is declared. Lifetime values have no window to close, so no event is ever
too late: a late event repairs the value and is published final at once.
(``LifetimeCounts`` is the count and per-category count pair of this shape.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.aggregations import Accumulator
from transforms.fused import FeaturePart
from transforms.late import EventClock
from transforms.model import USER, FeatureUpdate
from transforms.state_layout import StateLayout
from transforms.ttl import IdleTtl


def lifetime_dofn(layout: StateLayout, acc_key: str, state: str, final: str, ttl: str
                  ) -> type[beam.DoFn]:
    """The lifetime DoFn shape, with its state cell and timers named.

    State: ``{acc_key: accumulator, "max_ts": int, "clock": int | None}`` in
    ``layout``. A subclass sets ``_acc``, ``_value_field``, ``_ttl``,
    ``_time_field``, ``_clock`` and ``_expired`` and says what it publishes
    (``_updates``). The names are parameters so that each user keeps the ones
    its savepoints hold.
    """

    class _Lifetime(beam.DoFn):
        STATE = ReadModifyWriteStateSpec(state, FastPrimitivesCoder())
        FINAL = TimerSpec(final, beam.TimeDomain.WATERMARK)
        TTL = TimerSpec(ttl, beam.TimeDomain.WATERMARK)
        _acc: Accumulator
        _value_field: str | None
        _ttl: IdleTtl
        _time_field: str
        _clock: EventClock
        _expired: Any

        def _updates(self, key: str, st: dict[str, Any], final: bool
                     ) -> Iterator[FeatureUpdate]:
            raise NotImplementedError

        def process(self, kv: tuple[str, dict[str, Any]],
                    state=beam.DoFn.StateParam(STATE),
                    final_timer=beam.DoFn.TimerParam(FINAL),
                    ttl_timer=beam.DoFn.TimerParam(TTL)) -> Iterator[FeatureUpdate]:
            key, event = kv
            ts = event[self._time_field]
            value = event.get(self._value_field) if self._value_field else None
            if value is None and self._acc.needs_value:
                return
            st = layout.read(state) or layout.new(**{acc_key: self._acc.create()},
                                                  max_ts=ts, clock=None)
            st[acc_key] = self._acc.add(st[acc_key], value, ts)
            if ts >= st["max_ts"]:
                st["max_ts"] = ts
                # One timer per key at the newest event: when the watermark passes it,
                # every event up to as_of has been aggregated and the value is final.
                self._clock.set_static(final_timer, ts + 1)
                self._ttl.touch(ttl_timer, ts, self._clock)
            state.write(st)
            clock = st["clock"]
            yield from self._updates(key, st, clock is not None and st["max_ts"] < clock)

        @on_timer(FINAL)
        def _final(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                   state=beam.DoFn.StateParam(STATE)) -> Iterator[FeatureUpdate]:
            st = layout.read(state)
            if st is None:
                return
            now = self._clock.tick(st, fired)
            state.write(st)
            if st["max_ts"] < now:
                yield from self._updates(key, st, final=True)

        @on_timer(TTL)
        def _expire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                    state=beam.DoFn.StateParam(STATE)) -> Iterator[FeatureUpdate]:
            st = layout.read(state)
            if st is None or not self._ttl.expired(st["max_ts"], self._clock.now(fired)):
                return
            if st["clock"] is None or st["max_ts"] >= st["clock"]:
                # The FINAL timer may not have fired yet (timers of a bounded input
                # fire in any order): publish the final value before forgetting it.
                yield from self._updates(key, st, final=True)
            self._expired.inc()
            state.clear()

    return _Lifetime


# {"a": accumulator, "max_ts": int, "clock": int | None}
LAYOUT = StateLayout("LifetimeAggregate")  # version 1: see transforms/state_layout.py


class _LifetimeFn(lifetime_dofn(LAYOUT, "a", "lifetime", "lifetime_final", "lifetime_ttl")):
    def __init__(self, feature: str, value_field: str | None, acc: Accumulator, default: Any,
                 ttl: IdleTtl, time_field: str, entity_type: str, clock: EventClock) -> None:
        self._feature = feature
        self._value_field = value_field
        self._acc = acc
        self._default = default
        self._ttl = ttl
        self._time_field = time_field
        self._entity_type = entity_type
        self._clock = clock
        self._expired = Metrics.counter("ttl", f"{feature}_keys_expired")

    def _updates(self, key: str, st: dict[str, Any], final: bool) -> Iterator[FeatureUpdate]:
        value = self._acc.value([st["a"]])
        yield FeatureUpdate(self._entity_type, key, self._feature,
                            self._default if value is None else value, st["max_ts"], final)


class LifetimeAggregate(FeaturePart):
    """A lifetime aggregate per entity.

    Input: ``(entity_id, event)`` of the events to aggregate (filter first).
    Output: ``FeatureUpdate``s with ``as_of_ms`` = the newest aggregated event
    time; speculative while the watermark is behind it, final when it passes.

    Args:
        feature: feature name of the output.
        value_field: event field aggregated (None for ``count``).
        op: the aggregation (``transforms.aggregations.OPS``).
        ttl_ms: clear the state of keys idle this long (event time); ``None``
            keeps it forever.
        watermark_delay_ms: bounded out-of-orderness (see ``late.EventClock``).
        max_distinct: ``count_distinct``: distinct values kept.
        default: the value published while the aggregation has none.
    """

    def __init__(self, feature: str, value_field: str | None, op: str,
                 ttl_ms: int | None = None, time_field: str = "eventTimestamp",
                 entity_type: str = USER, watermark_delay_ms: int = 0,
                 max_distinct: int | None = None, default: Any = None) -> None:
        super().__init__()
        acc = Accumulator(op, max_distinct,
                          Metrics.counter("aggregate", f"{feature}_distinct_saturated").inc)
        self._fn = _LifetimeFn(feature, value_field, acc, default, IdleTtl(ttl_ms), time_field,
                               entity_type, EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        return keyed | "Lifetime" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate)
