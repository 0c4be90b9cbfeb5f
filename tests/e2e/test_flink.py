"""End to end on the real runtime: Kafka -> ReadFromKafka -> Flink (RocksDB, checkpoints) -> Redis.

Starts Kafka, Redis, a Flink cluster, the expansion service and the job server
on free ports (``runners.services``), produces generated streams, runs both
pipeline modules exactly as a user would (``--runner=FlinkRunner``), both at
once on the one cluster, and compares every Redis feature with the plain-Python
reference.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines.generate import StreamSpec, generate, live_spec, write_jsonl
from pipelines.options import PRESET_ENGINE_SETTINGS
from pipelines.produce import SCHEMA_FILES, EventProducer, registry_schema_id, send_all
from runners import services as rs
from runners.pipeline_process import PipelineProcess
from runtime import metrics
from runtime.flink import (
    ACTIVE_STATES,
    BUNDLE_PRESETS,
    batch_service_args,
    cancel_job,
    flink_jobs,
    job_user_config,
    service_args,
)
from tests import reference
from tests.integration.test_pipelines import redis_features
from tests.training import assert_matches_reference, label_rows, run_module, write_csv
from transforms.decode import encode_confluent

# Out of order by up to 5 s, nothing later than the allowed lateness: the
# reference (all events count) is then exactly what the stream must give.
SPEC = StreamSpec(events=2_000, users=30, rate_per_s=100, disorder_ms=5_000,
                  late_fraction=0.0, seed=21)


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.LocalServices]:
    with rs.local_services(ports=rs.ServicePorts.free(),
                           state_dir=tmp_path_factory.mktemp("services")) as services:
        yield services


@dataclasses.dataclass
class FlinkRun:
    """A pipeline process on the cluster and the live stream it is to get."""

    pipeline: str
    topic: str
    spec: StreamSpec
    events: list[dict[str, Any]]
    process: PipelineProcess
    tmp: Path
    settle_ms: int  # the run stops once its watermark has reached this
    registry: bool = False  # schema ids from the services' schema registry

    def send(self, svc: rs.LocalServices) -> None:
        schema_file = SCHEMA_FILES[self.pipeline]
        schema_id = (registry_schema_id(svc.ports.registry_url, f"{self.topic}-value",
                                        schema_file) if self.registry else None)
        with EventProducer(svc.ports.bootstrap_servers, self.topic, schema_file,
                           schema_id) as producer:
            assert send_all(producer, self.events, self.spec.rate_per_s) == self.spec.events

    def complete(self, svc: rs.LocalServices) -> dict[str, Any]:
        """Waits for the job, sends the stream, and returns ``finish()``'s summary."""
        try:
            self.process.wait_running()
            self.send(svc)
            return self.finish()
        finally:
            self.process.kill()

    def finish(self) -> dict[str, Any]:
        summary = self.process.finish()  # raises with the process's stderr if it failed
        late = self.tmp / f"{self.topic}-late.jsonl"
        summary["late_events"] = late.read_text().splitlines() if late.exists() else []
        return summary


def start_on_flink(svc: rs.LocalServices, pipeline: str, spec: StreamSpec, topic: str,
                   redis_db: int, tmp: Path, parallelism: int = 1,
                   extra: tuple[str, ...] = (), registry: bool = False) -> FlinkRun:
    """Starts the pipeline process (as a user would), with a live stream to send
    (``registry``: its schema ids registered in, and resolved through, the registry).

    Live, because that is what the Kafka path is for: KafkaIO moves an idle
    partition's watermark to the wall clock, so months-old event times sent
    through Kafka would all be late (backfills go through --input instead).
    """
    svc.create_topic(topic, partitions=2)
    # Event times start a little ahead, when the job is expected to be running.
    events = generate(pipeline, dataclasses.replace(live_spec(spec),
                                                    start_ms=int(time.time() * 1000) + 30_000))
    # Stop once event time has passed the last event by the sliding window, the
    # out-of-orderness and a preset's timer grid: every value is then final
    # (amount_sum_60s back to 0).
    grid_ms = max((PRESET_ENGINE_SETTINGS[a.split("=", 1)[1]]["timer_grid_ms"]
                   for a in extra if a.startswith("--bundle_preset=")), default=0)
    settle_ms = max(e["eventTimestamp"] for e in events) + 75_000 + grid_ms
    process = PipelineProcess(svc.ports.flink_rest, pipeline, [
        *service_args(svc, parallelism), f"--topic={topic}", f"--max_records={spec.events}",
        "--run_timeout_s=600", f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/{redis_db}",
        f"--feature_log={tmp / f'{topic}.jsonl'}", f"--late_output={tmp / f'{topic}-late.jsonl'}",
        f"--stop_at_watermark_ms={settle_ms}",
        *([f"--schema_registry_url={svc.ports.registry_url}"] if registry else []),
        *extra], tmp, topic)
    return FlinkRun(pipeline, topic, spec, events, process, tmp, settle_ms, registry)


def redis_client(svc: rs.LocalServices, db: int) -> Any:
    import redis

    return redis.Redis(port=svc.ports.redis, db=db, decode_responses=True)


def active_jobs(svc: rs.LocalServices) -> list[dict[str, Any]]:
    return [j for j in flink_jobs(svc.ports.flink_rest) if j["state"] in ACTIVE_STATES]


def test_both_pipelines_at_once_on_one_cluster(svc, tmp_path):
    """Both pipelines launched together, as a user running both would, their schema ids
    from the schema registry: each process follows, stops and names its own job, and
    both match the reference."""
    dbs = {"user": 1, "ride": 2}
    # Registry credentials ride along (the local registry has no auth and ignores them):
    # they reach the registry client and neither the job's options nor any output.
    secret = f"registry-{time.time_ns()}"
    registry_config = json.dumps({"basic.auth.user.info": f"e2e:{secret}"})
    runs = {p: start_on_flink(svc, p, SPEC, f"{p}-e2e", db, tmp_path,
                              extra=(f"--job_name=e2e-{p}-features",
                                     f"--schema_registry_config={registry_config}"),
                              registry=True)
            for p, db in dbs.items()}
    try:
        jids = {p: run.process.wait_running() for p, run in runs.items()}
        senders = [threading.Thread(target=run.send, args=(svc,)) for run in runs.values()]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        summaries = {p: run.finish() for p, run in runs.items()}
    finally:
        for run in runs.values():
            run.process.kill()
    listed = {j["jid"]: j for j in flink_jobs(svc.ports.flink_rest)}
    assert jids["user"] != jids["ride"]
    for p, run in runs.items():
        summary = summaries[p]
        print(f"{p} on Flink, beside the other pipeline: {summary}")
        jid = summary["flink.job_id"]
        # The job the summary names is the one this process launched: by id, by
        # name in Flink's own job list, and by the topic in the job's options.
        assert jid == jids[p]
        assert summary["flink.job_name"] == f"e2e-{p}-features" == listed[jid]["name"]
        assert [j for j in listed.values() if j["name"] == f"e2e-{p}-features"] == [listed[jid]]
        options = job_user_config(svc.ports.flink_rest, jid)
        assert options["topic"] == run.topic
        assert "<redacted>" in str(options["schemaRegistryConfig"])
        assert secret not in json.dumps(options)
        # The process cancelled its job itself on the way out.
        assert run.process.state_at_exit == "CANCELED"
        assert summary["flink.state_backend"] == "RocksDBStateBackend"
        assert summary["flink.checkpoints_completed"] >= 1
        assert summary["kafka.records_committed"] == len(run.events)
        assert summary["late_events"] == []
        want = (reference.user_features(run.events) if p == "user"
                else reference.ride_features(run.events, watermark_ms=run.settle_ms))
        assert redis_features(redis_client(svc, dbs[p])) == want
    assert active_jobs(svc) == []
    outputs = [p for d in (tmp_path, svc.log_dir) for p in d.rglob("*") if p.is_file()]
    assert outputs and not [p for p in outputs if secret in p.read_text(errors="replace")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_launcher_cancels_its_job(svc, tmp_path, sig):
    """An open-ended stream (no --max_records) stopped by a signal: the process
    cancels its own job instead of leaving it restarting without its workers."""
    topic = f"signal-{sig.name.lower()}"
    svc.create_topic(topic, partitions=1)
    process = PipelineProcess(svc.ports.flink_rest, "user", [
        *service_args(svc), f"--topic={topic}",
        f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/4"], tmp_path, topic)
    try:
        jid = process.wait_running()
        # Signal once the process follows its job (it says so), not while it still looks.
        deadline = time.monotonic() + 120
        while f"Flink job {jid}" not in process.stdout.read_text():
            assert time.monotonic() < deadline and process.proc.poll() is None
            time.sleep(0.5)
        process.proc.send_signal(sig)
        try:
            process.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.proc.send_signal(signal.SIGUSR1)  # it prints its threads' stacks
            time.sleep(2)
            pytest.fail(f"the launcher still runs 120 s after {sig.name}; its stdout ends "
                        f"{process.stdout.read_text()[-500:]!r}; its stderr (stacks):\n"
                        f"{process.stderr.read_text()[-8000:]}")
        state = process.job_state()
    finally:
        process.kill()
    assert f"cancelled Flink job {jid} on the way out" in process.stdout.read_text()
    assert process.proc.returncode != 0
    assert state == "CANCELED", process.stderr.read_text()[-3000:]
    assert active_jobs(svc) == []


def test_ride_pipeline_with_parallelism_two(svc, tmp_path):
    spec = StreamSpec(events=1_500, users=40, rate_per_s=100, disorder_ms=3_000,
                      late_fraction=0.0, seed=5)
    run = start_on_flink(svc, "ride", spec, "ride-p2", 3, tmp_path, parallelism=2)
    summary = run.complete(svc)
    print(f"ride on Flink (parallelism 2): {summary}")
    assert summary["flink.checkpoints_completed"] >= 1
    assert redis_features(redis_client(svc, 3)) == reference.ride_features(
        run.events, watermark_ms=run.settle_ms)


def test_records_keyed_by_entity_are_decoded_in_the_keyed_stage(svc, tmp_path):
    """``--records_keyed_by_entity``: the topic's raw records go to the fused stage grouped
    by their key, and it decodes them. The features match the reference; a record with no
    key, one keyed by another user and an undecodable one are dead letters that say why,
    and the other user gets no hash."""
    spec = StreamSpec(events=1_200, users=25, rate_per_s=150, disorder_ms=3_000,
                      late_fraction=0.0, seed=9)
    dead = tmp_path / "keyed-dead.jsonl"
    run = start_on_flink(svc, "user", spec, "user-keyed", 4, tmp_path,
                         extra=("--records_keyed_by_entity", f"--dead_letter={dead}",
                                f"--max_records={spec.events + 3}"))
    try:
        run.process.wait_running()
        run.send(svc)
        ghost = encode_confluent({**run.events[-1], "userId": "ghost"}, SCHEMA_FILES["user"])
        with EventProducer(svc.ports.bootstrap_servers, run.topic,
                           SCHEMA_FILES["user"]) as producer:
            producer.send_raw(ghost, key=None)
            producer.send_raw(ghost, key=run.events[-1]["userId"])
            producer.send_raw(b"\x00\x00\x00\x00\x01not avro", key="ghost")
        summary = run.finish()
    finally:
        run.process.kill()
    print(f"user on Flink, decoded in the keyed stage: {summary}")
    assert summary["kafka.records_committed"] == spec.events + 3
    assert summary["late_events"] == []
    reasons = sorted(json.loads(line)["reason"] for line in dead.read_text().splitlines())
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("corrupt Avro body"), reasons
    assert reasons[1].startswith("record has no key"), reasons
    assert reasons[2].startswith("record key ") and "is not the event's userId 'ghost'" in (
        reasons[2]), reasons
    assert redis_features(redis_client(svc, 4)) == reference.user_features(run.events)


@pytest.mark.parametrize(("pipeline", "db"), [("user", 6), ("ride", 8)])
def test_the_catch_up_preset_sends_a_bundles_speculative_values_once(svc, tmp_path, pipeline,
                                                                     db):
    """``--bundle_preset=catch_up`` (5-s bundles, speculative updates per bundle, a
    10-s timer grid): the store gets what the reference says once the watermark is
    past the last event (the ride's 60-s sums back at 0 after their last expiry),
    and the feature log holds fewer speculative updates than there are events
    (every_element logs one or more per event)."""
    spec = StreamSpec(events=1_200, users=25, rate_per_s=150, disorder_ms=3_000,
                      late_fraction=0.0, seed=11)
    preset = BUNDLE_PRESETS["catch_up"]
    topic = f"{pipeline}-catch-up"
    run = start_on_flink(svc, pipeline, spec, topic, db, tmp_path, extra=(
        "--bundle_preset=catch_up", f"--max_bundle_time_mills={preset['max_bundle_time_ms']}",
        f"--max_bundle_size={preset['max_bundle_size']}"))
    summary = run.complete(svc)
    print(f"{pipeline} on Flink, catch_up preset: {summary}")
    assert summary["late_events"] == []
    want = (reference.user_features(run.events) if pipeline == "user" else
            reference.ride_features(run.events, watermark_ms=run.settle_ms))
    assert redis_features(redis_client(svc, db)) == want
    log = [json.loads(line) for line in (tmp_path / f"{topic}.jsonl").read_text(
        ).splitlines()]
    speculative = sum(not u["final"] for u in log)
    assert 0 < speculative < spec.events, (speculative, len(log))


def test_the_training_set_on_flink_batch_is_what_the_stream_served(svc, tmp_path):
    """The user pipeline on Flink over a live stream (each user's events in order,
    disorder between users within the watermark bound) logs what it served; the
    training set of the same events and labels, computed by Flink in batch mode,
    equals the point-in-time reference, and the skew against the log is 0."""
    spec = dataclasses.replace(SPEC, events=1_500, entity_order=True)
    run = start_on_flink(svc, "user", spec, "user-served", 5, tmp_path)
    summary = run.complete(svc)
    assert summary["late_events"] == []
    write_jsonl(str(tmp_path / "events.jsonl"), run.events)
    labels = label_rows(run.events, 300, seed=8, horizon_ms=60_000)
    write_csv(tmp_path / "labels.csv", labels, bad=False)
    built = run_module("pipelines.training_set", *batch_service_args(svc), "--pipeline=user",
                       f"--events={tmp_path / 'events.jsonl'}",
                       f"--labels={tmp_path / 'labels.csv'}",
                       f"--output={tmp_path / 'train.parquet'}")
    assert built["training_set.rows"] == 300
    assert_matches_reference("user", pq.read_table(tmp_path / "train.parquet"), labels,
                             run.events)
    skew = run_module("pipelines.skew", "--pipeline=user",
                      f"--feature_log={tmp_path / 'user-served.jsonl'}",
                      f"--labels={tmp_path / 'labels.csv'}",
                      f"--training_set={tmp_path / 'train.parquet'}", "--fail_on_skew")
    print(f"user on Flink against its training set: {skew}")
    assert skew["rows_compared"] == skew["rows_equal"] == 300


def test_a_detached_job_outlives_its_submitter_and_its_prometheus_counters_add_up(svc, tmp_path):
    """``--detached`` returns the job id and exits while the job runs on in the worker pools;
    Flink's Prometheus endpoints, scraped while it runs, show the pipeline's own counts:
    events decoded and dead letters as sent, per-feature updates (speculative / final) as
    in the job's feature log, and a freshness histogram with one entry per Redis write."""
    topic, name = "metrics-e2e", "e2e-metrics-detached"
    svc.create_topic(topic, partitions=2)
    spec = StreamSpec(events=600, users=12, rate_per_s=200, disorder_ms=2_000,
                      late_fraction=0.0, seed=5)
    events = generate("user", dataclasses.replace(live_spec(spec),
                                                  start_ms=int(time.time() * 1000)))
    hostile = [b"", b"\x00\x00\x00\x00\x01not avro", b'{"userId": 1}']
    log = tmp_path / "features.jsonl"
    submitted = subprocess.run(
        [sys.executable, "-m", "pipelines.user_features", *service_args(svc),
         "--detached", f"--job_name={name}", f"--topic={topic}",
         f"--redis_url=redis://127.0.0.1:{svc.ports.redis}/7", f"--feature_log={log}"],
        capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "Unparseable argument" not in submitted.stderr
    jid = json.loads(submitted.stdout.strip().splitlines()[-1])["flink.job_id"]
    urls = metrics.endpoints(svc.ports.prometheus_ports())
    try:
        # The submitter has exited; the job is still running on the cluster.
        assert {j["jid"]: j["state"] for j in flink_jobs(svc.ports.flink_rest)}[jid] == "RUNNING"
        with EventProducer(svc.ports.bootstrap_servers, topic, SCHEMA_FILES["user"]) as producer:
            send_all(producer, events)
            for raw in hostile:
                producer.send_raw(raw, key="hostile")

        def logged() -> collections.Counter[tuple[str, str]]:
            lines = log.read_text().splitlines() if log.exists() else []
            return collections.Counter(
                ("features", f"{u['feature']}_{'final' if u['final'] else 'speculative'}")
                for u in map(json.loads, lines))

        # Under load the per-feature counters have lagged the feature log by minutes.
        deadline = time.monotonic() + 420
        while True:
            counters = metrics.beam_counters(metrics.scrape(urls), name)
            per_feature = {k: v for k, v in counters.items() if k[0] == "features"}
            settled = (counters.get(("decode", "events_valid")) == len(events)
                       and counters.get(("decode", "dead_letters")) == len(hostile)
                       and per_feature and per_feature == dict(logged()))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(2)
        print(f"scraped for job {name}: {counters}")
        assert counters[("decode", "events_valid")] == len(events)
        assert counters[("decode", "dead_letters")] == len(hostile)
        assert per_feature == dict(logged())
        assert sum(per_feature.values()) == counters[("merge", "updates")]
        writes = counters[("redis_sink", "entity_writes")]
        assert 0 < writes <= counters[("merge", "updates")]
        assert counters[("redis_sink", "freshness_ms_count")] == writes
        buckets = [counters.get(("redis_sink", f"freshness_ms_le_{b}"), 0)
                   for b in (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000)]
        assert buckets == sorted(buckets) and buckets[-1] <= writes
        assert ("redis_sink", "guard_rejections") in counters  # exported, even at 0
        assert_dashboard_series_exist(metrics.scrape(urls))
    finally:
        cancel_job(svc.ports.flink_rest, jid)


def assert_dashboard_series_exist(samples: list[metrics.Sample]) -> None:
    """Every series deploy/grafana-dashboard.json queries is one the cluster exports (a
    regex selector matches at least one; late-event counters appear with the first late
    event, and this stream has none)."""
    import re

    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = {s.name for s in samples}
    for expr in exprs:
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
            if "_late_" not in pattern:
                assert any(re.fullmatch(pattern, n) for n in names), (pattern, expr)
        for name in re.findall(r"\b(flink_[A-Za-z0-9_]+)\{", expr):
            assert name in names, (name, expr)
