"""``make run``: the main job on this machine, end to end.

Starts the local services (Kafka, Redis, Flink with RocksDB, the expansion
service and the job server) unless they are up already, creates a topic,
runs the user pipeline on the FlinkRunner with RocksDB and checkpoints,
produces a live synthetic stream (many users, skew, out-of-order events; event
time = now) into Kafka while the job runs, waits until every record is
processed and checkpointed, then prints a table of features read back through
the lookup client and the measured event-to-Redis freshness, writes a small
training set from the events it produced (``pipelines.training_set``, labels
at the stream's end for three users) and prints it beside what Redis served,
and stops what it started. (Replays of past event times go through ``--input``: KafkaIO moves
an idle partition's watermark to the wall clock, so old events sent through
Kafka would arrive late.)
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from typing import Any

from pipelines import user_features
from pipelines.catalogue import PIPELINES
from pipelines.generate import StreamSpec, generate
from pipelines.produce import SCHEMA_FILES, EventProducer
from runners.flink import LaunchedJob, new_launch_id
from runners.freshness import FreshnessProbe
from runners.services import LocalServices
from serving.lookup import FeatureClient

COLUMNS = tuple(f.name for f in PIPELINES["user"])
# A session feature moves with every event: its as_of is the user's newest event time.
SESSION_FEATURE = next(f.name for f in PIPELINES["user"] if f.window_kind == "session")


def print_table(client: FeatureClient, users: Sequence[str]) -> None:
    """One row per user: the typed features the model would get, with their age."""
    header = ("user", *COLUMNS, "final", "session as_of (UTC)")
    rows = []
    for view in client.get_many(users):
        cells = [view.entity_id] + [str(view.values[f]) for f in COLUMNS]
        cells.append("yes" if all(view.final.get(f) for f in COLUMNS if f in view.final)
                     else "no")
        newest = view.as_of_ms.get(SESSION_FEATURE)
        cells.append("-" if newest is None else time.strftime(
            "%H:%M:%S", time.gmtime(newest / 1000)) + f".{newest % 1000:03d}")
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events to send")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s sent to Kafka")
    parser.add_argument("--users", type=int, default=8, help="rows in the table")
    parser.add_argument("--checkpoint_ms", type=int, default=10_000)
    args = parser.parse_args(argv)

    services = LocalServices()
    already_up = {name for name, h in services.recorded().items() if h.alive()}
    print("starting local services (Kafka, Redis, Flink + RocksDB, expansion, job server)...")
    services.up()
    try:
        run_job(services, args)
    finally:
        if not already_up:
            print("stopping the services this run started")
            services.down()


def run_job(services: LocalServices, args: Any) -> None:
    ports = services.ports
    topic = f"user-events-{int(time.time())}"
    services.create_topic(topic, partitions=2)
    # Event times start when the job is expected to be up, and advance at the send rate.
    spec = StreamSpec(events=args.events, users=60, rate_per_s=args.rate, disorder_ms=3_000,
                      late_fraction=0.0, start_ms=int(time.time() * 1000) + 20_000)
    events = generate("user", spec)
    print(f"topic {topic}: {len(events)} events of {spec.users} users to send")

    # The job is this run's by the launch id stamped on it, whatever else the cluster runs.
    launch_id = new_launch_id()
    job_name = f"make-run-{topic}"
    launched = LaunchedJob(ports.flink_rest, launch_id, job_name)
    job_args = [
        f"--launch_id={launch_id}", f"--job_name={job_name}", "--runner=FlinkRunner",
        f"--topic={topic}", f"--max_records={len(events) + 1}",
        f"--bootstrap_servers={ports.bootstrap_servers}", f"--flink_master={ports.flink_master}",
        f"--job_endpoint={ports.job_endpoint}", f"--expansion_service={ports.expansion_address}",
        f"--redis_url=redis://127.0.0.1:{ports.redis}/0",
        f"--state_backend_storage_path={services.checkpoint_dir.resolve().as_uri()}",
        f"--checkpointing_interval={args.checkpoint_ms}", "--min_pause_between_checkpoints=2000",
        f"--consumer_group=make-run-{topic}"]
    job = threading.Thread(target=user_features.main, args=(job_args,), daemon=True)
    job.start()
    # The pipeline runs in a thread here, where it cannot catch signals: Ctrl-C and
    # SIGTERM reach this thread, which cancels the job on its way out.
    with launched:
        jid = launched.wait_running(alive=job.is_alive)
        print(f"Flink job {jid} ({job_name}) RUNNING (RocksDB, checkpoints every "
              f"{args.checkpoint_ms / 1000:.0f} s); producing at {args.rate:.0f} events/s")
        produce_and_report(ports, args, topic, events, job)


def produce_and_report(ports: Any, args: Any, topic: str, events: list[dict[str, Any]],
                       job: threading.Thread) -> None:
    """Sends the stream while the job runs, then prints features and freshness."""
    import redis

    client = redis.Redis(port=ports.redis)
    producer = EventProducer(ports.bootstrap_servers, topic, SCHEMA_FILES["user"])
    warm_up(producer, client)
    probe = FreshnessProbe(client, feature=SESSION_FEATURE).start()
    started = time.monotonic()
    for i, event in enumerate(events):
        producer.send(event)
        probe.sent(event["userId"], event["eventTimestamp"], time.time())
        ahead = (i + 1) / args.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    job.join()
    probe.stop()

    users = sorted(k.decode().split(":", 2)[2] for k in client.scan_iter("features:user:*"))
    users = [u for u in users if u != WARM_UP_USER]
    print(f"\n{len(users)} users in Redis; the first {min(args.users, len(users))}:")
    print_table(FeatureClient(client), users[: args.users])
    fresh = probe.summary()
    print(f"\nevent-to-Redis freshness (producer send -> readable in Redis), "
          f"{fresh['events']} events: p50 {fresh['p50_ms']} ms, p99 {fresh['p99_ms']} ms, "
          f"max {fresh['max_ms']} ms")
    print_training_rows(FeatureClient(client), events, users[:3])


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
    table = [("user", "feature", "Redis served", "training set", "equal")]
    for view, row in zip(client.get_many(users), rows, strict=True):
        for feature in COLUMNS:
            served, trained = view.values[feature], row[feature]
            table.append((view.entity_id, feature, str(served), str(trained),
                          "yes" if served == trained else "NO"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for cells in table:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
