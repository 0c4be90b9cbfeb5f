"""Point-in-time values on hand-made streams: what a label at T gets (pure logic)."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.catalogue import PIPELINES
from pipelines.labels import BadLabel, parse_row, parse_time_ms
from tests.helpers import event
from transforms.engine import EngineSettings, FeatureEngine
from transforms.replay import point_in_time

DELAY = 10_000


def served_at(pipeline: str, events: list[dict], *times: int) -> list[dict]:
    fn = FeatureEngine(PIPELINES[pipeline], EngineSettings(watermark_delay_ms=DELAY),
                       pipeline).fused_fns()["userId"]
    out = point_in_time(fn, "u", events, [(t, i) for i, t in enumerate(times)])
    return [{f: (u.value, u.as_of_ms) for f, u in served.items()} for _, _, served in out]


def test_tumbling_total_by_label_time():
    events = [event("u", 10_000, "purchase", 5.0), event("u", 290_000, "purchase", 2.5),
              event("u", 310_000, "purchase", 1.0), event("u", 200_000, "view")]
    rows = served_at("user", events, 9_999, 10_000, 299_999, 309_999, 310_000, 900_000)
    txn = [r.get("txn_total_5m") for r in rows]
    assert txn == [
        None,              # nothing yet: the cold-start default
        (5.0, 300_000),    # an event at exactly T is in
        (7.5, 300_000),
        (7.5, 300_000),    # the window closed, none in the next yet: its total is served
        (1.0, 600_000),    # the next window's first purchase replaces it
        (1.0, 600_000),    # and stays: a tumbling value is not expired
    ]
    assert [r.get("last_purchase_value") for r in rows][4] == (1.0, 310_000)


def test_nothing_after_t_leaks_in():
    events = [event("u", 1_000, "click"), event("u", 2_000, "click"), event("u", 2_001, "click")]
    rows = served_at("user", events, 2_000, 2_001)
    assert rows[0]["clicks_in_session"] == (2, 2_000)
    assert rows[1]["clicks_in_session"] == (3, 2_001)
    assert rows[1]["session_duration_s"] == (1, 2_001)


def test_a_new_session_after_the_gap():
    events = [event("u", 0, "click"), event("u", 60_000, "click"),
              event("u", 60_000 + 900_000, "view")]
    rows = served_at("user", events, 959_999, 960_000)
    assert rows[0]["clicks_in_session"] == (2, 60_000)
    assert rows[1]["clicks_in_session"] == (0, 960_000)
    assert rows[1]["session_duration_s"] == (0, 960_000)


def test_sliding_expiry_is_served_once_the_delayed_watermark_passes_it():
    ride = {"rideId": "r", "eventType": "END", "cityId": "ams"}
    events = [{**event("u", 1_500, **ride), "amount": 5.0}]
    # Tile [1000, 2000) publishes at 1999; its events leave the 60-s window at
    # 61999, a point the watermark passes at 62000, seen DELAY later.
    rows = served_at("ride", events, 1_500, 61_999 + 1 + DELAY - 1, 61_999 + 1 + DELAY)
    assert [r["amount_sum_60s"] for r in rows] == [(5.0, 1_999), (5.0, 1_999), (0.0, 61_999)]
    assert rows[2]["lifetime_rides"] == (1, 1_500)
    assert rows[2]["rides_per_city"] == ({"ams": 1}, 1_500)


def test_labels_in_any_order_come_back_in_time_order():
    events = [event("u", 1_000, "purchase", 1.0), event("u", 400_000, "purchase", 2.0)]
    fn = FeatureEngine(PIPELINES["user"], EngineSettings(), "user").fused_fns()["userId"]
    out = list(point_in_time(fn, "u", events, [(500_000, "b"), (1_000, "a"), (1_000, "a2")]))
    assert [(t, p) for t, p, _ in out] == [(1_000, "a"), (1_000, "a2"), (500_000, "b")]
    assert out[2][2]["txn_total_5m"].value == 2.0


@pytest.mark.parametrize("value, ms", [
    (1_700_000_000_000, 1_700_000_000_000),
    ("1700000000000", 1_700_000_000_000),
    (1.7e12, 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
    ("2023-11-14T22:13:20.250", 1_700_000_000_250),
    (dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC), 1_700_000_000_000),
])
def test_label_times(value, ms):
    assert parse_time_ms(value) == ms


@pytest.mark.parametrize("row, reason", [
    ({"timestamp": "1"}, "no entity_id"),
    ({"entity_id": "  ", "timestamp": "1"}, "no entity_id"),
    ({"entity_id": "u"}, "no timestamp column"),
    ({"entity_id": "u", "timestamp": ""}, "timestamp '' is missing"),
    ({"entity_id": "u", "timestamp": 1.5}, "not a whole number of milliseconds"),
    ({"entity_id": "u", "timestamp": "soon"}, "neither epoch milliseconds nor ISO-8601"),
    ({"entity_id": "u", "timestamp": str(10**17)}, "outside Beam's timestamp range"),
])
def test_bad_label_rows_say_why(row, reason):
    with pytest.raises(BadLabel, match=reason):
        parse_row(row, (0, 0), "entity_id", "timestamp")
