"""Section 3b: where the Python workers run: worker pools beside the TaskManagers vs LOOPBACK.

The product submits its jobs with ``--environment_type=EXTERNAL``: the Python
workers run in the worker pool beside each TaskManager
(``runtime.worker_pool``; each worker is started with the job's own options,
so the 256 MB state cache and its constant-cost sizer hold there), and the
launching process may exit (``--detached``). LOOPBACK runs them inside the
launching process instead. The same job (user pipeline, parallelism 1) is
measured both ways, one after the other on one cluster, with each bundle
preset, by the method of section 3 (rates stepped up until one is not kept
up, then bisected for freshness p99 under 1 s; capacity = the most it
consumed while a backlog waited). The order is ABBA for catch-up (pool,
LOOPBACK, LOOPBACK, pool) and BA for low latency, so that drift on the box
over the run (the cluster warming up, the page cache, the other jobs' leftover
state) hits both kinds alike; ``#n`` numbers a kind's repeats.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.e2e import RATES, SIZES, job_headline, measure_job
from benchmarks.flink_job import flink_services

NAME = "workers"
TITLE = "Worker pools vs LOOPBACK: the same job, Python workers either way"

# (bundle preset, workers), in ABBA order so that drift on the box hits both alike.
JOBS = (("catch_up", "pool"), ("catch_up", "loopback"), ("catch_up", "loopback"),
        ("catch_up", "pool"), ("low_latency", "loopback"), ("low_latency", "pool"))


def run(mode: str) -> dict[str, Any]:
    if mode not in SIZES:
        raise ValueError(f"section {NAME} runs in full mode only (it needs Flink)")
    size = SIZES[mode]
    jobs = []
    with tempfile.TemporaryDirectory(prefix="rtf-bench-workers-") as tmp, \
            flink_services() as svc:
        for db, (preset, workers) in enumerate(JOBS):
            repeat = JOBS[:db + 1].count((preset, workers))
            try:
                job = measure_job(svc, "user", 1, size, Path(tmp), db, preset, workers,
                                  repeat)
            except Exception as e:  # noqa: BLE001 (one failed job must not lose the others)
                print(f"  user {preset} {workers} FAILED: {e}", flush=True)
                job = {"pipeline": "user", "parallelism": 1, "preset": preset,
                       "workers": workers, "error": f"{type(e).__name__}: {e}"[:1000]}
            jobs.append({**job, "repeat": repeat})
    return {"parameters": {**size, "rates": list(RATES)}, "jobs": jobs}


def _label(job: dict[str, Any]) -> str:
    return f"user p1 {job['preset']} {job['workers']} #{job.get('repeat', 1)}"


def headline(data: dict[str, Any]) -> dict[str, float]:
    return job_headline(data, _label)


def print_summary(data: dict[str, Any]) -> None:
    for j in data["jobs"]:
        if "error" in j:
            print(f"  {_label(j)}: failed ({j['error'][:200]})")
            continue
        print(f"  {_label(j)}: capacity {j['capacity_per_s']}/s, highest rate kept up "
              f"{j['max_kept_up_per_s']}/s, p99 < 1 s up to {j['p99_under_1s_per_s']}/s")
