"""Small timing helpers shared by the sections."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def slope(samples: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(time, count)`` samples: a rate per second.

    None for fewer than 3 samples or less than 2 s of them.
    """
    if len(samples) < 3 or samples[-1][0] - samples[0][0] < 2:
        return None
    mean_t = sum(at for at, _ in samples) / len(samples)
    mean_v = sum(v for _, v in samples) / len(samples)
    var = sum((at - mean_t) ** 2 for at, _ in samples)
    return sum((at - mean_t) * (v - mean_v) for at, v in samples) / var


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, nearest-rank."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of latencies given in seconds, reported in microseconds."""
    us = sorted(s * 1e6 for s in seconds)
    return {"n": len(us), "p50_us": percentile(us, 50), "p90_us": percentile(us, 90),
            "p99_us": percentile(us, 99), "max_us": us[-1], "mean_us": sum(us) / len(us)}


def best_of(repeats: int, fn: Callable[[], Any], setup: Callable[[], Any] | None = None
            ) -> tuple[float, list[float], Any]:
    """Runs ``setup(); fn()`` ``repeats`` times; returns (best seconds, all seconds, last result).

    The best run is the least disturbed by the rest of the machine; all runs
    are kept so the spread is visible.
    """
    times: list[float] = []
    result = None
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), times, result
