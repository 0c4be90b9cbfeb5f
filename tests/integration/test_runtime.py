"""The local runtime for real: Kafka (KRaft) + Redis + Flink 1.19 (RocksDB) + Beam job server.

Starts every service through ``runners.services`` on free ports with a
temporary state dir, so a developer's own ``make services-up`` set is left
alone, and proves:

(a) Kafka: a topic with 2 partitions, a message produced and consumed
    with confluent_kafka;
(b) a Beam Python pipeline reading Kafka through the Java ReadFromKafka
    (expansion service, EMBEDDED Java environment) on the FlinkRunner
    against the standalone cluster gets every record;
(c) that job ran on RocksDB with externalized checkpoints, and checkpoints
    completed (Flink REST /jobs/<id>/checkpoints[/config]);
(d) everything started is stopped afterwards (no pid left alive).

Needs ``runners/install_runtime.sh`` (``make install``) to have run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka import Consumer, Producer

from runners import services as rs
from runtime.flink import (
    FlinkPreset,
    LaunchedJob,
    checkpoint_config,
    checkpoint_stats,
    flink_jobs,
    new_launch_id,
    run_until,
)
from runtime.kafka_io import ReadFromKafka


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.LocalServices]:
    state = tmp_path_factory.mktemp("services")
    s = rs.LocalServices(ports=rs.ServicePorts.free(), state_dir=state)
    s.up()
    try:
        yield s
    finally:
        s.down()


def test_all_services_ready(svc: rs.LocalServices) -> None:
    st = svc.status()
    assert set(st) == {
        "kafka",
        "redis",
        "registry",
        "flink-jobmanager",
        "flink-taskmanager-0",
        "flink-taskmanager-1",
        "worker-pool-0",
        "worker-pool-1",
        "expansion",
        "jobserver",
    }
    assert all(s["alive"] for s in st.values()), st
    assert st["redis"]["probe"] == {"ping": True}
    assert st["registry"]["probe"] == {"ready": True, "url": svc.ports.registry_url}
    fl = st["flink-jobmanager"]["probe"]
    assert (
        fl["taskmanagers"] == 2
        and fl["slots-total"] == 2
        and fl["flink-version"] == rs.FLINK_VERSION
    )
    assert (svc.log_dir / "kafka.log").exists()
    assert (svc.log_dir / "registry.log").exists()
    assert (svc.log_dir / "flink-taskmanager-0.log").exists()


def test_kafka_produce_consume(svc: rs.LocalServices) -> None:
    assert svc.create_topic("rt-a", partitions=2) is True
    assert svc.create_topic("rt-a", partitions=2) is False
    assert rs.kafka_metadata(svc.ports.kafka)["topics"]["rt-a"] == 2

    prod = Producer({"bootstrap.servers": svc.ports.bootstrap_servers})
    prod.produce("rt-a", key=b"k", value=b"hello")
    assert prod.flush(15) == 0
    del prod

    cons = Consumer(
        {
            "bootstrap.servers": svc.ports.bootstrap_servers,
            "group.id": "rt-a-test",
            "auto.offset.reset": "earliest",
        }
    )
    cons.subscribe(["rt-a"])
    got = []
    deadline = time.monotonic() + 30
    try:
        while not got and time.monotonic() < deadline:
            msg = cons.poll(1.0)
            if msg is not None and msg.error() is None:
                got.append((msg.key(), msg.value()))
    finally:
        cons.close()
    assert got == [(b"k", b"hello")]


class WriteOneFilePerRecord(beam.DoFn):
    """Idempotent file sink: one file per record, named by a hash of key and value."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, kv: tuple[bytes, bytes]) -> Iterator[str]:
        os.makedirs(self.out_dir, exist_ok=True)
        name = hashlib.sha1(kv[0] + b"|" + kv[1]).hexdigest()
        tmp = os.path.join(self.out_dir, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(kv[1])
        os.replace(tmp, os.path.join(self.out_dir, name))
        yield name


def _count(d: Path) -> int:
    return len([p for p in d.iterdir() if not p.name.startswith(".")]) if d.is_dir() else 0


def test_read_from_kafka_on_flink_rocksdb_checkpoints(
    svc: rs.LocalServices, tmp_path: Path
) -> None:
    n = 25
    topic = "rt-events"
    svc.create_topic(topic, partitions=2)
    prod = Producer({"bootstrap.servers": svc.ports.bootstrap_servers})
    for i in range(n):
        prod.produce(topic, key=f"user-{i % 5}".encode(), value=f"event-{i}".encode())
    assert prod.flush(15) == 0
    del prod

    preset = FlinkPreset.local(
        svc.ports,
        svc.state_dir,
        checkpoint_interval_ms=2000,
        min_pause_ms=500,
        checkpoint_timeout_ms=60_000,
        job_name="rt-runtime-test",
    )
    out = tmp_path / "out"
    launch_id = new_launch_id()
    pipeline = beam.Pipeline(options=PipelineOptions(
        [*preset.pipeline_args(), f"--launch_id={launch_id}"]))
    _ = (
        pipeline
        | "ReadEvents"
        >> ReadFromKafka(
            consumer_config={
                "bootstrap.servers": svc.ports.bootstrap_servers,
                "auto.offset.reset": "earliest",
                "group.id": "rt-runtime-test",
                "enable.auto.commit": "false",
            },
            topics=[topic],
            commit_offset_in_finalize=True,
            expansion_service=svc.ports.expansion_address,
        )
        | "WriteFiles" >> beam.ParDo(WriteOneFilePerRecord(str(out)))
    )
    job = LaunchedJob(svc.ports.flink_rest, launch_id, "rt-runtime-test")
    result = pipeline.run()

    def done(jid: str) -> bool:
        completed = checkpoint_stats(svc.ports.flink_rest, jid)["counts"]["completed"]
        return _count(out) >= n and completed >= 2

    jid = run_until(result, done, job, timeout=240)

    # (b) every record arrived exactly once (file names are content hashes)
    assert _count(out) == n
    assert sorted(p.read_bytes() for p in out.iterdir()) == sorted(
        f"event-{i}".encode() for i in range(n)
    )

    # (c) RocksDB + externalized checkpoints, and they completed
    cfg = checkpoint_config(svc.ports.flink_rest, jid)
    # Beam 2.62 configures the legacy RocksDBStateBackend class (Embedded... underneath).
    assert cfg["state_backend"] in ("RocksDBStateBackend", "EmbeddedRocksDBStateBackend"), cfg
    # The legacy RocksDBStateBackend is also the checkpoint storage (files under state_dir).
    assert cfg["checkpoint_storage"] in ("RocksDBStateBackend", "FileSystemCheckpointStorage"), cfg
    assert cfg["mode"] == "exactly_once" and cfg["interval"] == 2000, cfg
    assert cfg["externalization"]["enabled"] is True, cfg
    stats = checkpoint_stats(svc.ports.flink_rest, jid)
    assert stats["counts"]["completed"] >= 2, stats["counts"]
    ext = stats["latest"]["completed"]["external_path"]
    assert ext.startswith("file:" + str(svc.checkpoint_dir)), ext
    jm_log = (svc.log_dir / "flink-jobmanager.log").read_text(errors="replace")
    assert "EmbeddedRocksDBStateBackend" in jm_log or "RocksDBStateBackend" in jm_log
    print(
        f"\nFlink job {jid}: state_backend={cfg['state_backend']} "
        f"checkpoints completed={stats['counts']['completed']} latest={ext}"
    )
    assert flink_jobs(svc.ports.flink_rest) and all(
        j["state"] != "RUNNING" for j in flink_jobs(svc.ports.flink_rest)
    )


def test_zz_everything_stopped(svc: rs.LocalServices) -> None:
    pids = {name: h.pid for name, h in svc.recorded().items()}
    assert len(pids) == 10
    stopped = svc.down()
    assert sorted(stopped) == sorted(pids)
    for name, pid in pids.items():
        assert not rs._pid_alive(pid), f"{name} (pid {pid}) still alive"
    for port in (
        svc.ports.kafka,
        svc.ports.redis,
        svc.ports.registry,
        svc.ports.registry_health,
        svc.ports.flink_rest,
        svc.ports.expansion,
        svc.ports.job,
    ):
        assert not rs.tcp_open(port), f"port {port} still open"
    assert svc.status() == {}
