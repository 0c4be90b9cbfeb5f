"""Synthetic event streams: many users, skew, out-of-order and late events, bad lines.

    python -m pipelines.generate --pipeline user --events 5000 --out data/user_events.jsonl
    python -m pipelines.generate --pipeline user --out events.jsonl --labels_out labels.csv

The same seed gives the same stream. Used for the bundled samples, tests,
the end-to-end run and benchmarks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CITIES = ("ams", "ber", "lis", "nyc", "sfo", "sgp", "tok")
USER_TYPES = (("click", 0.70), ("view", 0.15), ("purchase", 0.15))
RIDE_TYPES = (("START", 0.45), ("END", 0.40), ("CANCEL", 0.15))

# Lines a producer bug or an attacker might send; each must become one dead letter.
MALFORMED = (
    "this is not json",
    "[1, 2, 3]",
    '"just a string"',
    "null",
    '{"userId": "u-bad"}',
    '{"userId": "u-bad", "eventType": "click", "eventValue": "12.5", "eventTimestamp": 1}',
    '{"userId": "u-bad", "eventType": "click", "eventValue": NaN, "eventTimestamp": 1}',
    '{"userId": "u-bad", "eventType": "click", "eventValue": 1.0, "eventTimestamp": 1e30}',
    '{"userId": "u-bad", "eventType": "click", "eventValue": 1.0, '
    '"eventTimestamp": 99999999999999999999}',
    '{"userId": 7, "eventType": "click", "eventValue": 1.0, "eventTimestamp": 1}',
    '{"rideId": "r", "userId": "u-bad", "eventType": "END", "eventTimestamp": 1, '
    '"cityId": "ams", "amount": Infinity}',
    '{"rideId": "r", "userId": "u-bad", "eventType": "END", "eventTimestamp": "1", '
    '"cityId": "ams", "amount": 1.0}',
)


@dataclass(frozen=True)
class StreamSpec:
    """Shape of a generated stream.

    Attributes:
        events: number of valid events.
        users: number of distinct users.
        rate_per_s: events per second of event time.
        skew: Zipf exponent of user popularity (0: uniform; 1.2: a few hot users).
        disorder_ms: events arrive up to this much out of order.
        late_fraction: share of events sent minutes after their time.
        late_by_ms: how late those are (at most).
        seed: random seed.
        start_ms: event time of the first event (``live_spec`` sets it to now).
        hot_share: share of all events sent by one user, ``u0000``, on top of
            the Zipf draw (0: none; 0.5: a user sending half of all events).
        entity_order: each user's own events arrive in event-time order; the
            disorder is only between users (a stream whose per-entity order a
            partitioned source keeps).
    """

    events: int = 2_000
    users: int = 50
    rate_per_s: float = 20.0
    skew: float = 1.1
    disorder_ms: int = 5_000
    late_fraction: float = 0.02
    late_by_ms: int = 600_000
    seed: int = 7
    start_ms: int = START_MS
    hot_share: float = 0.0
    entity_order: bool = False


def live_spec(spec: StreamSpec) -> StreamSpec:
    """The same stream shape with event times starting now (for live Kafka runs)."""
    import dataclasses
    import time

    return dataclasses.replace(spec, start_ms=int(time.time() * 1000))


def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _arrivals(spec: StreamSpec) -> Iterator[tuple[random.Random, str, int]]:
    """Yields (rng, user, event time) in arrival order."""
    if not spec.entity_order:
        yield from _drawn(spec)
        return
    drawn = [(rng, user, ts) for rng, user, ts in _drawn(spec)]
    # Each user's times, sorted, in the arrival slots that user had.
    times: dict[str, list[int]] = {}
    for _, user, ts in drawn:
        times.setdefault(user, []).append(ts)
    for user_times in times.values():
        user_times.sort(reverse=True)
    for rng, user, _ in drawn:
        yield rng, user, times[user].pop()


def _drawn(spec: StreamSpec) -> Iterator[tuple[random.Random, str, int]]:
    rng = random.Random(spec.seed)
    # Cumulative once: ``choices(weights=...)`` would re-add them for every event
    # (O(users) each); the draws are the same.
    cum_weights = list(itertools.accumulate(1.0 / (rank ** spec.skew)
                                            for rank in range(1, spec.users + 1)))
    users = [f"u{i:04d}" for i in range(spec.users)]
    step_ms = 1000.0 / spec.rate_per_s
    for i in range(spec.events):
        now = spec.start_ms + int(i * step_ms)
        ts = now - rng.randint(0, spec.disorder_ms)
        if rng.random() < spec.late_fraction:
            ts -= rng.randint(0, spec.late_by_ms)
        # Equal timestamps happen: round some to the second.
        if rng.random() < 0.1:
            ts -= ts % 1000
        if spec.hot_share and rng.random() < spec.hot_share:
            yield rng, users[0], ts
        else:
            yield rng, rng.choices(users, cum_weights=cum_weights)[0], ts


def user_events(spec: StreamSpec) -> Iterator[dict[str, Any]]:
    """UserInteractionEvent records in arrival order."""
    for rng, user, ts in _arrivals(spec):
        kind = _pick(rng, USER_TYPES)
        value = round(rng.lognormvariate(3.0, 1.0), 2) if kind == "purchase" else 0.0
        yield {"userId": user, "eventType": kind, "eventValue": value, "eventTimestamp": ts}


def ride_events(spec: StreamSpec) -> Iterator[dict[str, Any]]:
    """RideEvent records in arrival order."""
    for i, (rng, user, ts) in enumerate(_arrivals(spec)):
        home = (CITIES[zlib.crc32(user.encode()) % len(CITIES)] if rng.random() < 0.8
                else rng.choice(CITIES))
        yield {"rideId": f"r{i:07d}", "userId": user, "eventType": _pick(rng, RIDE_TYPES),
               "eventTimestamp": ts, "cityId": home,
               "amount": round(rng.uniform(3.0, 80.0), 2)}


def generate(pipeline: str, spec: StreamSpec) -> list[dict[str, Any]]:
    """The events of one pipeline's stream."""
    if pipeline not in ("user", "ride"):
        raise ValueError("pipeline is user or ride")
    return list(user_events(spec) if pipeline == "user" else ride_events(spec))


def write_jsonl(path: str, events: list[dict[str, Any]], malformed: int = 0,
                seed: int = 7) -> int:
    """Writes events as JSON lines, with ``malformed`` bad lines mixed in; returns lines."""
    rng = random.Random(seed)
    lines = [json.dumps(e) for e in events]
    for i in range(malformed):
        lines.insert(rng.randint(0, len(lines)), MALFORMED[i % len(MALFORMED)])
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def write_labels(path: str, events: list[dict[str, Any]], rows: int, seed: int = 7) -> int:
    """Writes a label file for ``events`` (CSV: ``entity_id``, ``timestamp`` in
    epoch ms, ``label``): users of the stream and a few unknown ones, at random
    times over the stream and at event times exactly. Returns the rows written."""
    import csv

    rng = random.Random(seed)
    users = sorted({e["userId"] for e in events})
    t0 = min(e["eventTimestamp"] for e in events)
    t1 = max(e["eventTimestamp"] for e in events)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["entity_id", "timestamp", "label"])
        for _ in range(rows):
            pick = rng.random()
            if pick < 0.25:
                e = rng.choice(events)
                user, at = e["userId"], e["eventTimestamp"]
            else:
                user = rng.choice(users) if pick < 0.95 else f"new-{rng.randrange(1000)}"
                at = rng.randint(t0, t1 + 120_000)
            writer.writerow([user, at, int(rng.random() < 0.2)])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", choices=("user", "ride"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=StreamSpec.events)
    parser.add_argument("--users", type=int, default=StreamSpec.users)
    parser.add_argument("--rate", type=float, default=StreamSpec.rate_per_s)
    parser.add_argument("--skew", type=float, default=StreamSpec.skew)
    parser.add_argument("--malformed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=StreamSpec.seed)
    parser.add_argument("--entity_order", action="store_true",
                        help="each user's events in event-time order (disorder only "
                             "between users)")
    parser.add_argument("--labels_out", default=None,
                        help="also write a label file (CSV) for training sets of the stream")
    parser.add_argument("--label_rows", type=int, default=500)
    args = parser.parse_args(argv)
    spec = StreamSpec(events=args.events, users=args.users, rate_per_s=args.rate,
                      skew=args.skew, seed=args.seed, entity_order=args.entity_order)
    events = generate(args.pipeline, spec)
    n = write_jsonl(args.out, events, args.malformed, args.seed)
    print(f"wrote {n} lines to {args.out}")
    if args.labels_out:
        rows = write_labels(args.labels_out, events, args.label_rows, args.seed)
        print(f"wrote {rows} label rows to {args.labels_out}")


if __name__ == "__main__":
    main()
