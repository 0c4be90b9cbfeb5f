"""``make run``: both feature pipelines on this machine, end to end.

Starts the local services (Kafka, Redis, a Flink cluster of two TaskManagers
with a Python worker pool beside each, RocksDB, Prometheus reporters, the
expansion service and the job server) unless they are up already, creates a
topic per pipeline and submits the user and the ride pipeline as detached
jobs (``--detached``: the submitting processes exit, the jobs run on the
cluster). It then produces a live synthetic stream into each topic (many
users, skew, out-of-order events; event time = now), follows progress from
the jobs' metrics on Flink's Prometheus endpoints, prints the features the
lookup client reads back (both pipelines write the same user hashes), the
measured event-to-Redis freshness and a summary of the scraped metrics,
writes a small training set from the events it produced
(``pipelines.training_set``, labels at the stream's end for three users)
beside what Redis served, cancels its jobs and stops what it started.
(Replays of past event times go through ``--input``: KafkaIO moves an idle
partition's watermark to the wall clock, so old events sent through Kafka
would arrive late.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.catalogue import PIPELINES
from pipelines.generate import StreamSpec, generate
from pipelines.produce import SCHEMA_FILES, EventProducer, registry_schema_id
from runners.freshness import FreshnessProbe
from runners.services import LocalServices
from runtime import metrics
from runtime.flink import ACTIVE_STATES, cancel_job, flink_jobs
from serving.lookup import FeatureClient

PIPELINE_NAMES = ("user", "ride")
COLUMNS = tuple(f.name for name in PIPELINE_NAMES for f in PIPELINES[name])
# A session feature moves with every event: its as_of is the user's newest event time.
SESSION_FEATURE = next(f.name for f in PIPELINES["user"] if f.window_kind == "session")


def format_value(value: Any) -> str:
    """A feature value for people: amounts to 2 decimals, maps as ``k:v`` pairs."""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in sorted(value.items())) or "-"
    return str(value)


def print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_table(client: FeatureClient, users: Sequence[str]) -> None:
    """One row per user: the typed features the model would get, and whether all are final."""
    rows = []
    for view in client.get_many(users):
        cells = [view.entity_id] + [format_value(view.values[f]) for f in COLUMNS]
        cells.append("yes" if all(view.final.get(f) for f in COLUMNS if f in view.final)
                     else "no")
        rows.append(cells)
    print_rows(("user", *COLUMNS, "final"), rows)


WARM_UP_USER = "warm-up"


def warm_up(producer: EventProducer, client: Any, timeout_s: float = 180.0,
            event: dict[str, Any] | None = None) -> None:
    """Sends one event and waits until it is in Redis: the job's Python workers are
    then up, so the freshness figures measure the pipeline, not its start-up.

    ``event``: the one to send (default: a user pipeline event of ``WARM_UP_USER``);
    its ``userId`` names the hash waited for.
    """
    if event is None:
        event = {"userId": WARM_UP_USER, "eventType": "view", "eventValue": 0.0,
                 "eventTimestamp": int(time.time() * 1000)}
    producer.send(event)
    producer.flush()
    deadline = time.monotonic() + timeout_s
    while not client.exists(f"features:user:{event['userId']}"):
        if time.monotonic() > deadline:
            raise TimeoutError("the job wrote nothing to Redis in time")
        time.sleep(0.1)


def warm_up_event(pipeline: str) -> dict[str, Any]:
    """One event of ``pipeline`` for the user ``warm-up-<pipeline>``, at the wall clock."""
    event = dict(generate(pipeline, StreamSpec(events=1, users=1))[0])
    event.update(userId=f"{WARM_UP_USER}-{pipeline}", eventTimestamp=int(time.time() * 1000))
    return event


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events to send per pipeline")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="events/s sent to each topic")
    parser.add_argument("--users", type=int, default=8, help="rows in the table")
    parser.add_argument("--checkpoint_ms", type=int, default=10_000)
    args = parser.parse_args(argv)

    services = LocalServices()
    already_up = {name for name, h in services.recorded().items() if h.alive()}
    print("starting local services (Kafka, Redis, schema registry, Flink: 2 TaskManagers + "
          "Python worker pools, RocksDB, Prometheus; expansion, job server)...", flush=True)
    services.up()
    try:
        run_jobs(services, args)
    finally:
        if not already_up:
            print("stopping the services this run started")
            services.down()


def submit_detached(services: LocalServices, pipeline: str, topic: str, job_name: str,
                    checkpoint_ms: int) -> subprocess.Popen[str]:
    """``python -m pipelines.<pipeline>_features --runner=FlinkRunner ... --detached``."""
    ports = services.ports
    cmd = [sys.executable, "-m", f"pipelines.{pipeline}_features", "--runner=FlinkRunner",
           "--detached", f"--job_name={job_name}", f"--topic={topic}",
           f"--bootstrap_servers={ports.bootstrap_servers}",
           f"--flink_master={ports.flink_master}", f"--job_endpoint={ports.job_endpoint}",
           f"--environment_config={ports.worker_pool_address}",
           f"--expansion_service={ports.expansion_address}",
           f"--schema_registry_url={ports.registry_url}",
           f"--redis_url=redis://127.0.0.1:{ports.redis}/0",
           f"--state_backend_storage_path={services.checkpoint_dir.resolve().as_uri()}",
           f"--checkpointing_interval={checkpoint_ms}", "--min_pause_between_checkpoints=2000",
           f"--consumer_group={job_name}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_id_of(proc: subprocess.Popen[str], what: str, timeout_s: float = 300.0) -> str:
    """The Flink job id a detached submission printed (its last line, JSON)."""
    out, err = proc.communicate(timeout=timeout_s)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"submitting {what} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return str(json.loads(lines[-1])["flink.job_id"])


def run_jobs(services: LocalServices, args: Any) -> None:
    ports = services.ports
    stamp = int(time.time())
    topics = {p: f"{p}-events-{stamp}" for p in PIPELINE_NAMES}
    names = {p: f"make-run-{p}-{stamp}" for p in PIPELINE_NAMES}
    for topic in topics.values():
        services.create_topic(topic, partitions=2)
    print("submitting both pipelines detached (python -m pipelines.<name>_features "
          "--runner=FlinkRunner --detached ...)", flush=True)
    procs = {p: submit_detached(services, p, topics[p], names[p], args.checkpoint_ms)
             for p in PIPELINE_NAMES}
    jids: dict[str, str] = {}
    try:
        for p in PIPELINE_NAMES:
            jids[p] = job_id_of(procs[p], f"the {p} pipeline")
            print(f"  {p}: Flink job {jids[p]} ({names[p]}) RUNNING; its submitter has exited",
                  flush=True)
        produce_and_report(services, args, topics, names)
    finally:
        for p in PIPELINE_NAMES:
            if procs[p].poll() is None:
                procs[p].kill()
        cancel_ours(ports.flink_rest, set(names.values()))


def cancel_ours(rest_port: int, job_names: set[str]) -> None:
    for job in flink_jobs(rest_port):
        if job["name"] in job_names and job["state"] in ACTIVE_STATES:
            cancel_job(rest_port, job["jid"])
            print(f"cancelled Flink job {job['jid']} ({job['name']})")


class Progress:
    """A one-line progress bar: events sent and events the jobs decoded (from Prometheus)."""

    def __init__(self, total: int, processed: Callable[[], int]) -> None:
        self.total = total
        self.sent = 0
        self._processed = processed
        self.done = 0
        self._live = sys.stdout.isatty()  # redraw in place; in a log, a line now and then
        self._last_line = 0.0

    def show(self, final: bool = False) -> None:
        self.done = self._processed()
        if not (self._live or final or time.monotonic() - self._last_line >= 10):
            return
        self._last_line = time.monotonic()
        width = 30
        filled = int(width * min(self.done, self.total) / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        line = f"  [{bar}] sent {self.sent:>6}/{self.total}  processed {self.done:>6}/{self.total}"
        if self._live:
            print(f"\r{line}", end="\n" if final else "", flush=True)
        else:
            print(line, flush=True)


def produce_and_report(services: LocalServices, args: Any, topics: dict[str, str],
                       names: dict[str, str]) -> None:
    """Sends the streams while the jobs run, then prints features, freshness and metrics."""
    import redis

    ports = services.ports
    client = redis.Redis(port=ports.redis)
    # The producers register their schemas under <topic>-value and send the registry's ids.
    ids = {p: registry_schema_id(ports.registry_url, f"{topics[p]}-value", SCHEMA_FILES[p])
           for p in PIPELINE_NAMES}
    print("schemas registered: " + ", ".join(f"{topics[p]}-value id {ids[p]}"
                                             for p in PIPELINE_NAMES), flush=True)
    producers = {p: EventProducer(ports.bootstrap_servers, topics[p], SCHEMA_FILES[p], ids[p])
                 for p in PIPELINE_NAMES}
    for p in PIPELINE_NAMES:
        warm_up(producers[p], client, event=warm_up_event(p))
    urls = metrics.endpoints(ports.prometheus_ports())

    def decoded() -> int:
        counters = metrics.beam_counters(metrics.scrape(urls))
        return counters.get(("decode", "events_valid"), 0) - len(PIPELINE_NAMES)

    streams = {p: generate(p, StreamSpec(events=args.events, users=60, rate_per_s=args.rate,
                                         disorder_ms=3_000, late_fraction=0.0,
                                         start_ms=int(time.time() * 1000)))
               for p in PIPELINE_NAMES}
    total = sum(len(s) for s in streams.values())
    print(f"producing {args.events} events per pipeline at {args.rate:.0f} events/s each; "
          f"progress from {urls[0]} (and each TaskManager's)", flush=True)
    progress = Progress(total, decoded)
    probe = FreshnessProbe(client, feature=SESSION_FEATURE).start()
    started = last_shown = time.monotonic()
    for i in range(args.events):
        for p in PIPELINE_NAMES:
            if i < len(streams[p]):
                event = streams[p][i]
                producers[p].send(event)
                progress.sent += 1
                if p == "user":
                    probe.sent(event["userId"], event["eventTimestamp"], time.time())
        if time.monotonic() - last_shown > 1.0:
            progress.show()
            last_shown = time.monotonic()
        ahead = (i + 1) / args.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    for producer in producers.values():
        producer.flush()
        producer.close()
    deadline = time.monotonic() + 300
    while progress.done < total and time.monotonic() < deadline:
        time.sleep(1.0)
        progress.show()
    progress.show(final=True)
    time.sleep(2.0)  # the sink's last batch
    probe.stop()

    users = sorted(k.decode().split(":", 2)[2] for k in client.scan_iter("features:user:*"))
    users = [u for u in users if not u.startswith(WARM_UP_USER)]
    print(f"\n{len(users)} users in Redis; the first {min(args.users, len(users))}:")
    print_table(FeatureClient(client), users[: args.users])
    fresh = probe.summary()
    print(f"\nevent-to-Redis freshness (producer send -> readable in Redis), "
          f"{fresh['events']} events: p50 {fresh['p50_ms']:.1f} ms, "
          f"p99 {fresh['p99_ms']:.1f} ms, max {fresh['max_ms']:.1f} ms")
    print_metrics_summary(urls, names)
    client.close()
    print_training_rows(FeatureClient(redis.Redis(port=ports.redis)), streams["user"],
                        users[:3])


def print_metrics_summary(urls: Sequence[str], names: dict[str, str]) -> None:
    """One screen of the jobs' Beam metrics, read from Flink's Prometheus endpoints."""
    samples = metrics.scrape(urls)
    print(f"\nmetrics (Prometheus: {', '.join(urls)}):")
    rows = []
    for p in PIPELINE_NAMES:
        c = metrics.beam_counters(samples, names[p])
        fresh_p99 = metrics.freshness_quantile(c, 0.99)
        per_feature = [(f.name, c.get(("features", f"{f.name}_speculative"), 0),
                        c.get(("features", f"{f.name}_final"), 0)) for f in PIPELINES[p]]
        rows.append((p, str(c.get(("decode", "events_valid"), 0)),
                     str(c.get(("decode", "dead_letters"), 0)),
                     str(sum(v for (ns, _), v in c.items() if ns == "late")),
                     str(c.get(("redis_sink", "entity_writes"), 0)),
                     str(c.get(("redis_sink", "guard_rejections"), 0)),
                     str(c.get(("redis_sink", "retries"), 0)),
                     "-" if fresh_p99 is None else f"<= {fresh_p99:.0f}"))
        for name, spec, final in per_feature:
            rows.append((f"  {name}", "", "", "", f"{spec} spec. / {final} final", "", "", ""))
    print_rows(("pipeline / feature", "events", "dead letters", "late", "Redis writes",
                "guard rejections", "Redis retries", "as_of->write p99 ms"), rows)


def print_training_rows(client: FeatureClient, events: list[dict[str, Any]],
                        users: Sequence[str]) -> None:
    """The offline half: a training set of the same events, labels at the stream's
    end, beside what Redis serves for those users."""
    import contextlib
    import csv
    import io
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from pipelines import training_set
    from pipelines.generate import write_jsonl

    at_ms = max(e["eventTimestamp"] for e in events)
    with tempfile.TemporaryDirectory(prefix="rtf-training-") as tmp:
        events_path, labels_path = Path(tmp, "events.jsonl"), Path(tmp, "labels.csv")
        write_jsonl(str(events_path), events)
        with labels_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["entity_id", "timestamp"])
            writer.writerows([u, at_ms] for u in users)
        print("\ntraining set of the same events (python -m pipelines.training_set), "
              "labels at the last event time:")
        with contextlib.redirect_stdout(io.StringIO()):  # its JSON summary
            training_set.run([f"--events={events_path}", f"--labels={labels_path}",
                              "--pipeline=user", f"--output={tmp}/train.parquet"])
        rows = pq.read_table(f"{tmp}/train.parquet").to_pylist()
    table = []
    for view, row in zip(client.get_many(users), rows, strict=True):
        for feature in (f.name for f in PIPELINES["user"]):
            served, trained = view.values[feature], row[feature]
            table.append((view.entity_id, feature, format_value(served), format_value(trained),
                          "yes" if served == trained else "NO"))
    print_rows(("user", "feature", "Redis served", "training set", "equal"), table)


if __name__ == "__main__":
    main()
