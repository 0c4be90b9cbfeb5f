"""The user features as a Flink SQL job: the peer the benchmarks compare the pipeline with.

    <flink-venv>/bin/python benchmarks/flink_sql_peer.py --rest_port=8081 \\
        --bootstrap_servers=localhost:9092 --topic=user-events-json \\
        (--output_topic=peer-features | --collect) [--bounded]

Runs with the Flink venv's Python (PyFlink 1.19's Table API; only py4j and
ruamel.yaml are installed beside it) and submits to a running Flink cluster
through its REST port, with Flink SQL's Kafka connector from Maven
(``$RTF_CACHE/jars/sql``).
It imports nothing from the project: the Flink venv has none of its packages.

The events are UserInteractionEvent records as JSON (a malformed record is
skipped: ``json.ignore-parse-errors``). Event time is ``eventTimestamp``.
The pipeline accepts an event up to its watermark delay (10 s) plus the
allowed lateness (60 s) behind the newest event time, and repairs a window
with it. Flink SQL's session windows take no emit strategy (no early firing,
no ``table.exec.emit.allow-lateness``: "Session window doesn't support EMIT
strategy currently"), so the peer accepts the same events the only way
Flink SQL offers for both window kinds: its watermark trails the newest
event time by the sum, ``--max_out_of_orderness_s`` + ``--allowed_lateness_s``
(70 s). A window's row appears once, when the watermark passes its end: no
speculative values, and a 5-min window is visible 70 s after it ends. The
Top-1 (``last_purchase_value``) has no window and updates on every purchase.

    txn_total_5m        TUMBLE(5 min), SUM(eventValue) of purchases; as_of = window end
    clicks_in_session   SESSION(15 min gap) of all events, clicks in it; as_of = last event
    session_duration_s  the same session, (max - min eventTimestamp) // 1000
    last_purchase_value the purchase with the newest eventTimestamp (of equal ones the
                        largest value): a Top-1 per user; as_of = its eventTimestamp

Every row is ``(userId, feature, as_of, value)``. ``--output_topic`` writes
them to an upsert-kafka topic keyed by (userId, feature) and prints the job
id; ``--collect`` (with ``--bounded``: read to the topic's end offsets, then
the watermark ends and every window fires) prints one JSON object per user
with each feature's newest value, for the equality check.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

CONNECTOR = "flink-sql-connector-kafka-*.jar"

SOURCE = """
CREATE TABLE events (
  userId STRING,
  eventType STRING,
  eventValue DOUBLE,
  eventTimestamp BIGINT,
  ts AS TO_TIMESTAMP_LTZ(eventTimestamp, 3),
  WATERMARK FOR ts AS ts - INTERVAL '{delay}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'properties.group.id' = '{group}',
  'scan.startup.mode' = 'earliest-offset',
  {bounded}
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
)"""

SINK = """
CREATE TABLE features (
  userId STRING,
  feature STRING,
  as_of BIGINT,
  `value` DOUBLE,
  PRIMARY KEY (userId, feature) NOT ENFORCED
) WITH (
  'connector' = 'upsert-kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'key.format' = 'json',
  'value.format' = 'json'
)"""

FEATURES = """
SELECT userId, 'txn_total_5m' AS feature,
       (MAX(eventTimestamp) / 300000 + 1) * 300000 AS as_of, SUM(eventValue) AS `value`
FROM events WHERE eventType = 'purchase'
GROUP BY userId, TUMBLE(ts, INTERVAL '5' MINUTE)
UNION ALL
SELECT userId, 'clicks_in_session', MAX(eventTimestamp),
       CAST(COUNT(*) FILTER (WHERE eventType = 'click') AS DOUBLE)
FROM events GROUP BY userId, SESSION(ts, INTERVAL '15' MINUTE)
UNION ALL
SELECT userId, 'session_duration_s', MAX(eventTimestamp),
       CAST((MAX(eventTimestamp) - MIN(eventTimestamp)) / 1000 AS DOUBLE)
FROM events GROUP BY userId, SESSION(ts, INTERVAL '15' MINUTE)
UNION ALL
SELECT userId, 'last_purchase_value', eventTimestamp, eventValue FROM (
  SELECT userId, eventTimestamp, eventValue, ROW_NUMBER() OVER (
    PARTITION BY userId ORDER BY eventTimestamp DESC, eventValue DESC) AS rn
  FROM events WHERE eventType = 'purchase')
WHERE rn = 1"""


def connector_jar() -> Path:
    cache = Path(os.environ.get("RTF_CACHE", Path.home() / ".cache" / "rtfeatures"))
    found = sorted(glob.glob(str(cache / "jars" / "sql" / CONNECTOR)))
    if not found:
        raise SystemExit(f"no {CONNECTOR} under {cache}/jars/sql: run make install")
    return Path(found[-1])


def table_env(args: argparse.Namespace) -> Any:
    from pyflink.common import Configuration
    from pyflink.table import EnvironmentSettings, TableEnvironment

    # Pure SQL runs no Python worker: without this PyFlink starts a loopback
    # worker server (it needs grpc and Beam, absent from the Flink venv).
    os.environ.setdefault("_python_worker_execution_mode", "process")
    config = Configuration()
    for key, value in {
        "execution.target": "remote",
        "rest.address": "127.0.0.1",
        "rest.port": str(args.rest_port),
        "pipeline.jars": connector_jar().resolve().as_uri(),
        "pipeline.name": args.job_name,
        "parallelism.default": str(args.parallelism),
        "execution.checkpointing.interval": f"{args.checkpoint_interval_ms} ms",
        # Idle state (a user not seen for a day) goes, as the pipeline's TTL would.
        "table.exec.state.ttl": "1 d",
    }.items():
        config.set_string(key, value)
    settings = EnvironmentSettings.new_instance().in_streaming_mode() \
        .with_configuration(config).build()
    env = TableEnvironment.create(settings)
    env.execute_sql(SOURCE.format(
        delay=args.max_out_of_orderness_s + args.allowed_lateness_s, topic=args.topic,
        bootstrap=args.bootstrap_servers, group=args.job_name,
        bounded="'scan.bounded.mode' = 'latest-offset'," if args.bounded else ""))
    return env


def newest(changes: list[tuple[str, str, int, float, bool]]) -> dict[str, dict[str, Any]]:
    """Applies a changelog of (user, feature, as_of, value, is_insert) rows; per user
    and feature the value of the newest as_of still standing."""
    standing: dict[tuple[str, str, int], list[float]] = {}
    for user, feature, as_of, value, insert in changes:
        values = standing.setdefault((user, feature, as_of), [])
        if insert:
            values.append(value)
        elif value in values:
            values.remove(value)
    best: dict[tuple[str, str], tuple[int, float]] = {}
    for (user, feature, as_of), values in standing.items():
        if values and ((user, feature) not in best or as_of > best[(user, feature)][0]):
            best[(user, feature)] = (as_of, values[-1])
    out: dict[str, dict[str, Any]] = {}
    for (user, feature), (_, value) in sorted(best.items()):
        out.setdefault(user, {})[feature] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rest_port", type=int, required=True)
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output_topic")
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--job_name", default="flink-sql-peer")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--checkpoint_interval_ms", type=int, default=10_000)
    parser.add_argument("--max_out_of_orderness_s", type=int, default=10)
    parser.add_argument("--allowed_lateness_s", type=int, default=60)
    args = parser.parse_args(argv)
    if args.collect == bool(args.output_topic):
        parser.error("give exactly one of --output_topic and --collect")
    env = table_env(args)
    if args.collect:
        from pyflink.common import RowKind

        changes = []
        with env.execute_sql(FEATURES).collect() as rows:
            for row in rows:
                insert = row.get_row_kind() in (RowKind.INSERT, RowKind.UPDATE_AFTER)
                changes.append((row[0], row[1], row[2], row[3], insert))
        for user, feats in newest(changes).items():
            sys.stdout.write(json.dumps({"userId": user, **feats}) + "\n")
        return
    env.execute_sql(SINK.format(topic=args.output_topic, bootstrap=args.bootstrap_servers))
    result = env.execute_sql(f"INSERT INTO features {FEATURES}")
    client = result.get_job_client()
    sys.stdout.write(json.dumps({"job_id": str(client.get_job_id())}) + "\n")


if __name__ == "__main__":
    main()
