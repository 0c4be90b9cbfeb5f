"""Section 6b: one user sending half of all events, on the fused engine at parallelism 1 and 2.

The fused engine keeps all of an entity's features in one keyed stage, so
all of a user's events meet in one subtask: a user sending half of all
events pins at least half of the work to one of the job's subtasks.
Salting (``transforms.hot_keys.SaltedCombinePerKey``: partial aggregates on
random sub-keys, merged by the real key in a second step) spreads a key
over subtasks only for combines on the runner's GroupByKey; a keyed
stateful stage holds one state per key, and a declaration asking for
``hot_key_fanout`` is refused when the pipeline is built. This section
measures what the hot key costs the stage as it is.

The user pipeline with section 6's best variant (the fused engine,
``catch_up`` bundles, 256 MB state cache with the ``estimate`` sizer) reads
a 400,000-event backlog (1,000 users, Zipf skew 1.1, 2 partitions; event
times ending now) twice per parallelism: as section 6 generates it, and the
same with ``u0000`` sending half of all events (``StreamSpec.hot_share``).
Rate as in section 6 (the slope from 20 s after the fused step took 5% of
the backlog, for 60 s); beside it each subtask's share of the records the
fused step read by the end of the measurement.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.engine import VARIANTS, _catch_up, _fill
from benchmarks.flink_job import flink_services

NAME = "hotkeys"
TITLE = "Hot keys: one user sending half of all events, fused engine, parallelism 1 and 2"
VARIANT = "fused, catch_up, state cache (estimate)"
STREAMS = {"Zipf 1.1 over 1,000 users": 0.0, "u0000 sends half of all events": 0.5}


def run(mode: str) -> dict[str, Any]:
    events = 60_000 if mode == "quick" else 400_000
    runs = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        for i, (stream, hot_share) in enumerate(STREAMS.items()):
            topic = f"hotkeys-{i}"
            _fill(svc, "user", topic, events, 1_000, hot_share=hot_share)
            for parallelism in (1, 2):
                result = _catch_up(svc, "user", VARIANT, topic, events, Path(tmp), mode,
                                   parallelism=parallelism, params=VARIANTS[VARIANT])
                total = sum(result["subtask_records"]) or 1
                result.update(stream=stream, hot_share=hot_share,
                              subtask_shares=[round(n / total, 3)
                                              for n in result["subtask_records"]])
                print(f"  {stream}, parallelism {parallelism}: {result['events_per_s']} "
                      f"events/s, subtask shares {result['subtask_shares']}", flush=True)
                runs.append(result)
    return {"params": {"events": events, "variant": VARIANT, "streams": STREAMS}, "runs": runs}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{r['stream']}, p{r['parallelism']}": r["events_per_s"] or 0.0
            for r in data["runs"]}


def print_summary(data: dict[str, Any]) -> None:
    for r in data["runs"]:
        print(f"  {r['stream']}, p{r['parallelism']}: {r['events_per_s']} events/s, "
              f"subtask shares {r['subtask_shares']}")
