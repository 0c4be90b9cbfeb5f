"""Section 8: training sets at scale, on the DirectRunner and on Flink in batch mode.

``python -m pipelines.training_set`` runs as a user runs it, in a fresh
interpreter, on generated streams (JSON lines; Zipf skew 1.1; users =
events / 100) and label files of ``pipelines.generate.write_labels``
(times over the stream, a quarter at event times exactly, a few unknown
users), at two sizes ten times apart: full mode 100,000 events with 10,000
label rows, and 1,000,000 events with 100,000 label rows. Each size runs for
both pipelines on the DirectRunner and on the local Flink cluster in batch
mode (``--runner=FlinkRunner``: the Python work runs in the worker pools beside
the TaskManagers; parallelism 1; the ``catch_up`` bundles
the training set takes on Flink by default), one run at a time.

Per run: wall time of the whole command (interpreter start, imports and,
on Flink, job submission included), events/s as events over that wall
time, label rows/s likewise, and the peak resident memory of the command's
process (``ru_maxrss`` from ``wait4``: on Flink that process hosts the
Python workers; the TaskManager's JVM has its own, fixed heap). The
growth column is each run's wall time over the same run's at the smaller
size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.env import ROOT
from pipelines.generate import StreamSpec, generate, write_jsonl, write_labels

NAME = "training"
TITLE = "Training sets: 1M events and 100k label rows, DirectRunner and Flink batch"
PIPELINES = ("user", "ride")
RUNNERS = ("DirectRunner", "FlinkRunner")


def _sizes(mode: str) -> list[tuple[int, int]]:
    """(events, label rows) per size, the second ten times the first."""
    return [(10_000, 1_000), (100_000, 10_000)] if mode == "quick" else [
        (100_000, 10_000), (1_000_000, 100_000)]


def _inputs(workdir: Path, pipeline: str, events: int, labels: int) -> tuple[Path, Path]:
    spec = StreamSpec(events=events, users=max(events // 100, 10), rate_per_s=200.0,
                      seed=29)
    stream = generate(pipeline, spec)
    events_path = workdir / f"{pipeline}-{events}.jsonl"
    labels_path = workdir / f"{pipeline}-{labels}-labels.csv"
    write_jsonl(str(events_path), stream)
    write_labels(str(labels_path), stream, labels, seed=29)
    return events_path, labels_path


def _timed(cmd: list[str], workdir: Path) -> dict[str, Any]:
    """Runs ``cmd``; wall seconds, peak RSS (MB), and the last stdout line (its summary)."""
    out, err = workdir / "run.stdout", workdir / "run.stderr"
    started = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {err.read_text()[-2000:]}")
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "summary": summary}


def run(mode: str) -> dict[str, Any]:
    from benchmarks.flink_job import flink_services
    from runtime.flink import batch_service_args

    runs: list[dict[str, Any]] = []
    with flink_services() as svc, tempfile.TemporaryDirectory(prefix="rtf-training-") as tmp:
        workdir = Path(tmp)
        batch = batch_service_args(svc)
        for events, labels in _sizes(mode):
            for pipeline in PIPELINES:
                events_path, labels_path = _inputs(workdir, pipeline, events, labels)
                for runner in RUNNERS:
                    flags = batch if runner == "FlinkRunner" else ["--runner=DirectRunner"]
                    cmd = [sys.executable, "-m", "pipelines.training_set", *flags,
                           f"--pipeline={pipeline}", f"--events={events_path}",
                           f"--labels={labels_path}", f"--output={workdir / 'out.parquet'}"]
                    result = _timed(cmd, workdir)
                    rows = result["summary"].get("training_set.rows")
                    runs.append({"pipeline": pipeline, "runner": runner, "events": events,
                                 "labels": labels, "rows": rows,
                                 "seconds": result["seconds"],
                                 "events_per_s": round(events / result["seconds"]),
                                 "labels_per_s": round(labels / result["seconds"]),
                                 "peak_rss_mb": result["peak_rss_mb"]})
                    print(f"  {pipeline} on {runner}: {events:,} events, {labels:,} labels "
                          f"in {result['seconds']} s, peak RSS {result['peak_rss_mb']} MB",
                          flush=True)
                events_path.unlink()
    return {"params": {"sizes": _sizes(mode)}, "runs": runs}


def growth(data: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(pipeline, runner) -> wall time at the larger size over the smaller."""
    (small, _), (large, _) = data["params"]["sizes"]
    seconds = {(r["pipeline"], r["runner"], r["events"]): r["seconds"] for r in data["runs"]}
    return {(p, r): seconds[(p, r, large)] / seconds[(p, r, small)]
            for p in PIPELINES for r in RUNNERS
            if (p, r, small) in seconds and (p, r, large) in seconds}


def headline(data: dict[str, Any]) -> dict[str, float]:
    large = max(r["events"] for r in data["runs"])
    return {f"{r['pipeline']} {r['runner']} events/s": r["events_per_s"]
            for r in data["runs"] if r["events"] == large}


def print_summary(data: dict[str, Any]) -> None:
    for r in data["runs"]:
        print(f"  {r['pipeline']} {r['runner']}: {r['events']:,} events / {r['labels']:,} labels:"
              f" {r['seconds']} s, {r['events_per_s']:,} events/s, {r['peak_rss_mb']} MB")
    for (pipeline, runner), x in growth(data).items():
        print(f"  {pipeline} {runner}: x{x:.1f} wall time for 10x events and labels")
