"""SlidingSum on a bounded input: exactness at every published as_of."""

import math

import pytest

from tests.helpers import event, finals, run_batch
from transforms.sliding import SlidingSum


def rides(*pairs):
    return [event("u", ts, "START", amount=a) for ts, a in pairs]


def brute(events, as_of):
    return math.fsum(e["amount"] for e in events if as_of - 60_000 < e["eventTimestamp"] <= as_of)


def test_two_events_with_one_timestamp_both_count():
    out = run_batch(SlidingSum("s", "amount"), rides((5_000, 1.0), (5_000, 2.0)))
    assert [(u.as_of_ms, u.value) for u in finals(out["updates"])] == [(5_999, 3.0), (65_999, 0.0)]


def test_expiry_lowers_the_value_to_zero():
    events = rides((1_000, 10.0), (30_500, 5.0))
    got = sorted((u.as_of_ms, u.value) for u in finals(run_batch(
        SlidingSum("s", "amount"), events)["updates"]))
    assert got == [(1_999, 10.0), (30_999, 15.0), (61_999, 5.0), (90_999, 0.0)]


def test_never_counts_events_after_as_of():
    events = rides((1_000, 1.0), (1_999, 2.0), (2_000, 4.0))
    got = {u.as_of_ms: u.value for u in finals(run_batch(SlidingSum("s", "amount"),
                                                         events)["updates"])}
    assert got[1_999] == 3.0 and got[2_999] == 7.0


@pytest.mark.parametrize("tile_ms", [1, 250, 1_000, 60_000])
def test_every_final_value_matches_the_definition(tile_ms):
    events = rides(*[(t, a) for t, a in [(0, 1.5), (59_999, 2.25), (60_000, 3.0), (61_500, 0.1),
                                         (61_500, 0.2), (200_000, 7.0), (-5_000, 1.0)]])
    out = run_batch(SlidingSum("s", "amount", tile_ms=tile_ms), events)
    published = finals(out["updates"])
    assert published
    for u in published:
        assert u.value == brute(events, u.as_of_ms), (tile_ms, u)
        assert (u.as_of_ms + 1) % tile_ms == 0


def test_tile_must_divide_window():
    with pytest.raises(ValueError):
        SlidingSum("s", "amount", tile_ms=7_000)
