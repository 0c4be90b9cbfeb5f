"""A sliding event-time aggregation, kept current as event time passes, with bounded state.

``value(as_of) = aggregation of the field over events with ts in (as_of - window, as_of]``
(a sum, count, min, max, last, count_by or count_distinct: ``transforms.aggregations``).

State per key is a set of *tiles* (Chronon's word): exact partial aggregates of
``tile_ms`` of event time each (for a sum, exact partial sums), so its size is bounded by
``(window + allowed lateness) / tile_ms`` whatever the event rate. Values are
published at tile ends, ``as_of = k * tile_ms + tile_ms - 1``, where a window
is exactly ``window / tile_ms`` whole tiles: the sum is exact for its
``as_of`` and never includes a later event. Published points are the tile end
of every tile holding events (the value rises) and the tile end one window
later (its events expire and the value falls, to the feature's cold-start
default when the window empties).
Each point is final when the watermark passes it; before that a speculative
value is emitted on every event.

Two events with one timestamp both count (tiles add, they do not overwrite),
nothing later than ``as_of`` is included, and expiry publishes the lowered
value. Late events within the allowed lateness repair every point
they touch; later ones go to the ``late`` output.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms.aggregations import Accumulator
from transforms.fused import FeaturePart
from transforms.late import LATE, EventClock, LateEvent, too_late
from transforms.model import USER, FeatureUpdate
from transforms.state_layout import StateLayout

LAYOUT = StateLayout("SlidingSum")  # version 1: see transforms/state_layout.py


class _SlidingFn(beam.DoFn):
    # {"t": {tile: accumulator}, "p": [pending points], "clock": int | None}
    STATE = ReadModifyWriteStateSpec("tiles", FastPrimitivesCoder())
    FIRE = TimerSpec("sliding_fire", beam.TimeDomain.WATERMARK)

    def __init__(self, feature: str, value_field: str | None, op: str,
                 max_distinct: int | None, default: Any, window_ms: int, tile_ms: int,
                 lateness_ms: int, time_field: str, entity_type: str, clock: EventClock) -> None:
        self._clock = clock
        self._feature = feature
        self._value_field = value_field
        self._acc = Accumulator(op, max_distinct, Metrics.counter(
            "aggregate", f"{feature}_distinct_saturated").inc)
        self._default = default
        self._window = window_ms
        self._tile = tile_ms
        self._tiles_per_window = window_ms // tile_ms
        self._lateness = lateness_ms
        self._time_field = time_field
        self._entity_type = entity_type
        self._late = Metrics.counter("late", f"{feature}_too_late")
        self._repairs = Metrics.counter("late", f"{feature}_late_repairs")
        self._state_tiles = Metrics.distribution("state", f"{feature}_tiles_per_key")

    def _point(self, tile: int) -> int:
        """The as_of published for a tile: its last millisecond."""
        return tile * self._tile + self._tile - 1

    def _window_tiles(self, tiles: dict[int, Any], last: int) -> list[int]:
        """The tiles present in the window ending with tile ``last``."""
        first = last - self._tiles_per_window + 1
        if len(tiles) < self._tiles_per_window:
            return [k for k in tiles if first <= k <= last]
        return [k for k in range(first, last + 1) if k in tiles]

    def _value_at(self, tiles: dict[int, Any], point: int) -> Any:
        # _window_tiles' two walks, taking the accumulators at once (a speculative
        # update per event reads a window: this is the sliding features' hot path).
        last = (point + 1) // self._tile - 1
        first = last - self._tiles_per_window + 1
        if len(tiles) < self._tiles_per_window:
            accs = [acc for k, acc in tiles.items() if first <= k <= last]
        else:
            accs = [tiles[k] for k in range(first, last + 1) if k in tiles]
        value = self._acc.value(accs)
        return self._default if value is None else value

    @staticmethod
    def _evict(st: dict[str, Any], last: int) -> None:
        """Drops tiles up to ``last``; ``st["lo"]``: no tile below it remains.

        Walks whichever is shorter, the index range since the last eviction or
        the tiles themselves, so a long bounded replay does not rescan every
        tile on every timer.
        """
        tiles, lo = st["t"], st.get("lo")
        if lo is not None and last < lo:
            return
        if lo is None or last - lo + 1 > len(tiles):
            doomed = [k for k in tiles if k <= last]
        else:
            doomed = [k for k in range(lo, last + 1) if k in tiles]
        for k in doomed:
            del tiles[k]
        st["lo"] = last + 1

    def _update(self, key: str, tiles: dict[int, Any], point: int,
                final: bool) -> FeatureUpdate:
        return FeatureUpdate(self._entity_type, key, self._feature,
                             self._value_at(tiles, point), point, final)

    def process(self, kv: tuple[str, dict[str, Any]],
                state=beam.DoFn.StateParam(STATE),
                fire=beam.DoFn.TimerParam(FIRE)) -> Iterator[Any]:
        key, event = kv
        ts = event[self._time_field]
        value = event.get(self._value_field) if self._value_field else None
        if value is None and self._acc.needs_value:
            return
        st = LAYOUT.read(state) or {"t": {}, "p": [], "clock": None}
        clock = st["clock"]
        if clock is not None and too_late(ts, self._lateness, clock):
            self._late.inc()
            yield pvalue.TaggedOutput(LATE, LateEvent(self._feature, event, clock))
            return
        tiles = st["t"]
        tile = ts // self._tile
        acc = tiles[tile] if tile in tiles else self._acc.create()
        tiles[tile] = self._acc.add(acc, value, ts)
        n = self._tiles_per_window
        points = {self._point(tile), self._point(tile + n)}
        if clock is not None and self._point(tile) < clock:
            # Late: every point already published in [ts, ts + window) changed.
            self._repairs.inc()
            points.update(self._point(k) for k in self._window_tiles(tiles, tile + n - 1)
                          if k >= tile)
            points.update(self._point(k + n) for k in self._window_tiles(tiles, tile - 1))
        pending = st["p"]  # sorted: membership and due points by bisection
        for point in sorted(points):
            if clock is not None and point < clock:
                yield self._update(key, tiles, point, final=True)
                continue
            at = bisect.bisect_left(pending, point)
            if at == len(pending) or pending[at] != point:
                pending.insert(at, point)
                self._clock.set(fire, point + 1)
        if clock is None or self._point(tile) >= clock:
            yield self._update(key, tiles, self._point(tile), final=False)
        state.write(st)

    @on_timer(FIRE)
    def _fire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
              state=beam.DoFn.StateParam(STATE)) -> Iterator[FeatureUpdate]:
        st = LAYOUT.read(state)
        if st is None:
            return
        now = self._clock.tick(st, fired)
        clock = st["clock"]
        tiles = st["t"]
        # Timers may fire out of order: publish every due point, oldest first.
        cut = bisect.bisect_left(st["p"], now)
        if cut == 0 and clock > now:
            return  # an earlier-processed, later timer already published this point
        for point in st["p"][:cut]:
            yield self._update(key, tiles, point, final=True)
        del st["p"][:cut]
        # Keep the tiles a pending point or a future late repair can still read.
        horizon = min(st["p"][0] if st["p"] else clock, clock - self._lateness) - self._window
        self._evict(st, (horizon + 1) // self._tile - 1)
        self._state_tiles.update(len(tiles))
        if tiles or st["p"]:
            state.write(st)
        else:
            state.write({"t": {}, "p": [], "clock": clock, "lo": st["lo"]})


class SlidingAggregate(FeaturePart):
    """Per-key aggregation of a field over the last ``window_ms`` of event time.

    Input: ``(entity_id, event)``. Main output: ``FeatureUpdate`` (see the
    module docstring for the ``as_of`` points and finality). Tagged ``late``:
    events later than the allowed lateness.

    Args:
        feature: feature name of the output.
        value_field: event field aggregated (None for ``count``).
        op: the aggregation (``transforms.aggregations.OPS``).
        window_ms: window length.
        tile_ms: tile length; divides ``window_ms``. Smaller tiles publish
            finer-grained ``as_of`` points and keep more state.
        allowed_lateness_ms: how far behind the watermark an event may be and
            still repair the values it belongs to.
        watermark_delay_ms: bounded out-of-orderness (see ``late.EventClock``).
        max_distinct: ``count_distinct``: distinct values kept per tile.
        default: the value of an empty window where the aggregation has none
            (``min``, ``max``, ``last``).
    """

    STEP = "Sliding"

    def __init__(self, feature: str, value_field: str | None, op: str = "sum",
                 window_ms: int = 60_000, tile_ms: int = 1_000,
                 allowed_lateness_ms: int = 60_000, time_field: str = "eventTimestamp",
                 entity_type: str = USER, watermark_delay_ms: int = 0,
                 max_distinct: int | None = None, default: Any = None) -> None:
        super().__init__()
        if tile_ms <= 0 or window_ms <= 0 or window_ms % tile_ms:
            raise ValueError("tile_ms must be > 0 and divide window_ms")
        if allowed_lateness_ms < 0:
            raise ValueError("allowed_lateness_ms must be >= 0")
        self._fn = _SlidingFn(feature, value_field, op, max_distinct, default, window_ms,
                              tile_ms, allowed_lateness_ms, time_field, entity_type,
                              EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> pvalue.DoOutputsTuple:
        return keyed | self.STEP >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate).with_outputs(
            LATE, main="updates")


class SlidingSum(SlidingAggregate):
    """Per-key sum of a field over the last ``window_ms`` of event time
    (``SlidingAggregate`` with ``op="sum"``; its step keeps the name savepoints know)."""

    STEP = "SlidingSum"

    def __init__(self, feature: str, value_field: str, window_ms: int = 60_000,
                 tile_ms: int = 1_000, allowed_lateness_ms: int = 60_000,
                 time_field: str = "eventTimestamp", entity_type: str = USER,
                 watermark_delay_ms: int = 0) -> None:
        super().__init__(feature, value_field, "sum", window_ms, tile_ms, allowed_lateness_ms,
                         time_field, entity_type, watermark_delay_ms, default=0.0)
