"""Section 6: a keyed stage per feature group vs one fused stage per entity, on Flink,
then bigger bundles and the Python workers' state cache, one choice at a time.

Catch-up throughput of each pipeline with ``--engine=stages`` (the user
pipeline runs ``TxnTotal5m`` and ``Sessions`` as two keyed Python stages, the
ride pipeline ``RideCounts`` and ``AmountSum60s``) and ``--engine=fused``
(``transforms.fused.FusedFeatures``: one keyed stage, one state cell and one
timer family per key; the default since this comparison), in one run on one
cluster: the
product's FlinkRunner preset (RocksDB, the ``low_latency`` 50-ms bundles),
parallelism 1, checkpoints every 10 s, LOOPBACK workers; and the fused
stage again with the ``catch_up`` bundle preset (bundles of up to 1 s or
50,000 elements, ``--bundle_preset=catch_up``), and then with the SDK's state
cache on (256 MB, ``--max_cache_memory_usage_mb``), first weighing values with
Beam's own sizer (objsize, a full walk of each value), then with
``runners.state_cache.estimate_size`` (the product's default). Until the
cache variants, the cache is off. Each job reads a topic filled
beforehand (2 partitions; events of 1,000 users, Zipf skew 1.1, event times
ending now, up to 2 s out of order, nothing late), so it starts with the
whole backlog waiting. Throughput: records into the keyed step (``Sessions``
/ ``AmountSum60s`` / the fused step, from Flink's REST metrics, sampled every
second), as the least-squares slope from the sample where 5% of the backlog
had gone in to the one where 95% had. Each variant runs twice per pipeline,
in the order given and then reversed, so that a drift of the machine during
the run weighs on all alike.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.flink_job import JobSampler, flink_services
from pipelines.generate import StreamSpec, generate
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners.flink import service_args
from runners.pipeline_process import PipelineProcess

NAME = "engine"
TITLE = "Engine: keyed stage per feature group vs one fused stage, catch-up on Flink"
CHECKPOINT_INTERVAL_MS = 10_000
# variant -> (engine, bundle preset, state cache MB, cache sizer); each adds one choice
VARIANTS = {
    "stages": ("stages", "low_latency", 0, "objsize"),
    "fused": ("fused", "low_latency", 0, "objsize"),
    "fused, catch_up bundles": ("fused", "catch_up", 0, "objsize"),
    "fused, catch_up, state cache (objsize)": ("fused", "catch_up", 256, "objsize"),
    "fused, catch_up, state cache (estimate)": ("fused", "catch_up", 256, "estimate"),
}
KEYED_STEP = {("user", "stages"): "Sessions", ("user", "fused"): "UserFeatures",
              ("ride", "stages"): "AmountSum60s", ("ride", "fused"): "RideFeatures"}
# Each variant once forwards and once backwards, so that a drift of the machine
# during the run weighs on all of them alike.
ORDER = (*VARIANTS, *reversed(VARIANTS))


def _fill(svc: Any, pipeline: str, topic: str, events: int) -> None:
    svc.create_topic(topic, partitions=2)
    spec = StreamSpec(events=events, users=1_000, rate_per_s=2_000, skew=1.1,
                      disorder_ms=2_000, late_fraction=0.0, seed=17)
    # Event times end now: the backlog is recent, as after a restart.
    start = int(time.time() * 1000) - events * 1000 // spec.rate_per_s
    producer = EventProducer(svc.ports.bootstrap_servers, topic, SCHEMA_FILES[pipeline])
    for event in generate(pipeline, dataclasses.replace(spec, start_ms=start)):
        producer.send(event)
    producer.flush()


def _catch_up(svc: Any, pipeline: str, variant: str, topic: str, events: int,
              workdir: Path) -> dict[str, Any]:
    engine, bundles, cache_mb, sizer = VARIANTS[variant]
    flags = [*service_args(svc, 1, CHECKPOINT_INTERVAL_MS, bundles), f"--topic={topic}",
             f"--max_cache_memory_usage_mb={cache_mb}", f"--state_cache_sizer={sizer}",
             f"--consumer_group=engine-{topic}-{time.monotonic_ns()}",
             f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/0",
             f"--max_records={events}", f"--engine={engine}", "--run_timeout_s=900"]
    process = PipelineProcess(svc.ports.flink_rest, pipeline, flags, workdir,
                              f"{topic}-{engine}-{bundles}")
    try:
        jid = process.wait_running(300)
        sampler = JobSampler(svc.ports.flink_rest, jid, KEYED_STEP[(pipeline, engine)],
                             poll_s=1.0).start()
        deadline = time.monotonic() + 900
        while (sampler.records_at(time.time()) or 0) < 0.95 * events:
            if time.monotonic() > deadline or process.proc.poll() is not None:
                raise RuntimeError(f"{pipeline}/{variant}: backlog not read in time "
                                   f"({sampler.records_at(time.time())}/{events})")
            time.sleep(1)
        sampler.stop()
        t5 = next(at for at, n in sampler.records if n >= 0.05 * events)
        t95 = next(at for at, n in sampler.records if n >= 0.95 * events)
        rate = sampler.rate(t5, t95)
    finally:
        process.kill()
    return {"pipeline": pipeline, "variant": variant, "engine": engine, "bundles": bundles,
            "events": events, "events_per_s": None if rate is None else round(rate),
            "seconds_5_to_95": round(t95 - t5, 1)}


def run(mode: str) -> dict[str, Any]:
    events = 20_000 if mode == "quick" else 60_000
    runs: list[dict[str, Any]] = []
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        for pipeline in ("user", "ride"):
            topic = f"engine-{pipeline}"
            _fill(svc, pipeline, topic, events)
            for variant in ORDER:
                result = _catch_up(svc, pipeline, variant, topic, events, Path(tmp))
                print(f"  {pipeline} {variant}: {result['events_per_s']} events/s "
                      f"({result['seconds_5_to_95']} s for 90% of {events})", flush=True)
                runs.append(result)
    return {"params": {"events": events, "parallelism": 1,
                       "checkpoint_interval_ms": CHECKPOINT_INTERVAL_MS, "order": ORDER,
                       "variants": {v: list(p) for v, p in VARIANTS.items()}},
            "runs": runs, "summary": summary(runs)}


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pipeline and variant: mean events/s and the ratio to ``stages``."""
    out: dict[str, dict[str, Any]] = {}
    for pipeline in ("user", "ride"):
        means = {}
        for variant in VARIANTS:
            rates = [r["events_per_s"] for r in runs if r["pipeline"] == pipeline
                     and r["variant"] == variant and r["events_per_s"]]
            means[variant] = sum(rates) / len(rates) if rates else 0.0
        base = means["stages"]
        out[pipeline] = {v: {"events_per_s": round(m),
                             "over_stages": round(m / base, 2) if base else 0.0}
                         for v, m in means.items()}
    return out


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{p}: {v}": s["over_stages"] for p, per in data["summary"].items()
            for v, s in per.items() if v != "stages"}


def print_summary(data: dict[str, Any]) -> None:
    for pipeline, per in data["summary"].items():
        print(f"  {pipeline}: " + "; ".join(
            f"{v} {s['events_per_s']} events/s (x{s['over_stages']})" for v, s in per.items()))
