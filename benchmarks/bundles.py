"""Section 6d: how big a catch-up bundle is: 1 s / 50,000 elements vs the ``catch_up`` preset.

A keyed Python stage on Flink pays, per key and bundle, a state read and a
state write between Flink and the Python worker and the key's timer
traffic; when a bundle ends, Flink waits for the worker to finish it and
commit its state before the next one starts. Bigger bundles share those
costs among more events; a Python step hands its output on only when its
bundle ends, so they also make values later, which is why live streams keep
the ``low_latency`` preset and only backlogs take ``catch_up``.

Section 6's fastest job (the fused engine, ``--records_keyed_by_entity``,
256 MB state cache with the ``estimate`` sizer, 1,000 users, parallelism 1)
reads the same backlog with bundles of up to 1 s / 50,000 elements and with
the ``catch_up`` preset's limits, in the order A B B A per pipeline on one
cluster, so drift on the box over the run hits both alike. The backlog is
1,200,000 events (section 6's stream shape), so a 5-s bundle is a small part
of the measured stretch; rate as in section 6 (the slope of records into the
keyed step from 20 s after it took 5% of the backlog, for 60 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.engine import _catch_up, _fill, mean_rates
from benchmarks.flink_job import flink_services
from runtime.flink import BUNDLE_PRESETS

NAME = "bundles"
TITLE = "Bundles: catch-up bundle size for the fused stage"
PARAMS = ("fused-records", "catch_up", 256, "estimate", 1_000)
_PRESET = BUNDLE_PRESETS["catch_up"]
# label -> (max bundle time ms, max bundle size); measured A B B A.
SIZES = {
    "1 s / 50,000": (1_000, 50_000),
    f"catch_up: {_PRESET['max_bundle_time_ms'] / 1000:g} s / "
    f"{_PRESET['max_bundle_size']:,}": (_PRESET["max_bundle_time_ms"],
                                        _PRESET["max_bundle_size"]),
}


def run(mode: str) -> dict[str, Any]:
    events = 200_000 if mode == "quick" else 1_200_000
    labels = list(SIZES)
    order = labels + labels[::-1]
    runs = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        for pipeline in ("user", "ride"):
            topic = f"bundles-{pipeline}"
            _fill(svc, pipeline, topic, events, PARAMS[4])
            for label in order:
                result = _catch_up(svc, pipeline, label, topic, events, Path(tmp), mode,
                                   params=PARAMS, bundle=SIZES[label])
                result["bundle_limits"] = list(SIZES[label])
                print(f"  {pipeline} {label}: {result['events_per_s']} events/s "
                      f"({result['events_measured']} events in {result['seconds_measured']} s)",
                      flush=True)
                runs.append(result)
    return {"params": {"events": events, "variant": list(PARAMS), "order": order,
                       "sizes": {k: list(v) for k, v in SIZES.items()}},
            "runs": runs, "summary": summary(runs)}


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline and bundle size: the mean events/s and the ratio to the first size."""
    out: dict[str, dict[str, Any]] = {}
    labels = dict.fromkeys(r["variant"] for r in runs)
    for pipeline, means in mean_rates(runs, dict.fromkeys(r["pipeline"] for r in runs),
                                      labels).items():
        base = next(iter(means.values()))
        out[pipeline] = {label: {"events_per_s": round(m),
                                 "over_first": round(m / base, 2) if base else 0.0}
                         for label, m in means.items()}
    return out


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{p}: {label}": s["events_per_s"] for p, per in data["summary"].items()
            for label, s in per.items()}


def print_summary(data: dict[str, Any]) -> None:
    for pipeline, per in data["summary"].items():
        print(f"  {pipeline}: " + "; ".join(
            f"{label} {s['events_per_s']} events/s (x{s['over_first']})"
            for label, s in per.items()))
