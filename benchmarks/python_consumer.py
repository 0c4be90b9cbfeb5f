"""The ceiling: the same features in one plain Python process, no Beam, no Flink.

    python -m benchmarks.python_consumer --pipeline=user --bootstrap_servers=... \\
        --topic=... --redis_url=redis://... --max_records=N

A ``confluent_kafka`` consumer reads the topic the pipelines read (Confluent
Avro records), decodes each with the product's decoder, and hands it to the
product's fused feature DoFn (``FeatureEngine.fused_fns``: the very code the
fused Flink stage runs) on ``transforms.replay.InMemoryEngine``: its state in a
Python dict instead of Flink's state backend and its timers in a heap instead
of Flink's timer service.
After each polled batch the watermark moves to the oldest of the partitions'
newest record timestamps, due timers fire in time order, and the batch's
updates, coalesced per entity and feature as the sink's guard would keep
them, go to Redis through the product's guarded writer (``RedisWriter``: the
``as_of`` guard script, pipelined). At the end of the input the watermark
jumps to +inf, so every window is final, as in a bounded replay.

Left out, so it bounds from above what Python can do on this machine: no
checkpoints or offset commits, no feature log file, dead letters only
counted, a single thread. It prints one JSON line: events, dead letters,
late events, feature vectors written, fields the guard left alone, and
events/s from the first record to the last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from pipelines.catalogue import PIPELINES
from pipelines.produce import SCHEMA_FILES
from transforms.decode import EventSchema, InvalidEvent, SchemaCatalogue, decode_confluent
from transforms.engine import EngineSettings, FeatureEngine
from transforms.merge import merge_updates
from transforms.model import FeatureUpdate
from transforms.redis_sink import RedisSinkConfig, RedisWriter
from transforms.replay import END_OF_TIME_MICROS, InMemoryEngine


def consume(pipeline: str, bootstrap_servers: str, topic: str, redis_url: str,
            max_records: int, watermark_delay_ms: int = 10_000,
            idle_timeout_s: float = 10.0) -> dict[str, Any]:
    """Reads ``max_records`` records (or until the topic is idle), computes and writes."""
    from confluent_kafka import Consumer

    features = PIPELINES[pipeline]
    entity = features[0].entity
    fns = FeatureEngine(features, EngineSettings(watermark_delay_ms=watermark_delay_ms),
                        pipeline).fused_fns()
    engine = InMemoryEngine(fns[entity], features[0].time_field)
    schema, catalogue = EventSchema(SCHEMA_FILES[pipeline]), SchemaCatalogue()
    writer = RedisWriter(RedisSinkConfig(url=redis_url, batch_size=500))
    consumer = Consumer({"bootstrap.servers": bootstrap_servers,
                         "group.id": f"python-consumer-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    newest: dict[int, int] = {}  # partition -> newest record timestamp (ms)
    records = dead = written = rejected = 0
    first = last = None
    idle_since = time.monotonic()
    try:
        while records < max_records:
            batch = consumer.consume(num_messages=5_000, timeout=0.5)
            if not batch:
                if time.monotonic() - idle_since > idle_timeout_s:
                    break
                continue
            idle_since = time.monotonic()
            first = first or time.perf_counter()
            updates: list[FeatureUpdate] = []
            for message in batch:
                if message.error():
                    continue
                records += 1
                try:
                    event = decode_confluent(message.value(), schema, catalogue)
                except InvalidEvent:
                    dead += 1
                    continue
                engine.process(event[entity], event, updates)
                newest[message.partition()] = max(newest.get(message.partition(), 0),
                                                  message.timestamp()[1])
            engine.advance(min(newest.values(), default=0) * 1000, updates)
            vectors = merge_updates(updates)
            rejected += writer.write(vectors)
            written += len(vectors)
            last = time.perf_counter()
        tail: list[FeatureUpdate] = []
        engine.advance(END_OF_TIME_MICROS, tail)
        vectors = merge_updates(tail)
        rejected += writer.write(vectors)
        written += len(vectors)
    finally:
        consumer.close()
        writer.close()
    seconds = (last - first) if first and last else 0.0
    return {"pipeline": pipeline, "events": records, "dead_letters": dead,
            "late_events": engine.late, "vectors_written": written,
            "guard_rejected_fields": rejected,
            "seconds": round(seconds, 2),
            "events_per_s": round(records / seconds) if seconds else None}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="user")
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--redis_url", required=True)
    parser.add_argument("--max_records", type=int, default=2**62)
    parser.add_argument("--max_out_of_orderness_ms", type=int, default=10_000)
    args = parser.parse_args(argv)
    result = consume(args.pipeline, args.bootstrap_servers, args.topic, args.redis_url,
                     args.max_records, args.max_out_of_orderness_ms)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
