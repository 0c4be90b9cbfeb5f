"""ReadFromKafka / WriteToKafka for the local runtime's Java expansion service.

The Python SDK is Beam 2.77, but the Java side here is Beam 2.62 (the newest
Flink job server whose jars resolve from the reachable Maven repository, see
docs/RUNTIME.md). 2.77's ``apache_beam.io.kafka.ReadFromKafka`` sends three
configuration fields that 2.62's ``KafkaIO.Read.External.Configuration`` has
no setter for (``dynamic_read_poll_interval_seconds``,
``consumer_factory_fn_class``, ``consumer_factory_fn_params``), and the
expansion fails with "missing a setter setDynamicReadPollIntervalSeconds".
This module builds the same external transform (same URNs) with the 2.62
field set. Output is identical: ``(key: bytes, value: bytes)`` tuples, or
Beam Rows with Kafka metadata when ``with_metadata=True``.

WriteToKafka's payload did not change between 2.62 and 2.77, so it is
re-exported unchanged.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence

import numpy as np
from apache_beam.io.kafka import WriteToKafka
from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder

__all__ = ["ReadFromKafka", "WriteToKafka", "BYTE_ARRAY_DESERIALIZER"]

BYTE_ARRAY_DESERIALIZER = "org.apache.kafka.common.serialization.ByteArrayDeserializer"

ReadFromKafkaSchema262 = typing.NamedTuple(  # noqa: UP014 (same shape as apache_beam.io.kafka)
    "ReadFromKafkaSchema262",
    [
        ("consumer_config", typing.Mapping[str, str]),
        ("topics", list[str]),
        ("key_deserializer", str),
        ("value_deserializer", str),
        ("start_read_time", typing.Optional[int]),  # noqa: UP045 (schema inference needs Optional)
        ("max_num_records", typing.Optional[int]),  # noqa: UP045
        ("max_read_time", typing.Optional[int]),  # noqa: UP045
        ("commit_offset_in_finalize", bool),
        ("timestamp_policy", str),
        ("consumer_polling_timeout", typing.Optional[int]),  # noqa: UP045
        ("redistribute", typing.Optional[bool]),  # noqa: UP045
        ("redistribute_num_keys", typing.Optional[np.int32]),  # noqa: UP045
        ("allow_duplicates", typing.Optional[bool]),  # noqa: UP045
    ],
)


class ReadFromKafka(ExternalTransform):
    """KafkaIO.Read as a cross-language transform, compatible with a Beam 2.62 expansion service.

    Args mirror ``apache_beam.io.kafka.ReadFromKafka`` (2.77):
      consumer_config: Kafka consumer properties; must include ``bootstrap.servers``.
      topics: topic names.
      key_deserializer / value_deserializer: Java Deserializer class names (bytes by default).
      start_read_time: start offsets from this epoch-millis timestamp.
      max_num_records / max_read_time: make the read bounded (tests, demos).
      commit_offset_in_finalize: commit consumer offsets when a checkpoint finalizes
        (needs ``group.id``; pair with ``enable.auto.commit=false``).
      timestamp_policy: ``ProcessingTime`` (default), ``CreateTime`` or ``LogAppendTime``.
      consumer_polling_timeout: poll timeout in seconds.
      with_metadata: emit Rows with topic/partition/offset/timestamp/headers.
      expansion_service: ``host:port`` of the running Java expansion service.
    """

    processing_time_policy = "ProcessingTime"
    create_time_policy = "CreateTime"
    log_append_time = "LogAppendTime"
    URN_WITH_METADATA = "beam:transform:org.apache.beam:kafka_read_with_metadata:v1"
    URN_WITHOUT_METADATA = "beam:transform:org.apache.beam:kafka_read_without_metadata:v1"

    def __init__(
        self,
        consumer_config: Mapping[str, str],
        topics: Sequence[str],
        expansion_service: str,
        key_deserializer: str = BYTE_ARRAY_DESERIALIZER,
        value_deserializer: str = BYTE_ARRAY_DESERIALIZER,
        start_read_time: int | None = None,
        max_num_records: int | None = None,
        max_read_time: int | None = None,
        commit_offset_in_finalize: bool = False,
        timestamp_policy: str = processing_time_policy,
        consumer_polling_timeout: int = 2,
        with_metadata: bool = False,
        redistribute: bool = False,
        redistribute_num_keys: int = 0,
        allow_duplicates: bool = False,
    ) -> None:
        if timestamp_policy not in (
            self.processing_time_policy,
            self.create_time_policy,
            self.log_append_time,
        ):
            raise ValueError(
                "timestamp_policy should be one of [ProcessingTime, CreateTime, LogAppendTime]"
            )
        payload = ReadFromKafkaSchema262(
            consumer_config=dict(consumer_config),
            topics=list(topics),
            key_deserializer=key_deserializer,
            value_deserializer=value_deserializer,
            start_read_time=start_read_time,
            max_num_records=max_num_records,
            max_read_time=max_read_time,
            commit_offset_in_finalize=commit_offset_in_finalize,
            timestamp_policy=timestamp_policy,
            consumer_polling_timeout=consumer_polling_timeout,
            redistribute=redistribute,
            redistribute_num_keys=np.int32(redistribute_num_keys),
            allow_duplicates=allow_duplicates,
        )
        super().__init__(
            self.URN_WITH_METADATA if with_metadata else self.URN_WITHOUT_METADATA,
            NamedTupleBasedPayloadBuilder(payload),
            expansion_service,
        )
