"""Section 6c: each window kind compiled both ways, stateful stage vs Beam windowing.

Per window kind, the pipeline's declarations of that kind alone
(``benchmarks/route_job.py``): tumbling (``txn_total_5m``), session
(``clicks_in_session`` and ``session_duration_s``), lifetime
(``last_purchase_value``) of the user pipeline, sliding (``amount_sum_60s``,
60 s in 1-s tiles) of the ride pipeline; each compiled to the product's
stateful engine (the fused stage) and to ``WindowInto`` + ``CombinePerKey``
on the runner's GroupByKey. Both with section 6's best settings
(``catch_up`` bundles, 256 MB state cache, the ``estimate`` sizer), one job
at a time on one cluster, each reading a 1,000,000-event backlog (1,000 users,
Zipf skew 1.1, event times ending now, up to 2 s out of order, nothing
late). Rate: events decoded (the decoder's counter, from Flink's REST
metrics, every second), so both routes are counted in events: the windowed
route's GroupByKey sees only the events its filter passes, and a sliding
window's element once per window it belongs to, and its first steps are
chained to the source, where Flink counts no input records. As in section
6, the slope from 20 s after 5% of the backlog was decoded, for 60 s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.engine import DECODED, VARIANTS, _catch_up, _fill
from benchmarks.flink_job import flink_services

NAME = "routes"
TITLE = "Routes: each window kind as a stateful stage and as Beam windowing on Flink"
VARIANT = "fused, catch_up, state cache (estimate)"
KINDS = (("user", "tumbling"), ("user", "session"), ("user", "lifetime"), ("ride", "sliding"))
ROUTES = ("stateful", "windowed")


def run(mode: str) -> dict[str, Any]:
    events = 60_000 if mode == "quick" else 1_000_000
    runs = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        filled: set[str] = set()
        for pipeline, kind in KINDS:
            topic = f"routes-{pipeline}"
            if topic not in filled:
                _fill(svc, pipeline, topic, events, 1_000)
                filled.add(topic)
            for route in ROUTES:
                try:
                    result = _catch_up(svc, pipeline, VARIANT, topic, events, Path(tmp), mode,
                                       job=("benchmarks.route_job", DECODED,
                                            (f"--kind={kind}", f"--route={route}")))
                except Exception as e:  # noqa: BLE001 (one failed job must not lose the others)
                    result = {"pipeline": pipeline, "events_per_s": None,
                              "error": str(e)[:500]}
                result.update(kind=kind, route=route)
                print(f"  {pipeline} {kind} {route}: {result['events_per_s']} events/s",
                      flush=True)
                runs.append(result)
    return {"params": {"events": events, "variant": VARIANTS[VARIANT][:4]}, "runs": runs}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{r['kind']} {r['route']}": r["events_per_s"] or 0.0 for r in data["runs"]}


def print_summary(data: dict[str, Any]) -> None:
    for r in data["runs"]:
        print(f"  {r['pipeline']} {r['kind']} {r['route']}: {r['events_per_s']} events/s")
