"""What the Flink sections (3 and 4b) share: services, a feature job, its metrics and CPU.

Each section starts its own set of local services (``runners.services``) on
free ports in a temporary directory, runs the pipeline modules as a user does
(``runners.pipeline_process``, with the product's FlinkRunner preset from
``runtime.flink.service_args``: RocksDB, incremental checkpoints, exactly
once) and stops everything in ``finally`` blocks, the services' process
groups included.

The JobManager's REST metrics are refreshed every second here (Flink's
default is 10 s), so records counted by a step can be sampled once a second.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from benchmarks.measure import slope
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners.demo import warm_up
from runners.flink_cluster import flink_overview
from runners.pipeline_process import PipelineProcess
from runners.process import proc_stats
from runners.services import FLINK_TASKMANAGERS, LocalServices, ServicePorts
from runtime import metrics
from runtime.flink import _rest, checkpoint_config, service_args

# Every job loads Beam's jars into a fresh class loader that the TaskManager does
# not release (runners/flink_cluster.py, JVM_METASPACE): a section submits up to
# 20 jobs to one cluster. Room for more than the local cluster's 768 MB, and a
# TaskManager past METASPACE_SHARE of it is restarted between jobs.
FLINK_CONFIG = {"metrics.fetcher.update-interval": 1000,
                "taskmanager.memory.jvm-metaspace.size": "1g"}
METASPACE_SHARE = 0.6
_METASPACE = ("flink_taskmanager_Status_JVM_Memory_Metaspace_Used",
              "flink_taskmanager_Status_JVM_Memory_Metaspace_Max")
CHECKPOINT_INTERVAL_MS = 10_000
# make run's bundle time: a bundle's writes reach Redis when it finishes.
BUNDLE_MS = 200
PARTITIONS = 2
# The step of each pipeline that receives every event (its records-in count
# is the events the job has consumed), and the feature whose as_of is the
# newest event time of the events that update it (for the freshness probe).
ALL_EVENTS_STEP = {"user": "UserFeatures", "ride": "RideFeatures"}
PROBE_FEATURE = {"user": "clicks_in_session", "ride": "lifetime_rides"}
WARM_UP_EVENT = {
    "user": {"userId": "warm-up", "eventType": "view", "eventValue": 0.0},
    "ride": {"rideId": "warm-up", "userId": "warm-up", "eventType": "END", "cityId": "ams",
             "amount": 1.0},
}


def taskmanager_metaspace(svc: LocalServices) -> list[tuple[float, float] | None]:
    """Per TaskManager index, its metaspace (used, max) in bytes from its own Prometheus
    endpoint; None where it does not answer."""
    out: list[tuple[float, float] | None] = []
    for i in range(FLINK_TASKMANAGERS):
        values = {s.name: s.value
                  for s in metrics.scrape(metrics.endpoints([svc.ports.prometheus + 1 + i]))
                  if s.name in _METASPACE}
        out.append((values[_METASPACE[0]], values[_METASPACE[1]])
                   if len(values) == len(_METASPACE) else None)
    return out


def recycle_taskmanagers(svc: LocalServices, share: float = METASPACE_SHARE,
                         timeout_s: float = 180) -> list[int]:
    """Between jobs: restarts each TaskManager whose metaspace is past ``share`` of its
    max, and waits until the cluster offers all its slots again. Returns the indexes
    restarted (none when every TaskManager has room)."""
    full = [i for i, m in enumerate(taskmanager_metaspace(svc))
            if m is not None and m[1] > 0 and m[0] > share * m[1]]
    for i in full:
        svc.restart(f"flink-taskmanager-{i}")
    deadline = time.monotonic() + timeout_s
    while full:
        ov = flink_overview(svc.ports.flink_rest) or {}
        if (ov.get("taskmanagers") == FLINK_TASKMANAGERS
                and ov.get("slots-available") == ov.get("slots-total") == FLINK_TASKMANAGERS
                and None not in taskmanager_metaspace(svc)):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"TaskManagers {full} not back after a restart: {ov}")
        time.sleep(1)
    if full:
        print(f"  (restarted TaskManagers {full}: metaspace past {share:.0%} of its max)",
              flush=True)
    return full


@contextlib.contextmanager
def flink_services() -> Iterator[LocalServices]:
    """Kafka, Redis, Flink, expansion service and job server on free ports; always stopped.

    The temporary state directory (Kafka data, checkpoints, logs) is removed
    afterwards unless the block failed: then its path is printed.
    """
    workdir = Path(tempfile.mkdtemp(prefix="rtf-bench-"))
    svc = LocalServices(ports=ServicePorts.free(), state_dir=workdir / "services",
                        flink_config=FLINK_CONFIG)
    ok = False
    try:
        svc.up()
        yield svc
        ok = True
    finally:
        svc.down()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  (services' logs kept in {svc.log_dir})", flush=True)


def _cpu_s(stat_fields: list[str]) -> float:
    """User + system CPU seconds from a process's ``stat`` fields (``proc_stats``)."""
    return (int(stat_fields[11]) + int(stat_fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used so far by each service, the pipeline process and this process.

    Services run in their own process groups (their JVMs are children of a
    shell): a group's CPU is the sum over its live members.
    """

    def __init__(self, svc: LocalServices, pipeline_pid: int) -> None:
        self._groups = {h.name: h.pid for h in svc.recorded().values()}
        self._pipeline_pid = pipeline_pid

    def snapshot(self) -> dict[str, float]:
        by_group: dict[int, float] = {}
        own = 0.0
        for proc, fields in proc_stats():
            cpu_s = _cpu_s(fields)
            by_group[int(fields[2])] = by_group.get(int(fields[2]), 0.0) + cpu_s
            if proc.name == str(self._pipeline_pid):
                own = cpu_s
        out = {name: by_group.get(pgid, 0.0) for name, pgid in self._groups.items()}
        out["pipeline process (Python workers)"] = own
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["benchmark (producer, probe)"] = usage.ru_utime + usage.ru_stime
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float],
              seconds: float) -> dict[str, float]:
        """CPU cores each used between two snapshots ``seconds`` apart."""
        return {k: round((after[k] - before.get(k, 0.0)) / seconds, 3) for k in after}


class JobSampler:
    """Polls a job once a second: records into its all-events step, and checkpoints.

    ``records`` holds ``(time.time(), count)``; ``checkpoints`` every finished
    checkpoint by id, as ``/jobs/<jid>/checkpoints`` history reports it.
    """

    def __init__(self, rest_port: int, jid: str, step: str, poll_s: float = 1.0) -> None:
        self._rest_port = rest_port
        self._jid = jid
        self._poll_s = poll_s
        vertices = _rest(rest_port, f"/jobs/{jid}")["vertices"]
        matches = [v["id"] for v in vertices if step in v["name"]]
        if len(matches) != 1:
            raise RuntimeError(f"no single vertex with {step!r}: {[v['name'] for v in vertices]}")
        self._vertex = matches[0]
        self.records: list[tuple[float, int]] = []
        self.checkpoints: dict[int, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-sampler", daemon=True)

    def start(self) -> JobSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def records_in(self) -> int:
        for v in _rest(self._rest_port, f"/jobs/{self._jid}")["vertices"]:
            if v["id"] == self._vertex:
                return int(v["metrics"]["read-records"])
        raise RuntimeError("vertex gone")

    def subtask_records(self) -> list[int]:
        """Records into the step per parallel subtask, now."""
        vertex = _rest(self._rest_port, f"/jobs/{self._jid}/vertices/{self._vertex}")
        return [int(t["metrics"]["read-records"]) for t in vertex["subtasks"]]

    def poll_checkpoints(self) -> None:
        stats = _rest(self._rest_port, f"/jobs/{self._jid}/checkpoints")
        self.counts = dict(stats.get("counts", {}))
        for entry in stats.get("history", []):
            if entry.get("status") in ("COMPLETED", "FAILED"):
                self.checkpoints[int(entry["id"])] = {
                    k: entry.get(k) for k in (
                        "id", "status", "trigger_timestamp", "latest_ack_timestamp",
                        "end_to_end_duration", "state_size", "checkpointed_size",
                        "alignment_buffered", "failure_message")}

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self._poll_s if n else 0):
            with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError):
                self.records.append((time.time(), self.records_in()))
                # The history holds the last 10 only: every 3 s is often enough.
                if n % 3 == 0:
                    self.poll_checkpoints()
            n += 1

    def records_at(self, t: float) -> int | None:
        """The count of the last sample taken at or before ``t`` (``time.time()``)."""
        before = [v for at, v in self.records if at <= t]
        return before[-1] if before else None

    def rate(self, t0: float, t1: float) -> float | None:
        """Records/s in [t0, t1]: the least-squares slope of the samples.

        The count moves in steps (a stage takes up to a bundle, 1,000
        elements, at once when they are waiting); a fit over every sample
        weighs them less than the two end points would.
        """
        return slope([(at, v) for at, v in self.records if t0 <= at <= t1])

    def finished_between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        """Checkpoints triggered in [t0, t1] (``time.time()``), oldest first."""
        return [c for _, c in sorted(self.checkpoints.items())
                if t0 * 1000 <= (c["trigger_timestamp"] or 0) <= t1 * 1000]


class DecodedSampler(JobSampler):
    """Samples the events a job decoded (the decode stage's ``decode/events_valid``
    counter, summed over subtasks) instead of records into a step: every event,
    however the steps after the decoder are arranged. A Python step chained to
    the source in Flink's graph receives nothing over the network, so no vertex
    reports its input records; the counter counts the same for every job."""

    COUNTER = "decode_events_valid"

    def __init__(self, rest_port: int, jid: str, poll_s: float = 1.0) -> None:
        super().__init__(rest_port, jid, "ReadEvents", poll_s)
        self._metric: str | None = None

    def _path(self) -> str:
        return f"/jobs/{self._jid}/vertices/{self._vertex}"

    def _metric_id(self) -> str:
        if self._metric is None:
            names = [m["id"] for m in _rest(self._rest_port, f"{self._path()}/metrics")]
            found = sorted({n.split(".", 1)[1] for n in names if n.endswith(self.COUNTER)})
            if not found:
                raise RuntimeError(f"no {self.COUNTER} metric yet")
            self._metric = found[0]
        return self._metric

    def records_in(self) -> int:
        metric = urllib.parse.quote(self._metric_id(), safe="")
        got = _rest(self._rest_port, f"{self._path()}/subtasks/metrics?get={metric}&agg=sum")
        return int(float(got[0]["sum"])) if got else 0

    def subtask_records(self) -> list[int]:
        subtasks = _rest(self._rest_port, self._path())["subtasks"]
        ids = ",".join(urllib.parse.quote(f"{t['subtask']}.{self._metric_id()}", safe="")
                       for t in subtasks)
        got = {m["id"]: m["value"] for m in _rest(self._rest_port,
                                                  f"{self._path()}/metrics?get={ids}")}
        return [int(float(got.get(f"{t['subtask']}.{self._metric_id()}", 0)))
                for t in subtasks]


class FeatureJob:
    """One feature pipeline on the services' Flink cluster, fed through its own topic.

    The product's FlinkRunner preset (``service_args``) with checkpoints every
    ``CHECKPOINT_INTERVAL_MS``, ``make run``'s 200 ms bundles, a fresh topic of
    ``PARTITIONS`` partitions and consumer group, Redis db ``redis_db``
    (emptied first), dead letters and late events to files in ``workdir``.
    No ``--feature_log``: it is an audit file of every update, a second sink
    that would be measured along with the Redis path.

    Args:
        svc: the running services.
        pipeline: ``user`` or ``ride``.
        parallelism: the job's parallelism (the TaskManager has 2 slots).
        name: topic, consumer group and file label.
        workdir: where the process's output goes.
        redis_db: the Redis database the job writes.
        flags: more flags for the pipeline process.
        bundles: a bundle preset (``runtime.flink.BUNDLE_PRESETS``) in place of
            the 200 ms bundles.
        workers: where the job's Python workers run: ``pool`` (the worker pools
            beside the TaskManagers, the product's way) or ``loopback`` (in the
            launching process, for comparison).
    """

    def __init__(self, svc: LocalServices, pipeline: str, parallelism: int, name: str,
                 workdir: Path, redis_db: int = 0, flags: tuple[str, ...] = (),
                 bundles: str | None = None, workers: str = "pool") -> None:
        if workers not in ("pool", "loopback"):
            raise ValueError(f"workers: pool or loopback, not {workers!r}")
        self.svc = svc
        self.pipeline = pipeline
        self.parallelism = parallelism
        self.topic = name
        self.workdir = workdir
        self.redis = redis.Redis(port=svc.ports.redis, db=redis_db)
        self.redis.flushdb()
        svc.create_topic(name, partitions=PARTITIONS)
        self.dead_letter = workdir / f"{name}-dead.jsonl"
        self.late_output = workdir / f"{name}-late.jsonl"
        bundle_flags = [] if bundles else [f"--max_bundle_time_mills={BUNDLE_MS}"]
        preset = service_args(svc, parallelism, CHECKPOINT_INTERVAL_MS, bundles or "low_latency")
        if workers == "loopback":  # in-process workers take no pool address
            preset = [a for a in preset if not a.startswith("--environment_")]
        self.flags = [*preset,
                      f"--topic={name}", f"--consumer_group=bench-{name}",
                      f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/{redis_db}",
                      *bundle_flags,
                      f"--dead_letter={self.dead_letter}", f"--late_output={self.late_output}",
                      *(["--environment_type=LOOPBACK"] if workers == "loopback" else []),
                      *flags]
        self.producer: EventProducer | None = None
        self.sent = 0
        self.process: PipelineProcess | None = None
        self.sampler: JobSampler | None = None
        self.cpu: CpuMeter | None = None

    def start(self, timeout_s: float = 300) -> dict[str, float]:
        """Submits the job, waits for RUNNING and for a first event in Redis.

        Returns the seconds each took: the freshness figures then measure the
        pipeline, not the start of its Python workers.
        """
        recycle_taskmanagers(self.svc)
        started = time.monotonic()
        self.process = PipelineProcess(self.svc.ports.flink_rest, self.pipeline, self.flags,
                                       self.workdir, self.topic)
        jid = self.process.wait_running(timeout_s)
        running = time.monotonic()
        self.producer = EventProducer(self.svc.ports.bootstrap_servers, self.topic,
                                      SCHEMA_FILES[self.pipeline])
        self.cpu = CpuMeter(self.svc, self.process.proc.pid)
        self.sampler = JobSampler(self.svc.ports.flink_rest, jid,
                                  ALL_EVENTS_STEP[self.pipeline]).start()
        event = {**WARM_UP_EVENT[self.pipeline], "eventTimestamp": int(time.time() * 1000)}
        warm_up(self.producer, self.redis, timeout_s, event=event)
        self.sent += 1
        return {"submit_to_running_s": running - started,
                "first_event_in_redis_s": time.monotonic() - running}

    @property
    def jid(self) -> str:
        if self.process is None or self.process.jid is None:
            raise RuntimeError("job not started")
        return self.process.jid

    def checkpoint_config(self) -> dict[str, Any]:
        config = checkpoint_config(self.svc.ports.flink_rest, self.jid)
        return {k: config.get(k) for k in ("mode", "interval", "min_pause", "timeout",
                                           "state_backend", "checkpoint_storage")}

    def outputs(self) -> dict[str, int]:
        """Dead letters and too-late events the job wrote (both expected to be 0)."""
        def lines(path: Path) -> int:
            return len(path.read_text().splitlines()) if path.exists() else 0

        return {"dead_letters": lines(self.dead_letter), "late_events": lines(self.late_output)}

    def stop(self) -> None:
        """Stops the sampler, the pipeline process and its Flink job."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.process is not None:
            self.process.kill()
        # Closed now, or librdkafka keeps reconnecting once Kafka is stopped.
        if self.producer is not None:
            self.producer.close(10)
        self.producer = None
        self.redis.close()
