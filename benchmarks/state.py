"""Section 4a: bytes of sliding-window state per key as one key's event rate grows.

Drives the ride pipeline's ``amount_sum_60s`` DoFn (``transforms.sliding``,
built with the pipeline's settings: 60 s window, 1 s tiles, 60 s allowed
lateness, 10 s out-of-orderness) through its own ``process`` and timer
methods with in-memory state and timers, as
``tests/unit/test_sliding_state_size.py`` does: no runner, so the numbers are
the DoFn's state alone. One key receives ``rate`` events per second of event
time, in order, for ``seconds`` seconds; the watermark trails the events by
5 s and due timers fire after every second. After each second the state is
encoded with its declared coder (``FastPrimitivesCoder``) and measured.
Rates are the base rate times 1, 10, 100 and 1000.

(RocksDB checkpoint size and duration for 100k keys, the other half of the
state question, needs the Flink services and is a separate section, 4b.)
"""

from __future__ import annotations

import random
import time
from typing import Any

from apache_beam.coders import FastPrimitivesCoder
from apache_beam.utils.timestamp import Timestamp

from benchmarks.measure import percentile
from transforms.sliding import SlidingSum

NAME = "state"
TITLE = "State: sliding-window state per key vs event rate"

BASE_RATE = 1  # events per second of event time for one key
MULTIPLIERS = (1, 10, 100, 1000)
WATERMARK_LAG_MS = 5_000
SIZES = {"quick": {"seconds": 150}, "full": {"seconds": 300}}
# The ride pipeline's settings (pipelines/ride_features.py and its option defaults).
PIPELINE_SETTINGS = {"window_ms": 60_000, "tile_ms": 1_000, "allowed_lateness_ms": 60_000,
                     "watermark_delay_ms": 10_000}


class _State:
    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


class _Timers:
    def __init__(self) -> None:
        self.due: set[int] = set()

    def set(self, ts: Timestamp, dynamic_timer_tag: str = "") -> None:
        self.due.add(ts.micros // 1000)


def measure_rate(rate: int, seconds: int) -> dict[str, Any]:
    """Streams ``seconds`` of one key's events at ``rate``/s; state size after each second."""
    fn = SlidingSum("amount_sum_60s", "amount", **PIPELINE_SETTINGS)._fn
    state, timers, coder = _State(), _Timers(), FastPrimitivesCoder()
    rng = random.Random(rate)
    sizes: list[int] = []
    tiles: list[int] = []
    pending: list[int] = []
    updates = 0
    cpu = 0.0
    for second in range(seconds):
        start = time.perf_counter()
        for i in range(rate):
            event = {"eventTimestamp": second * 1000 + i * 1000 // rate,
                     "amount": rng.uniform(1.0, 50.0)}
            updates += sum(1 for _ in fn.process(("k", event), state=state, fire=timers))
        watermark = second * 1000 - WATERMARK_LAG_MS
        for due in sorted(t for t in timers.due if t <= watermark):
            timers.due.discard(due)
            updates += sum(1 for _ in fn._fire(key="k", fired=Timestamp(micros=due * 1000),
                                               state=state))
        cpu += time.perf_counter() - start
        st = state.read()
        sizes.append(len(coder.encode(st)))
        tiles.append(len(st["t"]))
        pending.append(len(st["p"]))
    steady = sorted(sizes[seconds // 2:])
    return {"events_per_s": rate, "events": rate * seconds, "seconds": seconds,
            "max_bytes": max(sizes), "steady_p50_bytes": percentile(steady, 50),
            "final_bytes": sizes[-1], "max_tiles": max(tiles), "max_pending_points": max(pending),
            "bytes_per_second": sizes, "updates": updates,
            "us_per_event": cpu / (rate * seconds) * 1e6}


def run(mode: str) -> dict[str, Any]:
    seconds = SIZES[mode]["seconds"]
    rows = [measure_rate(BASE_RATE * m, seconds) for m in MULTIPLIERS]
    base = rows[0]["max_bytes"]
    for row, m in zip(rows, MULTIPLIERS, strict=True):
        row["multiplier"] = m
        row["max_bytes_vs_base"] = row["max_bytes"] / base
    return {"parameters": {"base_rate_per_s": BASE_RATE, "multipliers": list(MULTIPLIERS),
                           "seconds": seconds, "watermark_lag_ms": WATERMARK_LAG_MS,
                           **PIPELINE_SETTINGS, "coder": "FastPrimitivesCoder"},
            "rows": rows}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"max bytes @{r['multiplier']}x": r["max_bytes"] for r in data["rows"]}


def print_summary(data: dict[str, Any]) -> None:
    for r in data["rows"]:
        print(f"  {r['events_per_s']:>5} ev/s ({r['multiplier']:>4}x): max {r['max_bytes']:,} B "
              f"({r['max_bytes_vs_base']:.2f}x base), steady p50 {r['steady_p50_bytes']:,} B, "
              f"{r['max_tiles']} tiles, {r['us_per_event']:.1f} us/event")
