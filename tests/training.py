"""Helpers of the training-set tests: label files, running modules, checking cells."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.generate import StreamSpec
from tests import point_in_time_reference as reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"user": reference.user_at, "ride": reference.ride_at}
# Disorder within the 10-s watermark bound, and each user's events in order.
ORDERED = StreamSpec(events=1500, users=40, seed=23, disorder_ms=5_000, late_fraction=0.0,
                     entity_order=True)


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``python -m module args``; returns its last stdout line (the JSON summary)."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def label_rows(events: list[dict[str, Any]], n: int, seed: int,
               horizon_ms: int = 90_000_000) -> list[dict[str, Any]]:
    """Label rows of known and unknown users, at random times from a minute before
    the first event to ``horizon_ms`` after the last, at event times exactly and
    one millisecond before them."""
    rng = random.Random(seed)
    t0 = min(e["eventTimestamp"] for e in events)
    t1 = max(e["eventTimestamp"] for e in events)
    rows = []
    for i in range(n):
        pick = rng.random()
        if pick < 0.3:
            e = rng.choice(events)
            user, at = e["userId"], e["eventTimestamp"] - (1 if pick < 0.15 else 0)
        else:
            user, at = f"u{rng.randrange(45):04d}", rng.randint(t0 - 60_000, t1 + horizon_ms)
        rows.append({"entity_id": user, "timestamp": at, "label": i % 2,
                     "weight": round(rng.random(), 3)})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], bad: bool = True) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["entity_id", "timestamp", "label", "weight"])
        w.writeheader()
        w.writerows(rows)
        if bad:
            w.writerow({"entity_id": "", "timestamp": 1, "label": 0, "weight": 1})
            w.writerow({"entity_id": "u0001", "timestamp": "last tuesday", "label": 0,
                        "weight": 1})


def assert_matches_reference(pipeline: str, table: pa.Table, labels: list[dict[str, Any]],
                             events: list[dict[str, Any]], at_ms: Any = int,
                             delay_ms: int = 10_000) -> None:
    rows = table.to_pylist()
    assert len(rows) == len(labels)
    for label, row in zip(labels, rows, strict=True):
        at = at_ms(label["timestamp"])
        kwargs = {"delay_ms": delay_ms} if pipeline == "ride" else {}
        expected = REFERENCE[pipeline](events, str(label["entity_id"]), at, **kwargs)
        for feature, (value, as_of, is_default) in expected.items():
            got = row[feature]
            if isinstance(value, dict):
                got = json.loads(got)
            assert (got, row[feature + "__as_of_ms"], row[feature + "__is_default"]) == (
                value, as_of, is_default), (label, feature)


def iso(ms: int) -> str:
    """Epoch ms as ISO-8601 in UTC."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
