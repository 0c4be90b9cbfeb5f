"""The fused feature stage outside a runner: in-memory state, a timer heap, event-time order.

``InMemoryEngine`` drives the very DoFn the fused keyed stage runs
(``FeatureEngine.fused_fns``) with its state in a dict and its event-time
timers in a heap: what a runner does for one stage, minus checkpoints.

``point_in_time`` uses it to answer, for one entity, what the online store
held at each of a list of event times T: the entity's events are replayed in
event-time order; before each event, the timers due before its time fire (the
watermark of a stream read in event-time order has reached them); at T, every
event with event time <= T is in, every timer due at or before T has fired,
and per feature the update the sink's ``as_of`` guard kept
(``FeatureUpdate.newer_than``) is what was served. Nothing later than T is
fed before T is answered.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from apache_beam import pvalue
from apache_beam.utils.timestamp import Timestamp

from transforms.fused import _CellState
from transforms.model import FeatureUpdate

# Beyond every timer a part sets (they are clamped to the global window's end).
END_OF_TIME_MICROS = Timestamp.of(2**62 // 10**6).micros

L = TypeVar("L")


class _Timers:
    """A key's watermark timers (tagged by time), queued in one shared heap."""

    __slots__ = ("_owner", "_key")

    def __init__(self, owner: InMemoryEngine, key: str) -> None:
        self._owner, self._key = owner, key

    def set(self, ts: Timestamp, dynamic_timer_tag: str = "") -> None:
        micros = Timestamp.of(ts).micros
        times = self._owner.timers.setdefault(self._key, set())
        if micros not in times:
            times.add(micros)
            heapq.heappush(self._owner.heap, (micros, self._key))

    def clear(self, dynamic_timer_tag: str = "") -> None:
        times = self._owner.timers.get(self._key)
        if times:
            times.discard(int(dynamic_timer_tag))


class InMemoryEngine:
    """A fused feature DoFn run on in-memory state and timers, for any number of keys.

    Args:
        fn: the fused stage's DoFn (``FeatureEngine(...).fused_fns()[entity]``).
        time_field: the event field holding the event time (epoch ms).
    """

    def __init__(self, fn: Any, time_field: str = "eventTimestamp") -> None:
        self._fn = fn
        self._time_field = time_field
        self.state: dict[str, Any] = {}
        self.timers: dict[str, set[int]] = {}
        self.heap: list[tuple[int, str]] = []
        self.late = 0

    def _keep(self, outputs: Iterable[Any], into: list[FeatureUpdate]) -> None:
        for out in outputs:
            if isinstance(out, pvalue.TaggedOutput):
                self.late += 1
            else:
                into.append(out)

    def process(self, key: str, event: dict[str, Any], into: list[FeatureUpdate]) -> None:
        """Feeds one event of ``key``; its updates are appended to ``into``."""
        self._keep(self._fn.process(
            (key, event), timestamp=Timestamp(micros=event[self._time_field] * 1000),
            cell_state=_CellState(self.state, key), fire=_Timers(self, key)), into)

    def advance(self, watermark_micros: int, into: list[FeatureUpdate]) -> None:
        """Fires every timer at or before the watermark, oldest first."""
        while self.heap and self.heap[0][0] <= watermark_micros:
            micros, key = heapq.heappop(self.heap)
            times = self.timers.get(key)
            if not times or micros not in times:
                continue  # cleared since it was queued
            times.discard(micros)
            self._keep(self._fn._fire(key=key, fired=Timestamp(micros=micros),
                                      cell_state=_CellState(self.state, key),
                                      fire=_Timers(self, key)) or (), into)


def keep_newest(served: dict[str, FeatureUpdate], updates: Iterable[FeatureUpdate]) -> None:
    """Applies updates, in order, to ``served`` (feature -> update) by the sink's guard."""
    for u in updates:
        current = served.get(u.feature)
        if current is None or u.newer_than(current):
            served[u.feature] = u


def point_in_time(fn: Any, key: str, events: Iterable[dict[str, Any]],
                  labels: Iterable[tuple[int, L]], time_field: str = "eventTimestamp"
                  ) -> Iterator[tuple[int, L, dict[str, FeatureUpdate]]]:
    """What the online store held for ``key`` at each label time.

    Args:
        fn: the fused stage's DoFn for the key's entity.
        key: the entity id.
        events: the key's events, in any order (replayed in event-time order;
            events with one time keep their given order).
        labels: ``(T in epoch ms, payload)``, in any order.
        time_field: the events' event-time field.

    Yields:
        ``(T, payload, served)`` in label-time order (labels with one time in
        their given order): ``served`` maps each feature that had a value at
        ``T`` to the update the store held; features without one are absent.
    """
    ordered: Sequence[dict[str, Any]] = sorted(events, key=lambda e: e[time_field])
    engine = InMemoryEngine(fn, time_field)
    served: dict[str, FeatureUpdate] = {}
    updates: list[FeatureUpdate] = []
    i = 0
    for at, payload in sorted(labels, key=lambda label: label[0]):
        while i < len(ordered) and ordered[i][time_field] <= at:
            event = ordered[i]
            updates.clear()
            engine.advance((event[time_field] - 1) * 1000, updates)
            engine.process(key, event, updates)
            keep_newest(served, updates)
            i += 1
        updates.clear()
        engine.advance(at * 1000, updates)
        keep_newest(served, updates)
        yield at, payload, dict(served)
