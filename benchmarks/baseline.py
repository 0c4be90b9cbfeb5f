"""The plain-Python loop the pipelines are measured against.

One pass over the JSON lines, in arrival order, doing per event what the
pipelines do per event: parse, check the record's types, update per-user
state and emit every feature update (speculative values included), keeping
the newest value per (user, feature) as the sink's guard would. It is what a
careful single-threaded script would do, so the pipeline/loop ratio is the
price of Beam (plus the pipelines' extras, listed below).

What the loop leaves out, so the ratio over-states Beam's share a little:
no watermark, timers, final re-emissions or late routing (every event is on
time, as in a bounded replay whose watermark ends at +inf); plain float ``+``
instead of exact (Shewchuk) sums; no dead-letter records, only a count; no
expiry points of the sliding sum. ``tests/reference.py`` is not used as the
loop because it computes final values only, from the whole list of events
(it sorts per user); it is timed beside the loop for information, and the
loop's final values are checked against it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

FIVE_MIN_MS = 300_000
SESSION_GAP_MS = 900_000
TILE_MS = 1_000
WINDOW_TILES = 60
KEEP_TILES = 120  # window + allowed lateness, in tiles
_LONG = (-(2**63), 2**63 - 1)

# (field, kind): kind is str, int (a long) or float (a double; ints accepted).
USER_FIELDS = (("userId", str), ("eventType", str), ("eventValue", float),
               ("eventTimestamp", int))
RIDE_FIELDS = (("rideId", str), ("userId", str), ("eventType", str), ("eventTimestamp", int),
               ("cityId", str), ("amount", float))

Latest = dict[tuple[str, str], tuple[int, Any]]


def _valid(record: Any, fields: tuple[tuple[str, type], ...]) -> bool:
    if type(record) is not dict:
        return False
    for name, kind in fields:
        value = record.get(name)
        if kind is str:
            if type(value) is not str:
                return False
        elif kind is int:
            if type(value) is not int or not _LONG[0] <= value <= _LONG[1]:
                return False
        elif not (type(value) is int or (type(value) is float and math.isfinite(value))):
            return False
    return True


def _emit(latest: Latest, user: str, feature: str, as_of: int, value: Any) -> None:
    key = (user, feature)
    current = latest.get(key)
    if current is None or as_of >= current[0]:
        latest[key] = (as_of, value)


def user_loop(lines: Iterable[str]) -> tuple[int, int, Latest]:
    """``txn_total_5m``, ``clicks_in_session``, ``session_duration_s`` per event.

    Returns (updates emitted, bad lines, newest (as_of, value) per (user, feature)).
    """
    windows: dict[str, dict[int, float]] = {}
    sessions: dict[str, list[list[int]]] = {}
    latest: Latest = {}
    updates = dead = 0
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            dead += 1
            continue
        if not _valid(event, USER_FIELDS):
            dead += 1
            continue
        user, ts = event["userId"], event["eventTimestamp"]
        if event["eventType"] == "purchase":
            start = ts - ts % FIVE_MIN_MS
            totals = windows.setdefault(user, {})
            totals[start] = totals.get(start, 0.0) + event["eventValue"]
            _emit(latest, user, "txn_total_5m", start + FIVE_MIN_MS, totals[start])
            updates += 1
        # Sessions merge like Beam's: [ts, ts + gap) overlapping another session joins it.
        merged = [ts, ts, 1 if event["eventType"] == "click" else 0]
        kept = []
        for s in sessions.get(user, ()):
            if s[0] - SESSION_GAP_MS < ts < s[1] + SESSION_GAP_MS:
                merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
            else:
                kept.append(s)
        kept.append(merged)
        sessions[user] = kept
        _emit(latest, user, "clicks_in_session", merged[1], merged[2])
        _emit(latest, user, "session_duration_s", merged[1], (merged[1] - merged[0]) // 1000)
        updates += 2
    return updates, dead, latest


def ride_loop(lines: Iterable[str]) -> tuple[int, int, Latest]:
    """``lifetime_rides``, ``rides_per_city``, ``amount_sum_60s`` per event."""
    counts: dict[str, list[Any]] = {}  # user -> [total, {city: n}, newest END ts]
    tiles: dict[str, dict[int, float]] = {}
    latest: Latest = {}
    updates = dead = 0
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            dead += 1
            continue
        if not _valid(event, RIDE_FIELDS):
            dead += 1
            continue
        user, ts = event["userId"], event["eventTimestamp"]
        if event["eventType"] == "END":
            c = counts.setdefault(user, [0, {}, ts])
            c[0] += 1
            c[1][event["cityId"]] = c[1].get(event["cityId"], 0) + 1
            c[2] = max(c[2], ts)
            _emit(latest, user, "lifetime_rides", c[2], c[0])
            _emit(latest, user, "rides_per_city", c[2], dict(c[1]))
            updates += 2
        tile = ts // TILE_MS
        own = tiles.setdefault(user, {})
        own[tile] = own.get(tile, 0.0) + event["amount"]
        value = sum(v for k, v in own.items() if tile - WINDOW_TILES < k <= tile)
        _emit(latest, user, "amount_sum_60s", tile * TILE_MS + TILE_MS - 1, value)
        updates += 1
        if len(own) > 2 * KEEP_TILES:
            newest = max(own)
            for k in [k for k in own if k < newest - KEEP_TILES]:
                del own[k]
    return updates, dead, latest


def final_features(latest: Latest, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """userId -> {feature: newest value}, the shape of ``tests.reference``."""
    out: dict[str, dict[str, Any]] = {}
    for (user, feature), (_, value) in latest.items():
        if feature not in skip:
            out.setdefault(user, {})[feature] = value
    return out


def same_features(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    """Equal, floats compared to 1e-9 (the loop's plain sums round differently)."""
    if a.keys() != b.keys():
        return False
    for user, feats in a.items():
        if feats.keys() != b[user].keys():
            return False
        for name, value in feats.items():
            other = b[user][name]
            if isinstance(value, float) or isinstance(other, float):
                if not math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif value != other:
                return False
    return True
