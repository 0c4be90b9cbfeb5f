"""What the fault tests share: a pipeline process on Flink, a live stream, Redis snapshots.

A run is what a user does: ``python -m pipelines.<name>_features --runner=FlinkRunner
--topic=... --max_records=N --stop_at_watermark_ms=...``; the process stops its
job once N records are committed (offsets commit only with checkpoints, after
Redis took the writes) and the watermark has passed the last event. The test
disturbs the world (kills, outages, hostile records) while the stream flows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from pipelines.generate import StreamSpec, generate, live_spec
from pipelines.produce import SCHEMA_FILES, EventProducer, registry_schema_id
from runners import services as rs
from runners.pipeline_process import PipelineProcess
from runtime import metrics
from runtime.flink import _rest, checkpoint_stats, service_args

ROOT = Path(__file__).resolve().parents[2]
# Sliding window (60 s) + out-of-orderness (10 s) + margin: every value is
# final once the watermark is this far past the last event.
SETTLE_MS = 75_000
# Event times start this far ahead: the job is expected to be RUNNING by then.
LEAD_MS = 5_000


def flink_args(svc: rs.LocalServices, parallelism: int = 1, retries: int = 50) -> list[str]:
    """The product's FlinkRunner flags for the suite's cluster (checkpoints every 2 s),
    plus a job restart budget.

    ``--number_of_execution_retries`` gives the job its own fixed-delay restart
    strategy: the cluster default (3 attempts in the job's lifetime) would
    fail a job that loses its TaskManager a fourth time.
    """
    return [*service_args(svc, parallelism),
            f"--number_of_execution_retries={retries}", "--execution_retry_delay=2000",
            # For trying a preset change against the whole suite, e.g.
            # RTF_FAULTS_FLINK_ARGS=--finish_bundle_before_checkpointing
            *os.environ.get("RTF_FAULTS_FLINK_ARGS", "").split()]


def live_events(pipeline: str, spec: StreamSpec, lead_ms: int = LEAD_MS) -> list[dict[str, Any]]:
    """A generated stream whose event times start ``lead_ms`` from now."""
    start = int(time.time() * 1000) + lead_ms
    return generate(pipeline, dataclasses.replace(live_spec(spec), start_ms=start))


def settle_ms(events: list[dict[str, Any]]) -> int:
    return max(e["eventTimestamp"] for e in events) + SETTLE_MS


class PipelineRun(PipelineProcess):
    """A feature pipeline process on Flink with the suite's flags (``flink_args``);
    stdout/stderr go to files (scanned for secrets).

    Args:
        svc: the services.
        pipeline: ``user`` or ``ride``.
        args: the pipeline's own flags (topic, redis url, max records, ...).
        workdir: where the process's output files go.
        name: a label for the output files.
        root: the source tree of the job (another version of it: ``git archive``).
        pool: whether the job's Python workers run in the worker pools (without: the
            flags give no pool address, for a job given ``--environment_type=LOOPBACK``).
    """

    def __init__(self, svc: rs.LocalServices, pipeline: str, args: list[str], workdir: Path,
                 name: str, parallelism: int = 1, root: Path = ROOT, pool: bool = True) -> None:
        self.svc = svc
        runner = [a for a in flink_args(svc, parallelism)
                  if pool or not a.startswith("--environment_config=")]
        super().__init__(svc.ports.flink_rest, pipeline, [*runner, *args], workdir, name, root)


def wait_restored_and_checkpointed(svc: rs.LocalServices, jid: str, before: dict | None,
                                    timeout: float = 240) -> dict:
    """Until the job restored from a checkpoint newer than ``before`` and then completed a
    checkpoint of its own: it runs again, from its state, and makes progress."""
    deadline = time.monotonic() + timeout
    restored: dict | None = None
    while time.monotonic() < deadline:
        stats = checkpoint_stats(svc.ports.flink_rest, jid)
        latest = stats.get("latest", {})
        restored = latest.get("restored")
        done = latest.get("completed") or {}
        if (restored and restored != before
                and done.get("latest_ack_timestamp", 0) > restored["restore_timestamp"]):
            return restored
        time.sleep(1)
    raise AssertionError(f"job {jid} did not restore and checkpoint in {timeout}s "
                         f"(restored: {restored})")


def wait_checkpointed(svc: rs.LocalServices, jid: str, timeout: float = 120) -> None:
    """Until job ``jid`` has completed a checkpoint."""
    deadline = time.monotonic() + timeout
    while checkpoint_stats(svc.ports.flink_rest, jid).get("counts", {}).get("completed", 0) < 1:
        assert time.monotonic() < deadline, f"job {jid}: no checkpoint in {timeout}s"
        time.sleep(1)


def job_counters(svc: rs.LocalServices, jid: str) -> dict[tuple[str, str], int]:
    """The Beam counters of running job ``jid``, summed over its TaskManagers, as
    Flink's Prometheus reporter exports them (updated every few seconds)."""
    name = _rest(svc.ports.flink_rest, f"/jobs/{jid}")["name"]
    samples = metrics.scrape(metrics.endpoints(svc.ports.prometheus_ports()))
    return metrics.beam_counters(samples, name)


def job_parallelism(svc: rs.LocalServices, jid: str) -> int:
    """The highest parallelism among the job's vertices."""
    return max(v["parallelism"] for v in _rest(svc.ports.flink_rest, f"/jobs/{jid}")["vertices"])


def taskmanager_index(svc: rs.LocalServices) -> dict[str, int]:
    """Flink's TaskManager id -> our TaskManager index, from each TaskManager's own
    Prometheus endpoint (TaskManager i reports on ``prometheus + 1 + i``)."""
    out = {}
    for i in range(rs.FLINK_TASKMANAGERS):
        port = svc.ports.prometheus + 1 + i
        for sample in metrics.scrape(metrics.endpoints([port])):
            if "tm_id" in sample.labels:
                out[metrics.flink_label(sample.labels["tm_id"])] = i
                break
    return out


def taskmanagers_of(svc: rs.LocalServices, jid: str, timeout: float = 60) -> set[int]:
    """The indexes of the TaskManagers that run a subtask of job ``jid`` (waiting while a
    just-started job still has subtasks not deployed: ``_unassigned_``)."""
    index = taskmanager_index(svc)
    port = svc.ports.flink_rest
    deadline = time.monotonic() + timeout
    while True:
        ids = {metrics.flink_label(tm.get("taskmanager-id") or tm.get("taskmanagerId"))
               for vertex in _rest(port, f"/jobs/{jid}")["vertices"]
               for tm in _rest(port, f"/jobs/{jid}/vertices/{vertex['id']}/taskmanagers")[
                   "taskmanagers"]}
        if ids <= set(index) or time.monotonic() > deadline:
            break
        time.sleep(1)
    unknown = ids - set(index)
    assert not unknown, f"TaskManagers {unknown} of job {jid} not among {index}"
    return {index[tm_id] for tm_id in ids}


def submit_detached(svc: rs.LocalServices, pipeline: str, name: str, flags: list[str]) -> str:
    """Submits ``pipeline`` as job ``name`` with ``--detached`` (the product's flags for the
    suite's cluster); returns the Flink job id once it runs."""
    done = subprocess.run(
        [sys.executable, "-m", f"pipelines.{pipeline}_features", *flink_args(svc),
         "--detached", f"--job_name={name}", *flags],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(json.loads(done.stdout.strip().splitlines()[-1])["flink.job_id"])


def job_restarts(svc: rs.LocalServices, jid: str) -> int:
    """How often job ``jid`` has restarted (Flink's ``numRestarts``)."""
    got = _rest(svc.ports.flink_rest, f"/jobs/{jid}/metrics?get=numRestarts")
    return int(float(got[0]["value"])) if got else 0


def pipeline_flags(topic: str, redis_url: str, records: int, stop_at_ms: int,
                   workdir: Path, *extra: str) -> list[str]:
    return [f"--topic={topic}", f"--max_records={records}", f"--stop_at_watermark_ms={stop_at_ms}",
            "--run_timeout_s=600", f"--redis_url={redis_url}",
            f"--feature_log={workdir / f'{topic}-features.jsonl'}",
            f"--late_output={workdir / f'{topic}-late.jsonl'}", *extra]


def send_in_background(svc: rs.LocalServices, topic: str, pipeline: str,
                       items: list[Any], rate_per_s: float,
                       schema_file: str | None = None, registry: bool = False
                       ) -> threading.Thread:
    """Sends ``items`` at a rate in a thread: an event dict, or ``(bytes, key)`` raw.

    A ``("schema", file)`` item switches the writer schema (schema evolution).
    With ``registry`` the writer schemas are registered under ``<topic>-value``
    in the services' schema registry and records carry its ids, as
    ``pipelines.produce --schema_registry_url`` does.
    """
    errors: list[BaseException] = []
    stop = threading.Event()

    def producer_for(file: str) -> EventProducer:
        schema_id = (registry_schema_id(svc.ports.registry_url, f"{topic}-value", file)
                     if registry else None)
        return EventProducer(svc.ports.bootstrap_servers, topic, file, schema_id)

    def run() -> None:
        try:
            producer = producer_for(schema_file or SCHEMA_FILES[pipeline])
            started = time.monotonic()
            for n, item in enumerate(items, 1):
                if stop.is_set():  # the test ended early: no client outlives its broker
                    producer.close(5)
                    return
                if isinstance(item, tuple) and item[0] == "schema":
                    assert producer.close(120) == 0
                    producer = producer_for(item[1])
                    continue
                if isinstance(item, tuple):
                    value, key = item
                    producer.send_raw(value, key, int(time.time() * 1000))
                else:
                    producer.send(item)
                ahead = n / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            undelivered = producer.close(120)
            assert undelivered == 0 and producer.failed == 0, (undelivered, producer.failed)
        except BaseException as e:  # noqa: BLE001 (re-raised by the caller)
            errors.append(e)

    thread = threading.Thread(target=run, name=f"produce-{topic}", daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread


def stop_sender(thread: threading.Thread) -> None:
    """Stops a sender the test no longer waits for, and closes its client."""
    thread.stop.set()  # type: ignore[attr-defined]
    thread.join(30)


def join_sender(thread: threading.Thread, timeout: float = 600) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), "producer did not finish"
    errors = thread.errors  # type: ignore[attr-defined]
    if errors:
        raise errors[0]


def snapshot(client: redis.Redis, prefix: str = "features:") -> dict[str, dict[str, str]]:
    """Every feature hash, every field (as_of, final and updated_at included)."""
    return {k: client.hgetall(k) for k in sorted(client.scan_iter(f"{prefix}*"))}


def consume_all(bootstrap: str, topic: str, idle_s: float = 5.0,
                timeout_s: float = 60.0) -> list[bytes]:
    """Every value on ``topic`` (from offset 0, no group offsets committed)."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"faults-read-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    last = time.monotonic()
    deadline = last + timeout_s
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            values.append(msg.value())
            last = time.monotonic()
    finally:
        consumer.close()
    return values


def rewind_group(bootstrap: str, group: str, topic: str) -> int:
    """Sets every partition's committed offset of ``group`` to 0; returns the partitions."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, 0) for p in parts])
    for future in admin.alter_consumer_group_offsets([request]).values():
        result = future.result(timeout=30)
        assert all(tp.offset == 0 and tp.error is None for tp in result.topic_partitions), result
    return len(parts)


class RedisProcess:
    """A redis-server the test owns: optional AOF persistence and password; stop/start
    on the same port and directory (an outage), so data survives iff ``persist``."""

    def __init__(self, workdir: Path, persist: bool, password: str | None = None) -> None:
        self.port = rs.free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persist = persist
        self.password = password
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, password=self.password,
                           decode_responses=True)

    def start(self) -> RedisProcess:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--daemonize", "no", "--logfile", str(self.log)]
        cmd += (["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
                if self.persist else ["--appendonly", "no", "--save", ""])
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"redis-server not ready on {self.port}")

    def stop(self) -> None:
        """SIGKILL: an outage, not a graceful shutdown (no final save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def iter_files(root: Path, pattern: str = "*") -> Iterator[Path]:
    yield from (p for p in root.rglob(pattern) if p.is_file())


def reference_for(pipeline: str) -> Callable[[list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """What a run stopped once the watermark reached ``settle_ms(events)`` leaves behind."""
    from tests import reference

    if pipeline == "user":
        return reference.user_features
    return lambda events: reference.ride_features(events, watermark_ms=settle_ms(events))
