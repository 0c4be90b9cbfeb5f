"""End to end on the real runtime: Kafka -> ReadFromKafka -> Flink (RocksDB, checkpoints) -> Redis.

Starts Kafka, Redis, a Flink cluster, the expansion service and the job server
on free ports (``runners.services``), produces generated streams, runs both
pipeline modules exactly as a user would (``--runner=FlinkRunner``), and
compares every Redis feature with the plain-Python reference.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.generate import StreamSpec, generate, live_spec
from pipelines.produce import SCHEMA_FILES, EventProducer, send_all
from runners import services as rs
from runners.flink import service_args
from runners.pipeline_process import PipelineProcess
from tests import reference
from tests.integration.test_pipelines import redis_features

# Out of order by up to 5 s, nothing later than the allowed lateness: the
# reference (all events count) is then exactly what the stream must give.
SPEC = StreamSpec(events=2_000, users=30, rate_per_s=100, disorder_ms=5_000,
                  late_fraction=0.0, seed=21)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.LocalServices]:
    with rs.local_services(ports=rs.ServicePorts.free(),
                           state_dir=tmp_path_factory.mktemp("services")) as services:
        yield services


def run_on_flink(svc: rs.LocalServices, pipeline: str, spec: StreamSpec, topic: str,
                 redis_db: int, tmp: Path, parallelism: int = 1
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Starts the pipeline, then sends a live stream (event time = now) at its rate.

    Live, because that is what the Kafka path is for: KafkaIO moves an idle
    partition's watermark to the wall clock, so months-old event times sent
    through Kafka would all be late (backfills go through --input instead).
    """
    svc.create_topic(topic, partitions=2)
    # Event times start a little ahead, when the job is expected to be running.
    events = generate(pipeline, dataclasses.replace(live_spec(spec),
                                                    start_ms=int(time.time() * 1000) + 20_000))
    # Stop once event time has passed the last event by the sliding window and
    # the out-of-orderness: every value is then final (amount_sum_60s back to 0).
    settle_ms = max(e["eventTimestamp"] for e in events) + 75_000
    job = PipelineProcess(svc.ports.flink_rest, pipeline, [
        *service_args(svc, parallelism), f"--topic={topic}", f"--max_records={spec.events}",
        "--run_timeout_s=600", f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/{redis_db}",
        f"--feature_log={tmp / f'{topic}.jsonl'}", f"--late_output={tmp / f'{topic}-late.jsonl'}",
        f"--stop_at_watermark_ms={settle_ms}"], tmp, topic)
    try:
        job.wait_running()
        producer = EventProducer(svc.ports.bootstrap_servers, topic, SCHEMA_FILES[pipeline])
        assert send_all(producer, events, spec.rate_per_s) == spec.events
        summary = job.finish()  # raises with the process's stderr if it failed
    finally:
        job.kill()
    print(f"{pipeline} on Flink (parallelism {parallelism}): {summary}")
    late = tmp / f"{topic}-late.jsonl"
    summary["late_events"] = late.read_text().splitlines() if late.exists() else []
    return summary, events


def redis_client(svc: rs.LocalServices, db: int) -> Any:
    import redis

    return redis.Redis(port=svc.ports.redis, db=db, decode_responses=True)


@pytest.mark.parametrize("pipeline, db", [("user", 1), ("ride", 2)])
def test_pipeline_on_flink_matches_reference(svc, tmp_path, pipeline, db):
    summary, events = run_on_flink(svc, pipeline, SPEC, f"{pipeline}-e2e", db, tmp_path)
    assert summary["flink.state_backend"] == "RocksDBStateBackend"
    assert summary["flink.checkpoints_completed"] >= 1
    assert summary["kafka.records_committed"] == len(events)
    assert summary["late_events"] == []
    want = (reference.user_features if pipeline == "user" else reference.ride_features)(events)
    assert redis_features(redis_client(svc, db)) == want


def test_ride_pipeline_with_parallelism_two(svc, tmp_path):
    spec = StreamSpec(events=1_500, users=40, rate_per_s=100, disorder_ms=3_000,
                      late_fraction=0.0, seed=5)
    summary, events = run_on_flink(svc, "ride", spec, "ride-p2", 3, tmp_path, parallelism=2)
    assert summary["flink.checkpoints_completed"] >= 1
    assert redis_features(redis_client(svc, 3)) == reference.ride_features(events)
