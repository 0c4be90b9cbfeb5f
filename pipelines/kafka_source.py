"""The Kafka read path: ReadFromKafka (Java, cross-language) -> Confluent Avro decode.

Event time is the payload's ``eventTimestamp``: it is what the features are
defined on, and it survives re-publishing, mirroring and replays that rewrite
Kafka's record timestamps. The watermark comes from the record's CreateTime,
which ``pipelines.produce`` sets to the event time; Beam's cross-language
KafkaIO uses a zero-delay CreateTime policy, so the bounded out-of-orderness
(``--max_out_of_orderness_ms``, 10 s) is applied by the feature transforms'
timers (``transforms.late.EventClock``).

Offsets are committed only when a checkpoint finalizes
(``commit_offset_in_finalize`` with ``enable.auto.commit=false``): Redis has
accepted the writes before the group's offsets move.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from pipelines.kafka_dialects import for_java, for_python
from pipelines.options import FeatureOptions, bootstrap_servers
from transforms.decode import (
    DecodeConfluentAvro,
    EventSchema,
    KeyedRecords,
    RecordDecoder,
    SchemaCatalogue,
    decode_confluent,
)


def client_config(raw: str | None, flag: str) -> dict[str, str]:
    """Client settings given as a JSON object or ``@path`` to a JSON file; the
    values (passwords included) go to the clients only, never to logs."""
    if not raw:
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not JSON (line {e.lineno}, column {e.colno})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return {str(k): str(v) for k, v in config.items()}


def kafka_client_config(options: FeatureOptions) -> dict[str, str]:
    """Extra Kafka client settings (SASL/SSL, ...) from ``--kafka_config``, in
    librdkafka's names (``pipelines.kafka_dialects`` gives the Java client its own)."""
    return client_config(options.kafka_config, "--kafka_config")


def registry_client_config(options: FeatureOptions) -> dict[str, str]:
    """Extra schema registry client settings (``basic.auth.user.info``, TLS) from
    ``--schema_registry_config``."""
    return client_config(options.schema_registry_config, "--schema_registry_config")


def consumer_config(options: FeatureOptions, schema: EventSchema) -> dict[str, str]:
    """Consumer settings: offsets move with checkpoints only."""
    return {
        "bootstrap.servers": bootstrap_servers(options),
        "group.id": options.consumer_group or f"rtfeatures-{schema.name}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
        "max.partition.fetch.bytes": str(2 * schema.limits.max_record_bytes),
        **kafka_client_config(options),
    }


def _read_from_kafka() -> Any:
    """Beam's ReadFromKafka, or the field-compatible one for the local expansion service."""
    from runtime.kafka_io import ReadFromKafka

    return ReadFromKafka


class ReadEventsFromKafka(beam.PTransform):
    """Events from a Kafka topic; outputs tagged ``events`` and ``dead``.

    Args:
        options: ``--topic``, ``--bootstrap_servers``, ``--max_records``,
            ``--expansion_service``, ``--consumer_group``, ``--kafka_config``,
            ``--schema_registry_url``, ``--schema_registry_config``.
        schema: the reader schema.
    """

    def __init__(self, options: FeatureOptions, schema: EventSchema) -> None:
        super().__init__()
        self._options = options
        self._schema = schema

    def expand(self, pbegin: pvalue.PBegin) -> pvalue.DoOutputsTuple:
        opts = self._options
        records = pbegin | "ReadFromKafka" >> _read_records(opts, self._schema)
        # A tombstone (a record without a value) is None: a dead letter, not a failed bundle.
        values = records | "RecordValues" >> beam.Map(lambda kv: kv[1]).with_output_types(
            bytes | None)
        return values | "DecodeConfluentAvro" >> DecodeConfluentAvro(
            self._schema, opts.schema_registry_url, source=f"kafka:{opts.topic}",
            registry_config=registry_client_config(opts))


def _read_records(options: FeatureOptions, schema: EventSchema) -> beam.PTransform:
    """Beam's ReadFromKafka for ``--topic``: ``(key, value)`` byte pairs."""
    read = _read_from_kafka()
    return read(
        consumer_config=for_java(consumer_config(options, schema)),
        topics=[options.topic],
        expansion_service=options.expansion_service,
        # Not max_num_records: a bounded KafkaIO read hangs on the local
        # Flink runtime (docs/RUNTIME.md); --max_records stops the stream instead.
        commit_offset_in_finalize=True,
        timestamp_policy=read.create_time_policy,
    )


def read_keyed_records(pipeline: beam.Pipeline, options: FeatureOptions,
                       schema: EventSchema) -> KeyedRecords:
    """``--topic``'s records as they are, keyed by the schema's entity field, for
    the keyed stage to decode (``--records_keyed_by_entity``)."""
    records = pipeline | "ReadEvents" >> _read_records(options, schema)
    catalogue = SchemaCatalogue(options.schema_registry_url, registry_client_config(options))
    decoder = RecordDecoder(lambda v: decode_confluent(v, schema, catalogue),
                            schema.entity_field, schema.time_field, f"kafka:{options.topic}")
    return KeyedRecords(records, decoder)


class WriteLinesToKafka(beam.PTransform):
    """Writes records with a ``to_json()`` to a Kafka topic (dead letters, late events)."""

    def __init__(self, options: FeatureOptions, topic: str) -> None:
        super().__init__()
        self._options = options
        self._topic = topic

    def expand(self, records: beam.PCollection) -> pvalue.PDone:
        from runtime.kafka_io import WriteToKafka

        producer = for_java({"bootstrap.servers": bootstrap_servers(self._options),
                             **kafka_client_config(self._options)})
        return (records
                | "ToKafkaRecord" >> beam.Map(
                    lambda r: (b"", r.to_json().encode("utf-8"))).with_output_types(
                        tuple[bytes, bytes])
                | "WriteToKafka" >> WriteToKafka(producer_config=producer, topic=self._topic,
                                                 expansion_service=self._options.expansion_service))


def committed_records(config: dict[str, str], topic: str) -> int:
    """Records of ``topic`` a consumer group (in ``config``) has committed (offsets summed
    over partitions: on a topic that starts at offset 0, the records consumed).

    Offsets are committed when a Flink checkpoint completes, after Redis took
    the writes of those records: a committed record is fully processed.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**for_python(config), "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        for attempt in range(5):
            try:
                committed = consumer.committed(partitions, timeout=10)
                break
            except KafkaException:  # the group coordinator is still loading: retry
                if attempt == 4:
                    raise
                time.sleep(1)
        return sum(tp.offset for tp in committed if tp.offset >= 0)
    finally:
        consumer.close()
