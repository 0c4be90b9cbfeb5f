"""The runner timers of the fused stage: one per time a part waits for, none stale.

The parts run on plain stand-ins for Beam's state and timer objects (pure logic);
that the same updates come out on TestStreams and Flink is tested elsewhere
(tests/streaming/test_fused.py, the e2e suite).
"""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.utils.timestamp import Timestamp

from tests.helpers import Cell
from transforms.fused import _FusedFn
from transforms.lifetime import LifetimeAggregate
from transforms.sessions import SessionFeatures
from transforms.sliding import SlidingSum

GAP, LATENESS = 60_000, 30_000


class _RunnerTimer:
    """The runner's side of the one timer family: which tags are set."""

    def __init__(self) -> None:
        self.armed: set[int] = set()
        self.calls = 0

    def set(self, ts: Timestamp, dynamic_timer_tag: str = "") -> None:
        assert dynamic_timer_tag == str(Timestamp.of(ts).micros)
        self.armed.add(Timestamp.of(ts).micros)
        self.calls += 1

    def clear(self, dynamic_timer_tag: str = "") -> None:
        self.armed.discard(int(dynamic_timer_tag))
        self.calls += 1


def _ms(*times: int) -> set[int]:
    return {t * 1000 for t in times}


def _run(fn: _FusedFn, cell: Cell, timer: _RunnerTimer, ts: int) -> list[Any]:
    event = {"userId": "u", "eventTimestamp": ts, "eventType": "click", "eventValue": 1.0}
    return list(fn.process(("u", event), timestamp=Timestamp(micros=ts * 1000),
                           cell_state=cell, fire=timer))


def _fire(fn: _FusedFn, cell: Cell, timer: _RunnerTimer, at_ms: int) -> list[Any]:
    timer.armed.discard(at_ms * 1000)
    return list(fn._fire(key="u", fired=Timestamp(micros=at_ms * 1000), cell_state=cell,
                         fire=timer))


def test_a_static_timer_set_anew_leaves_no_runner_timer_behind() -> None:
    part = LifetimeAggregate("last_value", "eventValue", "last")
    fn, cell, timer = _FusedFn([("last", part.fn, None)]), Cell(), _RunnerTimer()
    for ts in (1_000, 2_000, 5_000):
        _run(fn, cell, timer, ts)
    # Only the newest event's final time is waited for, so only it is set.
    assert timer.armed == _ms(5_001)


def test_sessions_drop_the_timers_of_the_sessions_they_merge() -> None:
    part = SessionFeatures("clicks", "span", gap_ms=GAP, allowed_lateness_ms=LATENESS)
    fn, cell, timer = _FusedFn([("s", part.fn, None)]), Cell(), _RunnerTimer()
    _run(fn, cell, timer, 0)
    _run(fn, cell, timer, 10_000)
    assert timer.armed == _ms(10_000 + GAP, 10_000 + GAP + LATENESS)
    # A second session far away keeps its own times beside the first one's.
    _run(fn, cell, timer, 500_000)
    assert timer.armed == _ms(10_000 + GAP, 10_000 + GAP + LATENESS,
                              500_000 + GAP, 500_000 + GAP + LATENESS)
    # An event between them, within the gap of both, bridges them into one session.
    _run(fn, cell, timer, 60_000)
    _run(fn, cell, timer, 110_000)
    # ... and so on to 500,000: what is left is the bridged session's times only.
    for ts in range(160_000, 500_000, 50_000):
        _run(fn, cell, timer, ts)
    assert timer.armed == _ms(500_000 + GAP, 500_000 + GAP + LATENESS)


def test_two_parts_waiting_for_one_time_share_one_runner_timer() -> None:
    a = LifetimeAggregate("a", "eventValue", "sum")
    b = LifetimeAggregate("b", None, "count")
    fn, cell, timer = _FusedFn([("a", a.fn, None), ("b", b.fn, None)]), Cell(), _RunnerTimer()
    _run(fn, cell, timer, 1_000)
    assert timer.armed == _ms(1_001) and timer.calls == 1
    # The firing calls both back (each publishes its final value) and leaves nothing set.
    finals = _fire(fn, cell, timer, 1_001)
    assert sorted((u.feature, u.final) for u in finals) == [("a", True), ("b", True)]
    assert timer.armed == set()


def test_within_a_bundle_a_key_sets_only_its_final_times_once() -> None:
    part = SessionFeatures("clicks", "span", gap_ms=GAP, allowed_lateness_ms=LATENESS)
    fn, cell, timer = _FusedFn([("s", part.fn, None)]), Cell(), _RunnerTimer()
    fn.start_bundle()
    # Each event moves the session's close: set at once, that is 4 runner calls per event.
    for ts in range(0, 100_000, 1_000):
        _run(fn, cell, timer, ts)
    assert timer.calls == 0  # nothing reaches the runner before the bundle ends
    fn.finish_bundle()
    assert timer.armed == _ms(99_000 + GAP, 99_000 + GAP + LATENESS) and timer.calls == 2
    # The next bundle moves the session on: the old times are cleared, the new set.
    fn.start_bundle()
    _run(fn, cell, timer, 100_000)
    _run(fn, cell, timer, 101_000)
    fn.finish_bundle()
    assert timer.armed == _ms(101_000 + GAP, 101_000 + GAP + LATENESS) and timer.calls == 6


def test_a_time_that_fires_within_a_bundle_and_is_wanted_again_is_set_again() -> None:
    part = LifetimeAggregate("last_value", "eventValue", "last")
    fn, cell, timer = _FusedFn([("last", part.fn, None)]), Cell(), _RunnerTimer()
    _run(fn, cell, timer, 1_000)
    assert timer.armed == _ms(1_001)
    fn.start_bundle()
    finals = _fire(fn, cell, timer, 1_001)  # the runner consumed 1,001 ...
    assert [u.final for u in finals] == [True]
    _run(fn, cell, timer, 1_000)  # ... and an event at the same time asks for it again
    fn.finish_bundle()
    assert timer.armed == _ms(1_001)


def test_a_key_whose_cell_ends_within_a_bundle_leaves_no_runner_timer() -> None:
    a = LifetimeAggregate("a", "eventValue", "sum")
    fn, cell, timer = _FusedFn([("a", a.fn, None)]), Cell(), _RunnerTimer()
    fn.start_bundle()
    _run(fn, cell, timer, 1_000)
    _run(fn, cell, timer, 3_000)
    fn.finish_bundle()
    assert timer.armed == _ms(3_001)
    fn.start_bundle()
    _fire(fn, cell, timer, 3_001)
    fn.finish_bundle()
    assert timer.armed == set()


def test_on_a_timer_grid_one_runner_timer_per_step_fires_each_time_in_order() -> None:
    part = SlidingSum("s", "eventValue", window_ms=60_000, tile_ms=1_000)
    fn = _FusedFn([("s", part.fn, None)], timer_grid_ms=10_000)
    cell, timer = Cell(), _RunnerTimer()
    for ts in (1_000, 2_500, 7_000):
        _run(fn, cell, timer, ts)
    # The sliding sum waits for its tile ends (2,000; 3,000; 8,000) and for those
    # tiles' expiry a window later: one runner timer per grid step holds them all.
    assert timer.armed == _ms(10_000, 70_000)
    finals = _fire(fn, cell, timer, 10_000)
    # Each time of the step is called back in order, as if the watermark had
    # stopped at each: the sum final at each tile end, visible at the grid time.
    assert [(u.as_of_ms, u.value, u.final, u.visible_ms) for u in finals] == [
        (1_999, 1.0, True, 10_000), (2_999, 2.0, True, 10_000), (7_999, 3.0, True, 10_000)]
    assert timer.armed == _ms(70_000)
    expired = _fire(fn, cell, timer, 70_000)
    assert [(u.as_of_ms, u.value) for u in expired] == [
        (61_999, 2.0), (62_999, 1.0), (67_999, 0.0)]
    assert timer.armed == set()


def test_a_timer_grid_keeps_a_time_past_the_last_grid_point_at_the_end_of_time() -> None:
    from transforms.late import MAX_TIMER_MS

    part = LifetimeAggregate("a", "eventValue", "sum")
    fn = _FusedFn([("a", part.fn, None)], timer_grid_ms=7_000)
    cell, timer = Cell(), _RunnerTimer()
    _run(fn, cell, timer, MAX_TIMER_MS - 1_000)
    assert timer.armed == {MAX_TIMER_MS * 1000}


def test_a_timer_grid_is_not_negative() -> None:
    part = LifetimeAggregate("a", "eventValue", "sum")
    with pytest.raises(ValueError, match="timer_grid_ms must be >= 0: -1"):
        _FusedFn([("a", part.fn, None)], timer_grid_ms=-1)
