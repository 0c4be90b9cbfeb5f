"""A Kafka producer of events in the Confluent wire format.

    python -m pipelines.produce --pipeline user --input events.jsonl \\
        --bootstrap_servers localhost:9092 --topic user-events
    python -m pipelines.produce --pipeline ride --generate 10000 --rate 2000 ...

Records are keyed by userId (one user's events stay in one partition, in
order) and carry the event time as their Kafka timestamp (CreateTime). The
schema id comes from a schema registry when ``--schema_registry_url`` is set
(the schema is registered under ``<topic>-value``), else from
``schemas/catalogue.json``. Invalid input lines are skipped and reported, not
sent; ``--raw`` sends bytes as they are (for fault tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import schemas
from pipelines.generate import StreamSpec, generate
from pipelines.kafka_dialects import for_python
from pipelines.kafka_source import client_config
from transforms.decode import EventSchema, InvalidEvent, encode_confluent, parse_json_line

SCHEMA_FILES = {"user": schemas.USER_EVENT_V2, "ride": schemas.RIDE_EVENT}
SENT_HEADER = "rtf_sent_ms"


class SchemaRefused(Exception):
    """The schema registry would not register a schema: incompatible or invalid (the
    message is the registry's own), or the credentials were missing or not allowed."""


def registry_schema_id(url: str, subject: str, schema_file: str,
                       config: dict[str, str] | None = None) -> int:
    """Registers ``schema_file`` under ``subject`` and returns the id the registry
    gave it (the same id again for a schema already registered). The subject's
    compatibility rule is the registry's: a refusal raises ``SchemaRefused``."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": url, **(config or {})})
    text = json.dumps(schemas.raw_schema(schema_file))
    try:
        return client.register_schema(subject, Schema(text, "AVRO"))
    except SchemaRegistryError as e:
        if e.http_status_code in (401, 403):
            reason = "not authenticated" if e.http_status_code == 401 else "not allowed"
            raise SchemaRefused(f"could not register {schema_file} under subject {subject!r} "
                                f"(HTTP {e.http_status_code}: {reason}; check "
                                f"--schema_registry_config)") from None
        raise SchemaRefused(f"the schema registry refused {schema_file} under subject "
                            f"{subject!r}: HTTP {e.http_status_code}, error {e.error_code}: "
                            f"{e.error_message}") from None


class _RetriedByTheClient(logging.Filter):
    """Drops librdkafka's notices of conditions it retries by itself: a broker that has
    just started answers "Coordinator load in progress" until its producer ids are ready."""

    TRANSIENT = ("Coordinator load in progress",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in self.TRANSIENT)


def kafka_client_logger() -> logging.Logger:
    """The Python logger librdkafka's own log lines go to (``logger`` in a client config)."""
    logger = logging.getLogger("rtfeatures.kafka")
    if not any(isinstance(f, _RetriedByTheClient) for f in logger.filters):
        logger.addFilter(_RetriedByTheClient())
    return logger


class EventProducer:
    """Sends events to one topic; a thin, typed wrapper over confluent_kafka.Producer.
    Close it (or use it as a context manager) so that no client outlives its broker.

    Args:
        bootstrap_servers: Kafka bootstrap servers.
        topic: the topic.
        schema_file: the writer schema (a file in ``schemas/``).
        schema_id: id to embed; default: the local catalogue's.
        config: extra producer settings (e.g. SASL/SSL); never logged.
    """

    def __init__(self, bootstrap_servers: str, topic: str, schema_file: str,
                 schema_id: int | None = None, config: dict[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                                   "enable.idempotence": True, "logger": kafka_client_logger(),
                                   **for_python(config or {})})
        self._topic = topic
        self._schema_file = schema_file
        self._schema_id = schemas.schema_id_for(schema_file) if schema_id is None else schema_id
        self.sent = 0
        self.failed = 0

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.sent += 1
        else:
            self.failed += 1

    def send(self, event: dict[str, Any], key: str | None = None) -> None:
        """Encodes and sends one event (asynchronously)."""
        self.send_raw(encode_confluent(event, self._schema_file, self._schema_id),
                      key if key is not None else str(event["userId"]),
                      event.get("eventTimestamp"))

    def send_raw(self, value: bytes, key: str | None = None,
                 timestamp_ms: int | None = None) -> None:
        """Sends bytes as they are (bad records for fault tests included)."""
        headers = [(SENT_HEADER, str(int(time.time() * 1000)).encode())]
        kwargs: dict[str, Any] = {"headers": headers, "on_delivery": self._delivered}
        if timestamp_ms is not None and 0 <= timestamp_ms < 2**63:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key, **kwargs)
                break
            except BufferError:  # local queue full: let it drain
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Waits for delivery; returns the messages still undelivered."""
        return self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 60.0) -> int:
        """Flushes and closes the client; returns the messages left undelivered."""
        left = self.flush(timeout_s)
        self._producer.close()
        return left

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_all(producer: EventProducer, events: Iterable[dict[str, Any]],
             rate_per_s: float | None = None) -> int:
    """Sends ``events`` at ``rate_per_s`` (unthrottled if None); returns how many."""
    started = time.monotonic()
    count = 0
    for count, event in enumerate(events, 1):
        producer.send(event)
        if rate_per_s:
            ahead = count / rate_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    return count


def read_events(path: str, schema: EventSchema) -> tuple[list[dict[str, Any]], int]:
    """Valid events of a JSON-lines file, and the number of invalid lines skipped."""
    events, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                events.append(parse_json_line(line.rstrip("\n"), schema))
            except InvalidEvent:
                bad += 1
    return events, bad


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="send events to Kafka (Confluent wire format)")
    parser.add_argument("--pipeline", choices=("user", "ride"), required=True)
    parser.add_argument("--input", help="JSON-lines events file")
    parser.add_argument("--generate", type=int, default=0, help="send N synthetic events")
    parser.add_argument("--users", type=int, default=StreamSpec.users)
    parser.add_argument("--seed", type=int, default=StreamSpec.seed)
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, default=None, help="events per second")
    parser.add_argument("--schema_registry_url", default=None,
                        help="register the schema there under <topic>-value and send its id")
    parser.add_argument("--schema_registry_config", default=None,
                        help="extra registry client settings, JSON or @file "
                             "(basic.auth.user.info); never logged")
    parser.add_argument("--schema_file", default=None, help="writer schema in schemas/")
    args = parser.parse_args(argv)

    schema_file = args.schema_file or SCHEMA_FILES[args.pipeline]
    schema_id = None
    if args.schema_registry_url:
        config = client_config(args.schema_registry_config, "--schema_registry_config")
        try:
            schema_id = registry_schema_id(args.schema_registry_url, f"{args.topic}-value",
                                           schema_file, config)
        except SchemaRefused as e:
            print(f"{e}; nothing sent", file=sys.stderr)
            sys.exit(2)
    if args.input:
        events, bad = read_events(args.input, EventSchema(schema_file))
        if bad:
            print(f"skipped {bad} invalid lines of {args.input}", file=sys.stderr)
    elif args.generate:
        events = generate(args.pipeline, StreamSpec(events=args.generate, users=args.users,
                                                    seed=args.seed))
    else:
        parser.error("give --input or --generate")
    with EventProducer(args.bootstrap_servers, args.topic, schema_file, schema_id) as producer:
        n = send_all(producer, events, args.rate)
    print(f"sent {producer.sent} of {n} events to {args.topic} ({producer.failed} failed)")


if __name__ == "__main__":
    main()
