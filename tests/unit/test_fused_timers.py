"""The runner timers of the fused stage: one per time a part waits for, none stale.

The parts run on plain stand-ins for Beam's state and timer objects (pure logic);
that the same updates come out on TestStreams and Flink is tested elsewhere
(tests/streaming/test_fused.py, the e2e suite).
"""

from __future__ import annotations

from typing import Any

from apache_beam.utils.timestamp import Timestamp

from tests.helpers import Cell
from transforms.fused import _FusedFn
from transforms.lifetime import LifetimeAggregate
from transforms.sessions import SessionFeatures

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
