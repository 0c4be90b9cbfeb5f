"""A plain-Python reference of every feature, written from DESIGN.md's table alone.

It shares no code with ``transforms/``: tests compare the pipelines with it.
It answers what a bounded replay must leave behind (all events on time, the
watermark finally at +infinity).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

FIVE_MIN = 300_000
GAP = 900_000
SIXTY_S = 60_000
DAY = 86_400_000
MINUTE = 60_000


def user_features(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """userId -> {feature: value} after replaying every event."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["userId"]].append(e)
    out: dict[str, dict[str, Any]] = {}
    for user, evs in by_user.items():
        feats: dict[str, Any] = {}
        purchases = [e for e in evs if e["eventType"] == "purchase"]
        if purchases:
            # The newest 5-minute window holding a purchase.
            last = max(e["eventTimestamp"] // FIVE_MIN for e in purchases)
            feats["txn_total_5m"] = math.fsum(
                e["eventValue"] for e in purchases if e["eventTimestamp"] // FIVE_MIN == last)
        times = sorted(evs, key=lambda e: e["eventTimestamp"])
        session = [times[0]]
        for prev, cur in zip(times, times[1:], strict=False):
            if cur["eventTimestamp"] - prev["eventTimestamp"] >= GAP:
                session = []
            session.append(cur)
        feats["clicks_in_session"] = sum(1 for e in session if e["eventType"] == "click")
        feats["session_duration_s"] = (
            session[-1]["eventTimestamp"] - session[0]["eventTimestamp"]) // 1000
        if purchases:
            # The newest purchase's amount; of purchases at one time, the largest.
            feats["last_purchase_value"] = max(
                (e["eventTimestamp"], e["eventValue"]) for e in purchases)[1]
        out[user] = feats
    return out


def amount_sum_60s(events: list[dict[str, Any]], user: str, as_of: int) -> float:
    """The sliding sum's definition at one as_of."""
    return math.fsum(e["amount"] for e in events
                     if e["userId"] == user and as_of - SIXTY_S < e["eventTimestamp"] <= as_of)


def distinct_cities_24h(events: list[dict[str, Any]], watermark_ms: int | None) -> int:
    """One user's distinct cities at the newest point the feature has published.

    Points: the end of each 1-min tile holding events, and 24 h later (when the
    tile's events expire) once the watermark has passed that.
    """
    tiles = {e["eventTimestamp"] // MINUTE for e in events}
    points = {k * MINUTE + MINUTE - 1 for k in tiles}
    points |= {p + DAY for p in points if watermark_ms is None or p + DAY < watermark_ms}
    newest = max(points)
    return len({e["cityId"] for e in events if newest - DAY < e["eventTimestamp"] <= newest})


def ride_features(events: list[dict[str, Any]], watermark_ms: int | None = None
                  ) -> dict[str, dict[str, Any]]:
    """userId -> {feature: value} once the watermark is at ``watermark_ms``: None
    for a bounded replay (+inf), or a stream's watermark, past every event by more
    than 60 s."""
    out: dict[str, dict[str, Any]] = {}
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["userId"]].append(e)
        feats = out.setdefault(e["userId"], {})
        # Once event time has passed every event by 60 s, the window is empty.
        feats["amount_sum_60s"] = 0.0
        if e["eventType"] == "END":
            feats["lifetime_rides"] = feats.get("lifetime_rides", 0) + 1
            feats.setdefault("_cities", Counter())[e["cityId"]] += 1
    for user, feats in out.items():
        feats["distinct_cities_24h"] = distinct_cities_24h(by_user[user], watermark_ms)
        if "_cities" in feats:
            feats["rides_per_city"] = dict(feats.pop("_cities"))
    return out
