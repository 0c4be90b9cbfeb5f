"""Section 7: the user pipeline beside a Flink SQL peer and a plain Python consumer.

Three ways to compute the user features, on the same cluster and events in
one run: the product's user pipeline (the fused engine, ``catch_up`` bundles,
256 MB state cache with the ``estimate`` sizer: section 6's best variant);
``benchmarks/flink_sql_peer.py``, the same features as one Flink SQL job
(PyFlink Table API, ``TUMBLE``/``SESSION`` group windows, a Top-1 for the
last purchase, Kafka SQL connector, upsert-kafka sink); and
``benchmarks/python_consumer.py``, one Python process running the product's
fused feature code on in-memory state, writing to Redis through the
product's guarded writer, with no Beam, no Flink and no checkpoints: the
ceiling of what Python does with this code on this machine.

First the values: 3,000 events of 50 users (event times two days old, all
on time) go to a JSON topic (for SQL) and an Avro topic (for the consumer);
the pipeline replays the same events from a JSON-lines file on the
DirectRunner (its bounded replay: the watermark ends at +inf). The peer
reads its topic to the end offsets (``--bounded``) and collects its
changelog; every (user, feature) of the pipeline's Redis is compared with
the peer's and the consumer's (floats to 1e-9 relative: SQL's ``SUM`` adds
in arrival order, the pipeline exactly).

Then the rate: the same backlog (Zipf skew 1.1 over 1,000 users, event
times ending now, up to 2 s out of order, nothing late) in both topics, 2
partitions each; each job starts with the whole backlog waiting, one at a
time. The pipeline's and the SQL job's rate is records into their step that
takes every event (the fused step; the SQL job's session-window aggregate,
the vertex reading the most records), sampled every second from Flink's
REST API, as the least-squares slope from ``WARM_UP_S`` after the step took
5% of the backlog for ``MEASURE_S`` (or up to 95% of the backlog, whichever
comes first). The consumer's rate is its own count over its own clock, from
its first record to its last.

Last, freshness: both jobs run side by side on the cluster (one slot each)
while a live stream (event time = now, ``LIVE_RATE`` events/s over 1,000
users) goes to both topics, the same event to each at the same moment. The
feature both update on every purchase is ``last_purchase_value``: for each
purchase that is its user's newest, the time from the send to the value
being readable, in the pipeline's Redis (polled every 5 ms) and in the peer's
upsert-kafka topic (a consumer reading it as it is written). The pipeline
runs as a live stream would (``low_latency`` bundles); the first
``LIVE_WARM_UP_S`` of the stream are not counted. The windowed features
have no such figure for the peer: Flink SQL writes a window's row once, when
its watermark (70 s behind) passes the window's end, where the pipeline
updates it on every event.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks import engine
from benchmarks.env import ROOT
from benchmarks.flink_job import FeatureJob, flink_services
from benchmarks.measure import slope
from pipelines.generate import StreamSpec, generate, write_jsonl
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners.freshness import FreshnessProbe
from runners.services import cache_dir
from runtime.flink import _rest

NAME = "peers"
TITLE = "Peers: the user features as a Flink SQL job and as a plain Python consumer"
VARIANT = "fused, catch_up, state cache (estimate)"
EVENTS = {"full": 1_000_000, "quick": 100_000}
WARM_UP_S, MEASURE_S = engine.WARM_UP_S, engine.MEASURE_S  # the same rule as section 6
CHECK = StreamSpec(events=3_000, users=50, rate_per_s=200, skew=1.1, disorder_ms=2_000,
                   late_fraction=0.0, seed=5, start_ms=0)
REL_TOL = 1e-9
LIVE_RATE = 200  # events/s: what the pipeline keeps up with at low_latency (section 3)
LIVE_WARM_UP_S = {"full": 40, "quick": 10}
LIVE_MEASURE_S = {"full": 60, "quick": 20}
LIVE_FEATURE = "last_purchase_value"


def _flink_python() -> Path:
    return cache_dir() / "flink-venv" / "bin" / "python"


def _peer(svc: Any, topic: str, *flags: str, timeout_s: float = 300) -> str:
    """Runs the SQL peer script with the Flink venv's Python; returns its stdout."""
    done = subprocess.run(
        [str(_flink_python()), str(ROOT / "benchmarks" / "flink_sql_peer.py"),
         f"--rest_port={svc.ports.flink_rest}",
         f"--bootstrap_servers={svc.ports.bootstrap_servers}", f"--topic={topic}", *flags],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"flink_sql_peer.py failed: {done.stderr[-3000:]}")
    return done.stdout


def _fill(svc: Any, events: list[dict[str, Any]], avro_topic: str, json_topic: str) -> None:
    """The same events to an Avro topic (Confluent wire format) and a JSON one."""
    from confluent_kafka import Producer

    for topic in (avro_topic, json_topic):
        svc.create_topic(topic, partitions=2)
    avro = EventProducer(svc.ports.bootstrap_servers, avro_topic, SCHEMA_FILES["user"])
    plain = Producer({"bootstrap.servers": svc.ports.bootstrap_servers, "linger.ms": 5})
    for event in events:
        avro.send(event)
        plain.produce(json_topic, json.dumps(event).encode(), key=event["userId"].encode(),
                      timestamp=event["eventTimestamp"])
        plain.poll(0)
    avro.close()
    plain.flush()
    plain.close()


def _redis_values(url: str) -> dict[str, dict[str, float]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    out = {}
    for key in client.scan_iter("features:user:*"):
        out[key.split(":", 2)[2]] = {f: float(v) for f, v in client.hgetall(key).items()
                                     if ":" not in f}
    client.close()
    return out


def _compare(ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]
             ) -> dict[str, Any]:
    """Every (user, feature) of ours against theirs: counts and each difference."""
    compared, differing = 0, []
    for user, feats in sorted(ours.items()):
        for feature, value in sorted(feats.items()):
            compared += 1
            other = theirs.get(user, {}).get(feature)
            if other is None or not math.isclose(value, other, rel_tol=REL_TOL):
                differing.append({"user": user, "feature": feature, "ours": value,
                                  "theirs": other})
    extra = sorted(f"{u}/{f}" for u, fs in theirs.items() for f in fs
                   if f not in ours.get(u, {}))
    return {"compared": compared, "equal": compared - len(differing),
            "differing": differing, "only_theirs": extra}


def check_values(svc: Any, workdir: Path) -> dict[str, Any]:
    """The pipeline (DirectRunner replay), the SQL peer and the consumer on one small stream."""
    events = generate("user", StreamSpec(**{**CHECK.__dict__,
                                            "start_ms": int(time.time() * 1000) - 2 * 86_400_000}))
    path = workdir / "check.jsonl"
    write_jsonl(str(path), events)
    _fill(svc, events, "peers-check-avro", "peers-check-json")
    ours_url = f"redis://127.0.0.1:{svc.ports.redis}/10"
    done = subprocess.run([sys.executable, "-m", "pipelines.user_features", f"--input={path}",
                           f"--redis_url={ours_url}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the user pipeline failed: {done.stderr[-3000:]}")
    ours = _redis_values(ours_url)
    sql = {}
    for line in _peer(svc, "peers-check-json", "--collect", "--bounded",
                      "--job_name=peers-check").splitlines():
        row = json.loads(line)
        user = row.pop("userId")
        sql[user] = {f: float(v) for f, v in row.items()}
    consumer_url = f"redis://127.0.0.1:{svc.ports.redis}/11"
    _consumer(svc, "peers-check-avro", consumer_url, len(events), idle_s=5)
    return {"events": len(events), "users": CHECK.users,
            "flink_sql": _compare(ours, sql),
            "python_consumer": _compare(ours, _redis_values(consumer_url))}


def _consumer(svc: Any, topic: str, redis_url: str, events: int, idle_s: float = 10
              ) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.python_consumer",
                           "--pipeline=user", f"--bootstrap_servers={svc.ports.bootstrap_servers}",
                           f"--topic={topic}", f"--redis_url={redis_url}",
                           f"--max_records={events}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"python_consumer failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _MostRead:
    """Samples, every second, the most records any vertex of a job has read."""

    def __init__(self, rest_port: int, jid: str) -> None:
        self.records: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._rest_port, self._jid = rest_port, jid
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                job = _rest(self._rest_port, f"/jobs/{self._jid}")
            except OSError:
                continue
            self.records.append((time.time(), max(int(v["metrics"]["read-records"])
                                                  for v in job["vertices"])))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _sql_rate(svc: Any, topic: str, events: int, mode: str) -> dict[str, Any]:
    svc.create_topic("peers-sql-out", partitions=2)
    out = _peer(svc, topic, "--output_topic=peers-sql-out", "--job_name=peers-sql")
    jid = json.loads(out.strip().splitlines()[-1])["job_id"]
    sampler = _MostRead(svc.ports.flink_rest, jid)
    deadline = time.monotonic() + 900
    t0 = None
    try:
        while True:
            time.sleep(1)
            now, n = sampler.records[-1] if sampler.records else (time.time(), 0)
            if t0 is None and n >= 0.05 * events:
                t0 = now + WARM_UP_S[mode]
            if n >= 0.95 * events or (t0 is not None and now >= t0 + MEASURE_S[mode]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SQL peer read {n}/{events} in 900 s")
    finally:
        sampler.stop()
        _rest(svc.ports.flink_rest, f"/jobs/{jid}?mode=cancel", method="PATCH")
    start = t0 if t0 is not None and t0 < sampler.records[-1][0] else next(
        t for t, n in sampler.records if n >= 0.05 * events)
    window = [(t, n) for t, n in sampler.records if t >= start]
    rate = slope(window)
    return {"events": events, "events_per_s": round(rate) if rate else None,
            "seconds_measured": round(window[-1][0] - window[0][0], 1),
            "events_measured": window[-1][1] - window[0][1], "job_id": jid}


class _TopicProbe(FreshnessProbe):
    """Freshness of a feature in the SQL peer's upsert-kafka topic: a row is readable
    when a consumer reading the topic as it is written gets it."""

    def __init__(self, bootstrap: str, topic: str, feature: str) -> None:
        from confluent_kafka import Consumer

        super().__init__(None, feature)
        self._feature = feature
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{topic}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._consumer.subscribe([topic])

    def _loop(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error() or msg.value() is None:
                continue
            now = time.time()
            row = json.loads(msg.value())
            if row.get("feature") == self._feature:
                self.readable(row["userId"], int(row["as_of"]), now)

    def stop(self) -> None:
        super().stop()
        self._consumer.close()


def live_freshness(svc: Any, workdir: Path, mode: str) -> dict[str, Any]:
    """The pipeline and the SQL peer on one live stream: ``LIVE_FEATURE`` freshness."""
    from confluent_kafka import Producer

    ours = FeatureJob(svc, "user", 1, "peers-live-avro", workdir, redis_db=13,
                      bundles="low_latency")
    svc.create_topic("peers-live-json", partitions=2)
    svc.create_topic("peers-live-out", partitions=2)
    plain = Producer({"bootstrap.servers": svc.ports.bootstrap_servers, "linger.ms": 0})
    out = _peer(svc, "peers-live-json", "--output_topic=peers-live-out",
                "--job_name=peers-live-sql")
    sql_jid = json.loads(out.strip().splitlines()[-1])["job_id"]
    probes: dict[str, FreshnessProbe] = {}
    try:
        ours.start()
        probes = {"pipeline": FreshnessProbe(ours.redis, LIVE_FEATURE).start(),
                  "flink_sql": _TopicProbe(svc.ports.bootstrap_servers, "peers-live-out",
                                           LIVE_FEATURE).start()}
        seconds = LIVE_WARM_UP_S[mode] + LIVE_MEASURE_S[mode]
        spec = StreamSpec(events=LIVE_RATE * seconds, users=1_000, rate_per_s=LIVE_RATE,
                          skew=1.1, disorder_ms=0, late_fraction=0.0, seed=23,
                          start_ms=int(time.time() * 1000))
        assert ours.producer is not None
        t0 = time.time()
        for n, event in enumerate(generate("user", spec)):
            due = t0 + n / LIVE_RATE
            time.sleep(max(0.0, due - time.time()))
            event = {**event, "eventTimestamp": int(time.time() * 1000)}
            ours.producer.send(event)
            plain.produce("peers-live-json", json.dumps(event).encode(),
                          key=event["userId"].encode())
            plain.poll(0)
            sent = time.time()
            if event["eventType"] == "purchase" and sent - t0 >= LIVE_WARM_UP_S[mode]:
                for probe in probes.values():
                    probe.sent(event["userId"], event["eventTimestamp"], sent)
        ours.producer.flush()
        plain.flush()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(p.waiting for p in probes.values()):
            time.sleep(0.2)
    finally:
        for probe in probes.values():
            probe.stop()
        _rest(svc.ports.flink_rest, f"/jobs/{sql_jid}?mode=cancel", method="PATCH")
        ours.stop()
    return {"rate_per_s": LIVE_RATE, "feature": LIVE_FEATURE,
            "warm_up_s": LIVE_WARM_UP_S[mode], "measure_s": LIVE_MEASURE_S[mode],
            **{name: {**probe.summary(), "unseen": probe.waiting}
               for name, probe in probes.items()}}


def run(mode: str) -> dict[str, Any]:
    n = EVENTS[mode]
    with flink_services() as svc, tempfile.TemporaryDirectory() as tmp:
        check = check_values(svc, Path(tmp))
        for peer in ("flink_sql", "python_consumer"):
            c = check[peer]
            print(f"  values, pipeline vs {peer}: {c['equal']}/{c['compared']} equal",
                  flush=True)
        spec = StreamSpec(events=n, users=1_000, rate_per_s=2_000, skew=1.1,
                          disorder_ms=2_000, late_fraction=0.0, seed=17,
                          start_ms=int(time.time() * 1000) - n * 1000 // 2_000)
        _fill(svc, generate("user", spec), "peers-avro", "peers-json")
        ours = engine._catch_up(svc, "user", VARIANT, "peers-avro", n, Path(tmp), mode)
        print(f"  pipeline: {ours['events_per_s']} events/s", flush=True)
        sql = _sql_rate(svc, "peers-json", n, mode)
        print(f"  Flink SQL: {sql['events_per_s']} events/s", flush=True)
        consumer = _consumer(svc, "peers-avro", f"redis://127.0.0.1:{svc.ports.redis}/12", n)
        print(f"  Python consumer: {consumer['events_per_s']} events/s", flush=True)
        live = live_freshness(svc, Path(tmp), mode)
        print("  freshness of " + LIVE_FEATURE + ": " + "; ".join(
            f"{k} p50 {live[k]['p50_ms']} ms, p99 {live[k]['p99_ms']} ms"
            for k in ("pipeline", "flink_sql")), flush=True)
    base = ours["events_per_s"] or 0
    return {"params": {"events": n, "users": 1_000, "variant": VARIANT,
                       "warm_up_s": WARM_UP_S[mode], "measure_s": MEASURE_S[mode]},
            "values": check,
            "rates": {"pipeline": ours, "flink_sql": sql, "python_consumer": consumer},
            "freshness": live,
            "over_pipeline": {k: round(v["events_per_s"] / base, 2) if base and
                              v["events_per_s"] else None
                              for k, v in (("flink_sql", sql), ("python_consumer", consumer))}}


def headline(data: dict[str, Any]) -> dict[str, float]:
    return {f"{k} / pipeline": v for k, v in data["over_pipeline"].items() if v is not None}


def print_summary(data: dict[str, Any]) -> None:
    rates = data["rates"]
    print("  events/s: " + "; ".join(f"{k} {v['events_per_s']}" for k, v in rates.items()))
    for peer in ("flink_sql", "python_consumer"):
        c = data["values"][peer]
        print(f"  values vs {peer}: {c['equal']}/{c['compared']} equal, "
              f"{len(c['differing'])} differing, {len(c['only_theirs'])} only theirs")
