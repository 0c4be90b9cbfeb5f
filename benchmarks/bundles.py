"""Section 6d: catch-up bundles: their size, and how often speculative updates leave them.

A keyed Python stage on Flink pays, per key and bundle, a state read and a
state write between Flink and the Python worker and the key's timer
traffic; when a bundle ends, Flink waits for the worker to finish it and
commit its state before the next one starts. Bigger bundles share those
costs among more events; a Python step hands its output on only when its
bundle ends, so they also make values later, which is why live streams keep
the ``low_latency`` preset and only backlogs take ``catch_up``.

In a backlog's bundle an entity has hundreds of events, and each makes a
speculative update per feature that the store never sees (it is written
once per entity and bundle, with the newest). The ``catch_up`` preset
therefore implies ``--speculative_updates=per_bundle``: per entity and
feature, only the update the store keeps leaves the stage, at the bundle's
end. In a backlog the watermark also moves seconds of event time at a step,
and every time a key's features wait for (a sliding tile's end and its
expiry, a window's end) is a runner timer that fires on its own: the preset
also implies ``--timer_grid_ms=10000``, one runner timer per key and 10 s of
event time for all the times in it.

Section 6's fastest job (the fused engine, ``--records_keyed_by_entity``,
256 MB state cache with the ``estimate`` sizer, 1,000 users, parallelism 1)
reads the same backlog three ways, all with the ``catch_up`` preset's bundle
limits: every speculative update and a runner timer per time; speculative
updates per bundle and a runner timer per time; the preset as shipped (per
bundle, 10-s timer grid). The order is A B C C B A per pipeline on one
cluster, so drift on the box over the run hits all alike. The backlog is
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
from pipelines.options import PRESET_ENGINE_SETTINGS
from runtime.flink import BUNDLE_PRESETS

NAME = "bundles"
TITLE = "Bundles: catch-up speculative updates and timers for the fused stage"
PARAMS = ("fused-records", "catch_up", 256, "estimate", 1_000)
_PRESET = BUNDLE_PRESETS["catch_up"]
_LIMITS = (_PRESET["max_bundle_time_ms"], _PRESET["max_bundle_size"])
_SIZE = f"{_LIMITS[0] / 1000:g} s / {_LIMITS[1]:,}"
_CATCH_UP = PRESET_ENGINE_SETTINGS["catch_up"]
# label -> (speculative updates, timer grid ms), each with the catch_up bundle
# limits; measured A B C C B A.
VARIANTS: dict[str, tuple[str, int]] = {
    f"{_SIZE}; every element; timer per time": ("every_element", 0),
    f"{_SIZE}; per bundle; timer per time": (_CATCH_UP["speculative"], 0),
    f"catch_up: {_SIZE}; per bundle; {_CATCH_UP['timer_grid_ms'] / 1000:g}-s timer grid": (
        _CATCH_UP["speculative"], _CATCH_UP["timer_grid_ms"]),
}


def run(mode: str) -> dict[str, Any]:
    events = 200_000 if mode == "quick" else 1_200_000
    labels = list(VARIANTS)
    order = labels + labels[::-1]
    runs = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        for pipeline in ("user", "ride"):
            topic = f"bundles-{pipeline}"
            _fill(svc, pipeline, topic, events, PARAMS[4])
            for label in order:
                speculative, grid = VARIANTS[label]
                try:
                    result = _catch_up(svc, pipeline, label, topic, events, Path(tmp), mode,
                                       params=PARAMS, bundle=_LIMITS, speculative=speculative,
                                       timer_grid=grid)
                except Exception as e:  # noqa: BLE001 (one failed job must not lose the others)
                    print(f"  {pipeline} {label} FAILED: {e}", flush=True)
                    runs.append({"pipeline": pipeline, "variant": label, "events_per_s": None,
                                 "error": f"{type(e).__name__}: {e}"[:1000]})
                    continue
                print(f"  {pipeline} {label}: {result['events_per_s']} events/s "
                      f"({result['events_measured']} events in {result['seconds_measured']} s)",
                      flush=True)
                runs.append(result)
    return {"params": {"events": events, "variant": list(PARAMS), "order": order,
                       "bundle_limits": list(_LIMITS),
                       "variants": {k: list(v) for k, v in VARIANTS.items()}},
            "runs": runs, "summary": summary(runs)}


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline and variant: the mean events/s and the ratio to the first variant."""
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
