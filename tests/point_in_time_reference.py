"""A plain-Python reference of point-in-time feature values, from the README's table alone.

It shares no code with ``transforms/`` or ``pipelines/``: tests compare
training sets with it. For a label of entity K at time T, only K's events with
event time <= T count. ``delay_ms`` is the pipelines' bounded out-of-orderness
(``--max_out_of_orderness_ms``): a point published when the watermark passes
it becomes visible ``delay_ms`` later in event time.

Each function returns feature -> (value, as_of_ms, is_default).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

FIVE_MIN = 300_000
GAP = 900_000
SECOND = 1_000
MINUTE = 60_000
DAY = 86_400_000

Cell = tuple[Any, int | None, bool]


def _upto(events: list[dict[str, Any]], entity: str, at_ms: int) -> list[dict[str, Any]]:
    return sorted((e for e in events if e["userId"] == entity and e["eventTimestamp"] <= at_ms),
                  key=lambda e: e["eventTimestamp"])


def user_at(events: list[dict[str, Any]], entity: str, at_ms: int) -> dict[str, Cell]:
    seen = _upto(events, entity, at_ms)
    out: dict[str, Cell] = {}
    purchases = [e for e in seen if e["eventType"] == "purchase"]
    if purchases:
        # The newest 5-minute window holding a purchase (closed or not) is served.
        window = max(e["eventTimestamp"] for e in purchases) // FIVE_MIN
        total = math.fsum(e["eventValue"] for e in purchases
                          if e["eventTimestamp"] // FIVE_MIN == window)
        out["txn_total_5m"] = (total, (window + 1) * FIVE_MIN, False)
        newest = max((e["eventTimestamp"], e["eventValue"]) for e in purchases)
        out["last_purchase_value"] = (newest[1], newest[0], False)
    else:
        out["txn_total_5m"] = (0.0, None, True)
        out["last_purchase_value"] = (0.0, None, True)
    if seen:
        # The session holding the newest event: back from it while gaps stay < 15 min.
        session = [seen[-1]]
        for e in reversed(seen[:-1]):
            if session[0]["eventTimestamp"] - e["eventTimestamp"] >= GAP:
                break
            session.insert(0, e)
        last = session[-1]["eventTimestamp"]
        out["clicks_in_session"] = (sum(e["eventType"] == "click" for e in session), last, False)
        out["session_duration_s"] = ((last - session[0]["eventTimestamp"]) // 1000, last, False)
    else:
        out["clicks_in_session"] = (0, None, True)
        out["session_duration_s"] = (0, None, True)
    return out


def _sliding_as_of(times: list[int], at_ms: int, tile: int, window: int, delay_ms: int) -> int:
    """The newest point published by ``at_ms``: the end of each tile holding an event,
    and one window later (its events expire) once the watermark passed that point."""
    points = {t // tile * tile + tile - 1 for t in times}
    expiries = {p + window for p in points if p + window + 1 + delay_ms <= at_ms}
    return max(points | expiries)


def ride_at(events: list[dict[str, Any]], entity: str, at_ms: int, delay_ms: int = 10_000
            ) -> dict[str, Cell]:
    seen = _upto(events, entity, at_ms)
    out: dict[str, Cell] = {}
    ends = [e for e in seen if e["eventType"] == "END"]
    if ends:
        newest = max(e["eventTimestamp"] for e in ends)
        out["lifetime_rides"] = (len(ends), newest, False)
        out["rides_per_city"] = (dict(Counter(e["cityId"] for e in ends)), newest, False)
    else:
        out["lifetime_rides"] = (0, None, True)
        out["rides_per_city"] = ({}, None, True)
    if not seen:
        out["amount_sum_60s"] = (0.0, None, True)
        out["distinct_cities_24h"] = (0, None, True)
        return out
    times = [e["eventTimestamp"] for e in seen]
    as_of = _sliding_as_of(times, at_ms, SECOND, MINUTE, delay_ms)
    out["amount_sum_60s"] = (math.fsum(e["amount"] for e in seen
                                       if as_of - MINUTE < e["eventTimestamp"] <= as_of),
                             as_of, False)
    as_of = _sliding_as_of(times, at_ms, MINUTE, DAY, delay_ms)
    out["distinct_cities_24h"] = (len({e["cityId"] for e in seen
                                       if as_of - DAY < e["eventTimestamp"] <= as_of}),
                                  as_of, False)
    return out
