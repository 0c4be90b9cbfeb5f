"""State layouts across job versions (pure logic; the savepoint restore on Flink is
tests/faults/test_schema_evolution.py::
test_upgrade_adding_a_feature_and_a_state_layout_restores_from_savepoint)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Cell
from transforms import counters
from transforms.late import EventClock
from transforms.state_layout import TAG, StateLayout, StateLayoutError
from transforms.ttl import IdleTtl


class Timer:
    def set(self, ts: Any) -> None:
        pass


def _counts_fn() -> counters._CountsFn:
    return counters._CountsFn("lifetime_rides", "rides_per_city", "city", IdleTtl(None),
                              "eventTimestamp", "user", EventClock(0))


def _count(fn: counters._CountsFn, cell: Cell, city: str, ts: int) -> dict[str, Any]:
    event = {"city": city, "eventTimestamp": ts}
    out = list(fn.process(("u1", event), state=cell, final_timer=Timer(),
                          ttl_timer=Timer()))
    return {u.feature: u.value for u in out}


def test_counts_written_by_layout_1_continue_exactly() -> None:
    # What the previous job version (layout 1, untagged) left in a checkpoint.
    cell = Cell({"n": 3, "c": {"paris": 2, "oslo": 1}, "max_ts": 1_000, "clock": 500})
    got = _count(_counts_fn(), cell, "oslo", 2_000)
    assert got == {"lifetime_rides": 4, "rides_per_city": {"paris": 2, "oslo": 2}}
    stored = cell.read()
    assert stored[TAG] == 2 and "n" not in stored
    assert stored["c"] == {"paris": 2, "oslo": 2}


def test_fresh_counts_are_written_in_the_current_layout() -> None:
    cell = Cell()
    assert _count(_counts_fn(), cell, "rome", 10) == {"lifetime_rides": 1,
                                                      "rides_per_city": {"rome": 1}}
    assert cell.read() == {"c": {"rome": 1}, "max_ts": 10, "clock": None, TAG: 2}


def test_inconsistent_layout_1_counts_are_refused() -> None:
    cell = Cell({"n": 5, "c": {"paris": 2}, "max_ts": 1, "clock": None})
    with pytest.raises(StateLayoutError, match="inconsistent"):
        _count(_counts_fn(), cell, "paris", 2)


def test_state_of_a_newer_job_version_fails_with_what_to_do() -> None:
    cell = Cell({"c": {}, "max_ts": 1, "clock": None, TAG: 3})
    with pytest.raises(StateLayoutError) as err:
        _count(_counts_fn(), cell, "paris", 2)
    message = str(err.value)
    assert "LifetimeCounts state has layout version 3" in message
    assert "versions up to 2" in message
    assert "--savepoint_path" in message and "offset 0" in message
    # Nothing was overwritten: the newer version can still restore it.
    assert cell.read()[TAG] == 3


def test_upgrades_chain_from_any_older_version() -> None:
    layout = StateLayout("demo", 3, {1: lambda st: {"b": st["a"]},
                                     2: lambda st: {"b": st["b"], "extra": []}})
    assert layout.upgraded({"a": 7}) == {"b": 7, "extra": [], TAG: 3}
    assert layout.upgraded({"b": 7, TAG: 2}) == {"b": 7, "extra": [], TAG: 3}
    assert layout.read(Cell({"b": 1, "extra": [2], TAG: 3})) == {"b": 1, "extra": [2], TAG: 3}
    assert layout.read(Cell()) is None


def test_a_layout_without_an_upgrade_path_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"no upgrade from layout version\(s\) \[2\]"):
        StateLayout("demo", 3, {1: lambda st: st})


@pytest.mark.parametrize("owner", ["TumblingSum", "SessionFeatures", "SlidingSum"])
def test_version_1_layouts_refuse_newer_state(owner: str) -> None:
    import transforms.sessions
    import transforms.sliding
    import transforms.tumbling

    layouts = {m.LAYOUT.owner: m.LAYOUT
               for m in (transforms.tumbling, transforms.sessions, transforms.sliding)}
    with pytest.raises(StateLayoutError, match=f"{owner} state has layout version 2"):
        layouts[owner].read(Cell({"clock": None, TAG: 2}))
