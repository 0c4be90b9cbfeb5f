"""Section 6: engines, bundles and the state cache on Flink, one choice at a time.

Catch-up throughput of each pipeline with ``--engine=stages`` (the user
pipeline runs ``TxnTotal5m`` and ``Sessions`` as two keyed Python stages, the
ride pipeline ``RideCounts`` and ``AmountSum60s``) and ``--engine=fused``
(``transforms.fused.FusedFeatures``: one keyed stage, one state cell and one
timer family per key; the default), in one run on one cluster: the product's
FlinkRunner preset (RocksDB, the ``low_latency`` 50-ms bundles), parallelism
1, checkpoints every 10 s, the Python workers in the worker pools beside the
TaskManagers (the product's ``--environment_type=EXTERNAL``); the fused stage again with the
``catch_up`` bundle preset (the footer gives its limits; section 6d sizes them), then
with the SDK's state cache on (256 MB, ``--max_cache_memory_usage_mb``),
first weighing values with Beam's own sizer (objsize, a full walk of each
value), then with ``runtime.state_cache.estimate_size`` (the product's
default); the last of these again with 100,000 users instead of 1,000; and
``benchmarks.keyed_floor``, the same job with one keyed counter in place of
the features: the floor any keyed Python stage pays on this cluster. Until
the cache variants, the cache is off. Last, the fused stage and the floor
again with ``--records_keyed_by_entity``: the topic's records (keyed by user,
as ``pipelines.produce`` sends them) go to the keyed stage as they are,
grouped by their key, and it decodes them itself, so each event crosses to
Python once instead of twice (no decode step before the key shuffle).

Each job reads a topic filled beforehand (2 partitions; Zipf skew 1.1, event
times ending now, up to 2 s out of order, nothing late), so it starts with
the whole backlog waiting. Throughput: records into the keyed step
(``Sessions`` / ``AmountSum60s`` / the fused step, from Flink's REST metrics,
sampled every second), as the least-squares slope over a steady stretch: from
20 s after the step had taken 5% of the backlog (a new job's classes are
still being compiled by the JIT before that) for 60 s, or until 95% of the
backlog (a job that reads 95% of the backlog before the warm-up ends is
measured from the 5% point, and its result says ``warmed_up: false``). A
backlog of a few seconds' work is read in a few bundle-sized steps
and its slope says little: the backlog here is 400,000 events. Each variant
runs once per pipeline, in the order given.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.flink_job import DecodedSampler, JobSampler, flink_services, recycle_taskmanagers
from pipelines.generate import StreamSpec, generate
from pipelines.options import PRESET_ENGINE_SETTINGS
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners.pipeline_process import PipelineProcess
from runtime.flink import BUNDLE_PRESETS, service_args

NAME = "engine"
TITLE = "Engine: keyed stage per feature group vs one fused stage, catch-up on Flink"
CHECKPOINT_INTERVAL_MS = 10_000
# variant -> (engine, bundle preset, state cache MB, cache sizer, distinct users);
# each adds one choice to the one before it. Engine "floor" is
# benchmarks.keyed_floor: one keyed stage holding a counter, no features; an
# engine ending in "-records" takes --records_keyed_by_entity (the keyed stage
# decodes the raw records itself).
VARIANTS = {
    "stages": ("stages", "low_latency", 0, "objsize", 1_000),
    "fused": ("fused", "low_latency", 0, "objsize", 1_000),
    "fused, catch_up bundles": ("fused", "catch_up", 0, "objsize", 1_000),
    "fused, catch_up, state cache (objsize)": ("fused", "catch_up", 256, "objsize", 1_000),
    "fused, catch_up, state cache (estimate)": ("fused", "catch_up", 256, "estimate", 1_000),
    "the same, 100,000 users": ("fused", "catch_up", 256, "estimate", 100_000),
    "keyed floor: a counter, catch_up, state cache": ("floor", "catch_up", 256, "estimate",
                                                      1_000),
    "fused, catch_up, state cache (estimate), records keyed by entity": (
        "fused-records", "catch_up", 256, "estimate", 1_000),
    "keyed floor, records keyed by entity": ("floor-records", "catch_up", 256, "estimate",
                                             1_000),
}
KEYED_STEP = {("user", "stages"): "Sessions", ("user", "fused"): "UserFeatures",
              ("ride", "stages"): "AmountSum60s", ("ride", "fused"): "RideFeatures",
              ("user", "floor"): "UserFeatures", ("ride", "floor"): "RideFeatures"}
ORDER = tuple(VARIANTS)
# A ``job`` whose sampled step is this counts decoded events (``DecodedSampler``).
DECODED = "decoded events"
# Seconds after the keyed step took 5% of the backlog before the rate counts
# (a new job's classes are compiled by the JIT meanwhile), then seconds measured.
WARM_UP_S = {"full": 20, "quick": 5}
MEASURE_S = {"full": 60, "quick": 20}


def _fill(svc: Any, pipeline: str, topic: str, events: int, users: int,
          hot_share: float = 0.0) -> None:
    svc.create_topic(topic, partitions=2)
    spec = StreamSpec(events=events, users=users, rate_per_s=2_000, skew=1.1,
                      disorder_ms=2_000, late_fraction=0.0, seed=17, hot_share=hot_share)
    # Event times end now: the backlog is recent, as after a restart.
    start = int(time.time() * 1000) - events * 1000 // spec.rate_per_s
    producer = EventProducer(svc.ports.bootstrap_servers, topic, SCHEMA_FILES[pipeline])
    for event in generate(pipeline, dataclasses.replace(spec, start_ms=start)):
        producer.send(event)
    producer.close()


def _catch_up(svc: Any, pipeline: str, variant: str, topic: str, events: int,
              workdir: Path, mode: str, parallelism: int = 1,
              params: tuple[str, str, int, str, int] | None = None,
              job: tuple[str, str, tuple[str, ...]] | None = None,
              bundle: tuple[int, int] | None = None,
              speculative: str | None = None, timer_grid: int | None = None
              ) -> dict[str, Any]:
    """Runs one variant (``params`` if given, else ``VARIANTS[variant]``) on a filled
    topic; ``job`` = (module, step sampled, its flags) runs another job module;
    ``bundle`` = (ms, elements) overrides the bundle preset's limits, ``speculative``
    the speculative-update policy it implies and ``timer_grid`` its timer grid (ms)."""
    engine, bundles, cache_mb, sizer, users = params or VARIANTS[variant]
    limits = () if bundle is None else (f"--max_bundle_time_mills={bundle[0]}",
                                        f"--max_bundle_size={bundle[1]}")
    if speculative is not None:
        limits += (f"--speculative_updates={speculative}",)
    if timer_grid is not None:
        limits += (f"--timer_grid_ms={timer_grid}",)
    flags = [*service_args(svc, parallelism, CHECKPOINT_INTERVAL_MS, bundles), *limits,
             f"--topic={topic}",
             f"--max_cache_memory_usage_mb={cache_mb}", f"--state_cache_sizer={sizer}",
             f"--consumer_group=engine-{topic}-{time.monotonic_ns()}",
             f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/0",
             f"--max_records={events}", "--run_timeout_s=900"]
    module, step = None, KEYED_STEP.get((pipeline, engine.removesuffix("-records")))
    if job is not None:
        module, step, more = job
        flags += [f"--pipeline={pipeline}", *more]
    elif engine.startswith("floor"):
        module = "benchmarks.keyed_floor"
        flags.append(f"--pipeline={pipeline}")
    else:
        flags.append(f"--engine={engine.removesuffix('-records')}")
    if engine.endswith("-records"):
        flags.append("--records_keyed_by_entity")
    label = "-".join(a.split("=", 1)[1] for a in (job[2] if job else ())) or engine
    recycle_taskmanagers(svc)
    process = PipelineProcess(svc.ports.flink_rest, pipeline, flags, workdir,
                              f"{topic}-{label}-{bundles}{bundle[0] if bundle else ''}"
                              f"-{cache_mb}-p{parallelism}",
                              module=module)
    try:
        jid = process.wait_running(300)
        sampler = (DecodedSampler(svc.ports.flink_rest, jid) if step == DECODED
                   else JobSampler(svc.ports.flink_rest, jid, step, poll_s=1.0)).start()
        deadline = time.monotonic() + 900
        t0 = None
        while True:
            now = time.time()
            n = sampler.records_at(now) or 0
            if t0 is None and n >= 0.05 * events:
                t0 = now + WARM_UP_S[mode]
            if n >= 0.95 * events or (t0 is not None and now >= t0 + MEASURE_S[mode]):
                break
            if time.monotonic() > deadline or process.proc.poll() is not None:
                code = process.proc.poll()
                why = ("still running" if code is None else
                       f"the launcher exited {code}: {_tail(process.stderr)}")
                raise RuntimeError(f"{pipeline}/{variant}: backlog not read in time "
                                   f"({n}/{events}); {why}")
            time.sleep(1)
        sampler.stop()
        per_subtask = sampler.subtask_records()
        t1 = sampler.records[-1][0]
        warmed_up = t0 is not None and t1 > t0
        if not warmed_up:
            # Read before the warm-up ended: the slope from the 5% sample on.
            t0 = next((t for t, n in sampler.records if n >= 0.05 * events), t1)
        rate = sampler.rate(t0, t1) if t1 > t0 else None
        taken = (sampler.records_at(t1) or 0) - (sampler.records_at(t0) or 0) if rate else 0
    finally:
        process.kill()
    preset = BUNDLE_PRESETS[bundles]
    return {"pipeline": pipeline, "variant": variant, "engine": engine, "bundles": bundles,
            "bundle_limits": list(bundle or (preset["max_bundle_time_ms"],
                                             preset["max_bundle_size"])),
            "speculative_updates": speculative or PRESET_ENGINE_SETTINGS[bundles]["speculative"],
            "timer_grid_ms": PRESET_ENGINE_SETTINGS[bundles]["timer_grid_ms"]
            if timer_grid is None else timer_grid,
            "users": users, "events": events,
            "events_per_s": None if rate is None else round(rate),
            "seconds_measured": round(t1 - t0, 1) if rate else None,
            "events_measured": taken, "warmed_up": warmed_up, "parallelism": parallelism,
            "subtask_records": per_subtask}


def run(mode: str) -> dict[str, Any]:
    events = 60_000 if mode == "quick" else 400_000
    runs: list[dict[str, Any]] = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        for pipeline in ("user", "ride"):
            topics: dict[int, str] = {}
            for variant in ORDER:
                users = VARIANTS[variant][4]
                if users not in topics:
                    topics[users] = f"engine-{pipeline}-{users}"
                    _fill(svc, pipeline, topics[users], events, users)
                try:
                    result = _catch_up(svc, pipeline, variant, topics[users], events,
                                       Path(tmp), mode)
                except Exception as e:  # noqa: BLE001 (one failed job must not lose the others)
                    print(f"  {pipeline} {variant} FAILED: {e}", flush=True)
                    runs.append({"pipeline": pipeline, "variant": variant, "users": users,
                                 "events_per_s": None,
                                 "error": f"{type(e).__name__}: {e}"[:1000]})
                    continue
                print(f"  {pipeline} {variant}: {result['events_per_s']} events/s "
                      f"({result['events_measured']} events in {result['seconds_measured']} s)",
                      flush=True)
                runs.append(result)
    return {"params": {"events": events, "parallelism": 1,
                       "checkpoint_interval_ms": CHECKPOINT_INTERVAL_MS, "order": ORDER,
                       "warm_up_s": WARM_UP_S[mode], "measure_s": MEASURE_S[mode],
                       "variants": {v: list(p) for v, p in VARIANTS.items()}},
            "runs": runs, "summary": summary(runs)}


def _tail(path: Path, chars: int = 700) -> str:
    """The end of a launcher's stderr: why a run failed, as far as it says."""
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(no stderr)"
    except OSError as e:
        return f"(stderr unreadable: {e})"


def mean_rates(runs: list[dict[str, Any]], pipelines: Iterable[str],
               variants: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per pipeline and variant: the mean events/s of its runs (0.0 if none measured)."""
    out: dict[str, dict[str, float]] = {}
    for pipeline in pipelines:
        means = out[pipeline] = {}
        for variant in variants:
            rates = [r["events_per_s"] for r in runs if r["pipeline"] == pipeline
                     and r["variant"] == variant and r["events_per_s"]]
            means[variant] = sum(rates) / len(rates) if rates else 0.0
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline and variant: mean events/s and the ratio to ``stages``."""
    return {pipeline: {v: {"events_per_s": round(m),
                           "over_stages": round(m / means["stages"], 2)
                           if means["stages"] else 0.0}
                       for v, m in means.items()}
            for pipeline, means in mean_rates(runs, ("user", "ride"), VARIANTS).items()}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{p}: {v}": s["over_stages"] for p, per in data["summary"].items()
            for v, s in per.items() if v != "stages"}


def print_summary(data: dict[str, Any]) -> None:
    for pipeline, per in data["summary"].items():
        print(f"  {pipeline}: " + "; ".join(
            f"{v} {s['events_per_s']} events/s (x{s['over_stages']})" for v, s in per.items()))
