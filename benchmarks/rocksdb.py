"""Section 4b: RocksDB checkpoint size and duration for 100k keys.

The user pipeline on the local Flink cluster as in section 3 (the product's
preset: RocksDB, incremental exactly-once checkpoints every 10 s, finish
bundles before checkpointing; parallelism 1). After a warm-up event, a
checkpoint is taken as the baseline (one key). Then a live stream (event
time = now, up to 2 s out of order, nothing late) goes over 100,000 users,
user of event ``i`` = ``i mod 100,000`` so every key gets state, sent at
2,000 events/s; the job takes them at its own pace. Once the step that
receives every event (``Sessions``) has counted them all, the first
checkpoint triggered after that holds every key: its full state size
(``state_size``: every file the checkpoint references, shared ones
included), the bytes it wrote (``checkpointed_size``: the incremental
part) and its end-to-end duration, from ``/jobs/<jid>/checkpoints``. Bytes
per key = (that size - baseline) / keys. The two checkpoints after it are
recorded too. Per step (``/checkpoints/details/<id>/subtasks/<vertex>``,
worst subtask): state, the start delay (the barrier waiting behind the
step's input), the synchronous part (finishing the open bundle, then the
snapshot) and the asynchronous upload; a step busy with work (a burst of
window timers firing once the watermark passes a window's end) holds the
barrier up. Checkpoints taken while the keys streamed in are listed with
the keys in state when they were triggered (from the sampled record
count). The bytes on disk are the job's checkpoint directory (three
retained checkpoints sharing incremental files). Redis must hold a hash for
every key.

Flink needs about a minute before it measures anything: ``--quick`` does
not run this section (``make bench`` does).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.flink_job import (
    ALL_EVENTS_STEP,
    BUNDLE_MS,
    CHECKPOINT_INTERVAL_MS,
    FeatureJob,
    flink_services,
)
from pipelines.generate import StreamSpec, generate
from runtime.flink import _rest

NAME = "rocksdb"
TITLE = "State: RocksDB checkpoint size and duration for 100k keys"

PIPELINE = "user"
SIZES = {"full": {"keys": 100_000, "events_per_key": 1, "send_rate": 2_000,
                  "timeout_s": 900}}
DISORDER_MS = 2_000
AFTER = 3  # checkpoints recorded once every key is in state


def _checkpoint_after(job: FeatureJob, after: float, timeout_s: float) -> dict[str, Any]:
    """The first checkpoint triggered after ``after`` (``time.time()``) once it completed."""
    assert job.sampler is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job.sampler.poll_checkpoints()
        done = [c for c in job.sampler.finished_between(after, time.time() + 60)
                if c["status"] == "COMPLETED"]
        if done:
            return done[0]
        time.sleep(1)
    raise TimeoutError(f"no checkpoint completed within {timeout_s:.0f} s")


def _slowest(summary: dict[str, Any], *path: str) -> int | None:
    """The max over subtasks of a ``/subtasks`` summary statistic, e.g. start_delay."""
    node: Any = summary
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node.get("max") if isinstance(node, dict) else None


def _per_step(rest_port: int, jid: str, checkpoint_id: int) -> list[dict[str, Any]]:
    """State and timings of each step (Flink vertex) in one checkpoint.

    ``start_delay_ms``: from the trigger until the barrier reached the step
    (it waits behind the step's input); ``sync_ms``: the synchronous part,
    finishing the open bundle (``--finish_bundle_before_checkpointing``) and
    the snapshot; ``async_ms``: writing the files; worst subtask each.
    """
    names = {v["id"]: v["name"] for v in _rest(rest_port, f"/jobs/{jid}")["vertices"]}
    base = f"/jobs/{jid}/checkpoints/details/{checkpoint_id}"
    out = []
    for vid, task in _rest(rest_port, base).get("tasks", {}).items():
        name = names.get(vid, vid)
        summary = _rest(rest_port, f"{base}/subtasks/{vid}").get("summary", {})
        out.append({"step": name.split(" -> ")[0] if name.startswith("Source:") else name,
                    "state_size": task.get("state_size"),
                    "checkpointed_size": task.get("checkpointed_size"),
                    "end_to_end_duration": task.get("end_to_end_duration"),
                    "start_delay_ms": _slowest(summary, "start_delay"),
                    "alignment_ms": _slowest(summary, "alignment", "duration"),
                    "sync_ms": _slowest(summary, "checkpoint_duration", "sync"),
                    "async_ms": _slowest(summary, "checkpoint_duration", "async")})
    return sorted(out, key=lambda r: -(r["state_size"] or 0))


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _keys_stream(keys: int, per_key: int, rate: int) -> list[dict[str, Any]]:
    """Live-shaped user events, event ``i`` for user ``i mod keys``."""
    spec = StreamSpec(events=keys * per_key, users=1, rate_per_s=rate, skew=0.0,
                      disorder_ms=DISORDER_MS, late_fraction=0.0, seed=44, start_ms=0)
    events = generate(PIPELINE, spec)
    for i, event in enumerate(events):
        event["userId"] = f"k{i % keys:06d}"
    return events


def run(mode: str) -> dict[str, Any]:
    if mode not in SIZES:
        raise ValueError(f"section {NAME} runs in full mode only (it needs Flink)")
    size = SIZES[mode]
    keys, rate = size["keys"], size["send_rate"]
    with tempfile.TemporaryDirectory(prefix="rtf-bench-rocksdb-") as tmp, \
            flink_services() as svc:
        job = FeatureJob(svc, PIPELINE, 1, "bench-rocksdb", Path(tmp))
        try:
            startup = job.start()
            assert job.sampler is not None and job.producer is not None
            print(f"  RUNNING after {startup['submit_to_running_s']:.0f} s", flush=True)
            baseline = _checkpoint_after(job, time.time(), 120)
            events = _keys_stream(keys, size["events_per_key"], rate)
            base_ms = int(time.time() * 1000)
            for event in events:
                event["eventTimestamp"] += base_ms
            t0 = time.time()
            start = time.monotonic()
            for n, event in enumerate(events, 1):
                job.producer.send(event)
                ahead = n / rate - (time.monotonic() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
            if job.producer.flush(60) or job.producer.failed:
                raise RuntimeError("the producer did not deliver every event")
            send_s = time.monotonic() - start
            job.sent += len(events)
            deadline = time.monotonic() + size["timeout_s"]
            while job.sampler.records_in() < job.sent:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{job.sampler.records_in()} of {job.sent} events "
                                       f"consumed after {size['timeout_s']} s")
                time.sleep(0.5)
            t_all = time.time()
            print(f"  {len(events):,} events sent in {send_s:.0f} s, all consumed "
                  f"{t_all - t0:.0f} s after the first", flush=True)
            after = [_checkpoint_after(job, t_all, 120)]
            while len(after) < AFTER:
                after.append(_checkpoint_after(job, after[-1]["latest_ack_timestamp"] / 1000,
                                               120))
            per_step = {str(c["id"]): _per_step(svc.ports.flink_rest, job.jid, c["id"])
                        for c in after}
            redis_keys = int(job.redis.dbsize())
            disk = _disk_bytes(svc.checkpoint_dir / job.jid)
            job.sampler.poll_checkpoints()
            during = job.sampler.finished_between(t0, t_all)
            counts = dict(job.sampler.counts)
            config = job.checkpoint_config()
            outputs = job.outputs()
            samples = list(job.sampler.records)
        finally:
            job.stop()
    if redis_keys < keys:
        raise RuntimeError(f"Redis holds {redis_keys} hashes, fewer than {keys} keys")
    warm = 1  # the warm-up event's key
    for c in during:
        at = c["trigger_timestamp"] / 1000
        seen = max((v for t, v in samples if t <= at), default=warm)
        c["keys_at_trigger"] = min(keys, max(0, seen - warm))
        c["seconds_after_start"] = at - t0
    return {"parameters": {**size, "pipeline": PIPELINE, "parallelism": 1,
                           "all_events_step": ALL_EVENTS_STEP[PIPELINE],
                           "disorder_ms": DISORDER_MS,
                           "checkpoint_interval_ms": CHECKPOINT_INTERVAL_MS,
                           "bundle_ms": BUNDLE_MS},
            "startup": startup, "events": len(events), "send_s": send_s,
            "consume_s": t_all - t0, "consumed_per_s": len(events) / (t_all - t0),
            "baseline": baseline, "full": after[0], "after": after, "during": during,
            "per_step": per_step,
            "bytes_per_key": (after[0]["state_size"] - baseline["state_size"]) / keys,
            "redis_hashes": redis_keys, "checkpoint_dir_bytes": disk,
            "checkpoint_counts": counts, "checkpoint_config": config, "outputs": outputs}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {"state bytes (100k keys)": data["full"]["state_size"],
            "bytes/key": data["bytes_per_key"],
            "checkpoint ms": data["full"]["end_to_end_duration"]}


def print_summary(data: dict[str, Any]) -> None:
    full, base = data["full"], data["baseline"]
    keys = data["parameters"]["keys"]
    print(f"  {keys:,} keys ({data['events']:,} events, consumed at "
          f"{data['consumed_per_s']:,.0f}/s): checkpoint {full['id']} state "
          f"{full['state_size']:,} B ({data['bytes_per_key']:,.1f} B/key over the baseline "
          f"{base['state_size']:,} B), wrote {full['checkpointed_size']:,} B, "
          f"{full['end_to_end_duration']:,} ms end to end")
    for c in data["after"][1:]:
        print(f"  then checkpoint {c['id']}: state {c['state_size']:,} B, wrote "
              f"{c['checkpointed_size']:,} B in {c['end_to_end_duration']:,} ms")
    for step in data["per_step"][str(full["id"])]:
        print(f"    {step['step'][:60]}: {step['state_size']:,} B, start delay "
              f"{step['start_delay_ms']} ms, sync {step['sync_ms']} ms, "
              f"async {step['async_ms']} ms")
    print(f"  checkpoint dir on disk {data['checkpoint_dir_bytes']:,} B; "
          f"{data['redis_hashes']:,} hashes in Redis")
