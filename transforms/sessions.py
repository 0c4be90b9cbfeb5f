"""Session features: clicks in the session and the session's duration.

A session is a run of one entity's events whose event-time gaps are below
``gap_ms`` (Beam ``Sessions`` semantics: each event opens ``[ts, ts + gap)``
and overlapping intervals merge). Built as a keyed stateful DoFn with timers
(a KeyedProcessFunction's shape): the session's start is its *earliest*
event, not the first to arrive, so out-of-order data never gives a negative
duration; a late event within the allowed lateness merges (and may bridge two
sessions) and re-emits the final value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.fused import FeaturePart
from transforms.late import LATE, EventClock, LateEvent, to_ms, too_late
from transforms.model import USER, FeatureUpdate
from transforms.state_layout import StateLayout

# A session in state: [first_ts, last_ts, clicks, final_emitted]
_FIRST, _LAST, _CLICKS, _FINAL = range(4)


LAYOUT = StateLayout("SessionFeatures")  # version 1: see transforms/state_layout.py


class _SessionFn(beam.DoFn):
    STATE = ReadModifyWriteStateSpec("sessions", FastPrimitivesCoder())
    FIRE = TimerSpec("session_fire", beam.TimeDomain.WATERMARK)

    def __init__(self, names: tuple[str | None, str | None], gap_ms: int, lateness_ms: int,
                 click_type: Any, time_field: str, type_field: str | None, entity_type: str,
                 clock: EventClock) -> None:
        self._clicks_name, self._duration_name = names
        self._clock = clock
        self._gap = gap_ms
        self._lateness = lateness_ms
        self._click_type = click_type
        self._time_field = time_field
        self._type_field = type_field
        self._entity_type = entity_type
        self._late = Metrics.counter("late", "session_too_late")
        self._repairs = Metrics.counter("late", "session_late_merges")

    def _updates(self, key: str, session: list[Any], final: bool) -> Iterator[FeatureUpdate]:
        as_of = session[_LAST]
        if self._clicks_name is not None:
            yield FeatureUpdate(self._entity_type, key, self._clicks_name, session[_CLICKS],
                                as_of, final)
        if self._duration_name is not None:
            yield FeatureUpdate(self._entity_type, key, self._duration_name,
                                (session[_LAST] - session[_FIRST]) // 1000, as_of, final)

    def _timer_times(self, lasts: Iterable[int]) -> set[int]:
        """The times the sessions ending at ``lasts`` set timers for: close, and
        close plus the allowed lateness."""
        return {t for last in lasts for t in (last + self._gap,
                                              last + self._gap + self._lateness)}

    def process(self, kv: tuple[str, dict[str, Any]],
                state=beam.DoFn.StateParam(STATE),
                fire=beam.DoFn.TimerParam(FIRE)) -> Iterator[Any]:
        key, event = kv
        ts = event[self._time_field]
        st = LAYOUT.read(state) or {"s": [], "clock": None, "horizon": None}
        clock = st["clock"]
        # The event's own proto-session [ts, ts + gap) decides lateness, as in Beam;
        # and an event that would merge into a session already dropped from state
        # (before its horizon) is too late too, or it would open a wrong new one.
        if clock is not None and (too_late(ts + self._gap - 1, self._lateness, clock)
                                  or ts < st["horizon"]):
            self._late.inc()
            yield pvalue.TaggedOutput(LATE, LateEvent("session", event, clock))
            return
        counted = self._type_field is None or event.get(self._type_field) == self._click_type
        merged = [ts, ts, 1 if counted else 0, False]
        kept = []
        absorbed_lasts = set()
        for s in st["s"]:
            if s[_FIRST] - self._gap < ts < s[_LAST] + self._gap:
                merged[_FIRST] = min(merged[_FIRST], s[_FIRST])
                merged[_LAST] = max(merged[_LAST], s[_LAST])
                merged[_CLICKS] += s[_CLICKS]
                absorbed_lasts.add(s[_LAST])
            else:
                kept.append(s)
        # A session that keeps its last event keeps its close time: timers are set.
        timers_set = merged[_LAST] in absorbed_lasts
        close_at = merged[_LAST] + self._gap
        if clock is not None and close_at <= clock:
            # The session had closed already: a late merge repairs its final value.
            self._repairs.inc()
            merged[_FINAL] = True
            yield from self._updates(key, merged, final=True)
        else:
            if not timers_set:
                self._clock.set(fire, close_at)
            yield from self._updates(key, merged, final=False)
        if not timers_set:
            self._clock.set(fire, close_at + self._lateness)
        kept.append(merged)
        # The timers of the sessions merged away would only fire to find nothing to do.
        obsolete = self._timer_times(absorbed_lasts - {merged[_LAST]})
        for t in obsolete - self._timer_times(s[_LAST] for s in kept) if obsolete else ():
            self._clock.clear(fire, t)
        st["s"] = kept
        state.write(st)

    @on_timer(FIRE)
    def _fire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
              state=beam.DoFn.StateParam(STATE)) -> Iterator[FeatureUpdate]:
        st = LAYOUT.read(state)
        if st is None:
            return
        now = self._clock.tick(st, fired)
        horizon = st.get("horizon") or to_ms(MIN_TIMESTAMP)
        kept = []
        for s in sorted(st["s"], key=lambda s: s[_LAST]):
            close_at = s[_LAST] + self._gap
            if close_at <= now and not s[_FINAL]:
                s[_FINAL] = True
                yield from self._updates(key, s, final=True)
            if close_at + self._lateness > now:
                kept.append(s)
            else:
                horizon = max(horizon, close_at)
        st["s"] = kept
        st["horizon"] = horizon
        state.write(st)


class SessionFeatures(FeaturePart):
    """Clicks in the session and its duration (whole seconds), per entity.

    Input: ``(entity_id, event)``. Main output: ``FeatureUpdate``s with
    ``as_of_ms`` = the session's last event time; speculative (``final=False``)
    on every event, final when the watermark closes the session, final again on
    each late merge. Tagged ``late``: events too late even for the allowed lateness.

    Args:
        clicks_feature: the name of the count feature (None: not published).
        duration_feature: the name of the duration feature (None: not published).
        gap_ms: inactivity gap that ends a session (gaps must be strictly smaller).
        allowed_lateness_ms: how long a closed session still takes late events.
        click_type: the ``type_field`` value of the events counted.
        type_field: the field ``click_type`` is compared with (None: count every event).
        watermark_delay_ms: bounded out-of-orderness (see ``late.EventClock``).
    """

    def __init__(self, clicks_feature: str | None, duration_feature: str | None,
                 gap_ms: int = 900_000, allowed_lateness_ms: int = 60_000,
                 click_type: Any = "click", time_field: str = "eventTimestamp",
                 type_field: str | None = "eventType", entity_type: str = USER,
                 watermark_delay_ms: int = 0) -> None:
        super().__init__()
        if gap_ms <= 0 or allowed_lateness_ms < 0:
            raise ValueError("gap_ms must be > 0 and allowed_lateness_ms >= 0")
        self._fn = _SessionFn((clicks_feature, duration_feature), gap_ms,
                              allowed_lateness_ms, click_type, time_field,
                              type_field, entity_type, EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> pvalue.DoOutputsTuple:
        return keyed | "Sessions" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate).with_outputs(
            LATE, main="updates")
