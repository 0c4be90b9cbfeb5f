"""Soak: the user pipeline at half its measured capacity for 20 minutes, sampled each minute.

A detached job on the two-TaskManager cluster (worker pools, RocksDB,
checkpoints every 2 s) gets a live stream of a fixed population of users
(so its state stops growing once every user has been seen and windows
expire) at ``SOAK_RATE`` events/s. Every minute the test samples the resident
memory of every process of the runtime (each service's whole process group:
the TaskManager JVMs, the worker pools and their SDK workers, Kafka, Redis,
the JobManager, the job and expansion services), what each TaskManager's JVM
reports on its Prometheus endpoint (heap, non-heap, direct buffers: the rest of
its resident memory is native) and what RocksDB says its cache holds (blocks and
the memtables charged to it), the size of the latest completed checkpoint,
and the freshness p99 of that minute (producer send -> readable in Redis). The
TaskManagers' allocator (jemalloc or glibc) is recorded with the figures.
After a warm-up, each must be flat: memory and checkpoint size within a
bounded growth of the warm-up level, freshness within a bound and not
trending up. A TaskManager's RocksDB cache fills towards its cap, the slot's
managed memory, by design: it must stay under that cap, and the
TaskManager's memory outside it must be flat (within 10% + 32 MB). ``make soak``
runs it alone and records the samples, a plot and a row in RELIABILITY.md.
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pipelines.generate import StreamSpec, generate
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners import services as rs
from runners.freshness import FreshnessProbe, percentile
from runners.process import group_members
from runtime import metrics
from runtime.flink import _rest, cancel_job, checkpoint_stats
from tests.faults import harness as h

# Half the capacity of the user pipeline (parallelism 1, low_latency bundles, worker
# pools) measured by BENCHMARKS.md section 3b: 1,776 and 1,817 events/s in two runs;
# RTF_SOAK_RATE overrides it.
SOAK_RATE = int(os.environ.get("RTF_SOAK_RATE", "850"))
MINUTES = int(os.environ.get("RTF_SOAK_MINUTES", "20"))
WARM_UP_MINUTES = 4
USERS = 500
PROBE_EVERY = 10
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "faults" / "results" / "soak_samples.csv"
PLOT = ROOT / "docs" / "soak.png"


def _rss_mb(pgid: int) -> float:
    """Resident memory of every live process in process group ``pgid``, in MB."""
    total = 0
    for proc in group_members(pgid):
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return round(total / 1024, 1)


# What each TaskManager's JVM says it holds (its Prometheus endpoint): the rest of its
# resident memory is native (RocksDB, the allocator, thread stacks, code).
JVM_MEMORY = {"heap": "Heap_Used", "nonheap": "NonHeap_Used", "direct": "Direct_MemoryUsed"}


def _taskmanager_mb(svc: rs.LocalServices) -> dict[str, float]:
    """From one scrape of each TaskManager i's Prometheus endpoint, in MB:
    ``jvm_mb.tm<i>.<heap|nonheap|direct>``, what its JVM holds;
    ``rocksdb_mb.tm<i>.cache``, the slot's shared RocksDB cache (blocks, and the
    memtables charged to it; one value, repeated per state); and
    ``rocksdb_mb.tm<i>.memtables``, the memtables of every state."""
    out: dict[str, float] = {}
    for i in range(rs.FLINK_TASKMANAGERS):
        samples = metrics.scrape(metrics.endpoints([svc.ports.prometheus + 1 + i]))
        values = {s.name: s.value for s in samples}
        for short, name in JVM_MEMORY.items():
            value = values.get(f"flink_taskmanager_Status_JVM_Memory_{name}")
            if value is not None:
                out[f"jvm_mb.tm{i}.{short}"] = round(value / 2**20, 1)
        cache = [s.value for s in samples if s.name.endswith("rocksdb_block_cache_usage")]
        tables = [s.value for s in samples if s.name.endswith("rocksdb_size_all_mem_tables")]
        if cache:
            out[f"rocksdb_mb.tm{i}.cache"] = round(max(cache) / 2**20, 1)
        if tables:
            out[f"rocksdb_mb.tm{i}.memtables"] = round(sum(tables) / 2**20, 1)
    return out


def _on_jemalloc(pgid: int) -> bool:
    """Whether a process of group ``pgid`` (a TaskManager's JVM) mapped jemalloc."""
    for proc in group_members(pgid):
        try:
            if "libjemalloc" in (proc / "maps").read_text():
                return True
        except OSError:
            continue
    return False


def _checkpoint_mb(svc: rs.LocalServices, jid: str) -> float | None:
    done = checkpoint_stats(svc.ports.flink_rest, jid).get("latest", {}).get("completed") or {}
    size = done.get("checkpointed_size") or done.get("state_size")
    return None if size is None else round(size / 2**20, 2)


def _minute_of_events(minute: int) -> list[dict[str, Any]]:
    spec = StreamSpec(events=SOAK_RATE * 60, users=USERS, rate_per_s=SOAK_RATE,
                      disorder_ms=2_000, late_fraction=0.0, seed=1_000 + minute,
                      start_ms=int(time.time() * 1000))
    return generate("user", spec)


def _flat(values: list[float], warm: int, growth: float, slack: float) -> bool:
    """The values after ``warm`` samples stay within ``growth`` x (plus ``slack``) of the
    highest warm-up-level value (the samples just after the warm-up)."""
    level = max(values[warm:warm + 3])
    return max(values[warm:]) <= level * growth + slack


def _outside_rocksdb(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], float]]:
    """For each TaskManager whose RocksDB cache was sampled every minute: its resident
    memory less that cache, per minute, and the cache's largest size (MB)."""
    out = {}
    for i in range(rs.FLINK_TASKMANAGERS):
        cache = [r.get(f"rocksdb_mb.tm{i}.cache") for r in rows]
        if None in cache:
            continue
        rss = [r[f"rss_mb.flink-taskmanager-{i}"] for r in rows]
        out[f"rss_mb.flink-taskmanager-{i}"] = (
            [round(m - c, 1) for m, c in zip(rss, cache, strict=True)], max(cache))
    return out


def _managed_mb(svc: rs.LocalServices) -> float:
    """The managed memory of one TaskManager (its one slot's: RocksDB's cap), in MB."""
    tms = _rest(svc.ports.flink_rest, "/taskmanagers")["taskmanagers"]
    return min(tm["memoryConfiguration"]["managedMemory"] for tm in tms) / 2**20


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(MINUTES * 60 + 900)
def test_soak_at_half_capacity_memory_checkpoints_and_freshness_stay_flat(svc, tmp_path,
                                                                         figures):
    """20 minutes of the user pipeline at half its capacity: every process's memory, the
    checkpoint size and the freshness p99, sampled each minute, stay flat."""
    topic, name, db = "faults-soak", "faults-soak", 10
    svc.create_topic(topic, partitions=2)
    client = redis.Redis(port=svc.ports.redis, db=db)
    job = h.submit_detached(svc, "user", name, [
        f"--topic={topic}", f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/{db}",
        f"--dead_letter={tmp_path / 'dead.jsonl'}"])
    rows: list[dict[str, Any]] = []
    allocator = {n: "jemalloc" if _on_jemalloc(hd.pid) else "glibc"
                 for n, hd in svc.recorded().items() if n.startswith("flink-taskmanager")}
    try:
        with EventProducer(svc.ports.bootstrap_servers, topic, SCHEMA_FILES["user"]) as producer:
            for minute in range(1, MINUTES + 1):
                probe = FreshnessProbe(client, feature="clicks_in_session", poll_s=0.02).start()
                events = _minute_of_events(minute)
                started = time.monotonic()
                for i, event in enumerate(events, 1):
                    producer.send(event)
                    if int(event["userId"][1:]) % PROBE_EVERY == 0:
                        probe.sent(event["userId"], event["eventTimestamp"], time.time())
                    ahead = i / SOAK_RATE - (time.monotonic() - started)
                    if ahead > 0.002:
                        time.sleep(ahead)
                time.sleep(2)  # the minute's last events reach Redis
                probe.stop()
                row: dict[str, Any] = {
                    "minute": minute,
                    "freshness_p99_ms": round(percentile(probe.latencies_ms, 99), 1),
                    "checkpoint_mb": _checkpoint_mb(svc, job),
                    **{f"rss_mb.{n}": _rss_mb(hd.pid) for n, hd in
                       sorted(svc.recorded().items())},
                    **_taskmanager_mb(svc),
                }
                rows.append(row)
                print(f"  minute {minute}: {row}", flush=True)
        restarts = h.job_restarts(svc, job)
        managed_mb = _managed_mb(svc)
        dead = (tmp_path / "dead.jsonl").read_text().splitlines() \
            if (tmp_path / "dead.jsonl").exists() else []
    finally:
        cancel_job(svc.ports.flink_rest, job)
    if os.environ.get("RTF_FAULTS_RECORD") == "1":
        _record(rows)
    warm = WARM_UP_MINUTES
    rss = {k: [r[k] for r in rows] for k in rows[0] if k.startswith("rss_mb.")}
    ckpt = [r["checkpoint_mb"] or 0.0 for r in rows]
    p99 = [r["freshness_p99_ms"] for r in rows]
    figures.update(minutes=MINUTES, rate_per_s=SOAK_RATE,
                   taskmanager_malloc="/".join(sorted(set(allocator.values()))),
                   rss_total_mb_first=round(sum(v[warm] for v in rss.values())),
                   rss_total_mb_last=round(sum(v[-1] for v in rss.values())),
                   checkpoint_mb_first=ckpt[warm], checkpoint_mb_last=ckpt[-1],
                   freshness_p99_ms_max=max(p99[warm:]),
                   freshness_p99_ms_median=statistics.median(p99[warm:]),
                   valid_records=SOAK_RATE * 60 * MINUTES)
    assert restarts == 0 and dead == []
    # A TaskManager's RocksDB cache fills towards its cap, the slot's managed memory: the
    # rest of the TaskManager's memory is what must stay flat.
    rocksdb = _outside_rocksdb(rows)
    for key, (_, cache_max) in rocksdb.items():
        assert cache_max <= managed_mb, f"{key}: RocksDB cache {cache_max} MB > {managed_mb}"
    figures.update(rocksdb_cache_mb_max=max((c for _, c in rocksdb.values()), default=0.0))
    checked = {**rss, **{key: rest for key, (rest, _) in rocksdb.items()}}
    grown = {k: v for k, v in checked.items() if not _flat(v, warm, 1.25, 64)}
    assert not grown, f"memory kept growing after the warm-up: {grown}"
    for key, (rest, _) in rocksdb.items():
        assert _flat(rest, warm, 1.1, 32), f"{key} outside RocksDB kept growing: {rest}"
    assert _flat(ckpt, warm, 1.5, 1.0), f"checkpoint size kept growing: {ckpt}"
    assert max(p99[warm:]) < 5_000, f"freshness p99 over 5 s: {p99}"
    late, early = statistics.median(p99[-5:]), statistics.median(p99[warm:warm + 5])
    assert late <= 2 * early + 250, f"freshness p99 trending up: {p99}"


def _record(rows: list[dict[str, Any]]) -> None:
    """The samples (CSV) and a plot, for RELIABILITY.md (``make soak`` only)."""
    SAMPLES.parent.mkdir(parents=True, exist_ok=True)
    with SAMPLES.open("w", newline="") as f:
        # A series can appear after the first minute (a state's first RocksDB metrics).
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is not installed: the CSV is the record
        return
    minutes = [r["minute"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    for ax, prefixes, label in ((axes[0], ("rss_mb.",), "RSS, MB"),
                                (axes[1], ("jvm_mb.", "rocksdb_mb."),
                                 "TaskManager JVM and RocksDB, MB")):
        for key in (k for k in rows[0] if k.startswith(prefixes)):
            ax.plot(minutes, [r.get(key) for r in rows], label=key.split(".", 1)[1])
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=3)
    axes[2].plot(minutes, [r["checkpoint_mb"] or 0 for r in rows], marker="o")
    axes[2].set_ylabel("checkpoint, MB")
    axes[3].plot(minutes, [r["freshness_p99_ms"] for r in rows], marker="o")
    axes[3].set_ylabel("freshness p99, ms")
    axes[3].set_xlabel("minute")
    axes[0].set_title(f"Soak: user pipeline at {SOAK_RATE} events/s for {len(rows)} min")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
