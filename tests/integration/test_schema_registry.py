"""Schema ids through a real schema registry (Apicurio, Confluent-compatible API).

The producer registers its writer schema under ``<topic>-value`` and writes
the id the registry gave into every record; the decoder resolves ids through
the registry; the registry's BACKWARD rule refuses an incompatible version
before anything reaches the topic; basic-auth credentials reach the registry
client and nothing else. The ids are made to differ from the local catalogue's,
so a decoder that fell back to ``schemas/catalogue.json`` would fail.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import schemas
from pipelines.generate import StreamSpec, generate
from pipelines.produce import SchemaRefused, registry_schema_id
from runners.services import LocalServices, RegistryUser
from runtime.endpoints import REPO_ROOT, ServicePorts
from transforms.decode import (
    EventSchema,
    InvalidEvent,
    RegistryUnavailable,
    SchemaCatalogue,
    decode_confluent,
    encode_confluent,
)

USER_V1 = EventSchema(schemas.USER_EVENT_V1)
USER_V2 = EventSchema(schemas.USER_EVENT_V2)
PASSWORD = "registry-s3cret-\u00e9-pw"
DEVELOPER = RegistryUser("feature-dev", PASSWORD, "sr-developer")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    """Kafka and an open registry, as ``make services-up`` starts them."""
    with LocalServices(ports=ServicePorts.free(), state_dir=tmp_path_factory.mktemp("registry"),
                       services=("kafka", "registry")) as svc:
        yield svc


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    """A registry with basic auth on."""
    with LocalServices(ports=ServicePorts.free(),
                       state_dir=tmp_path_factory.mktemp("registry-auth"),
                       services=("registry",), registry_users=(DEVELOPER,)) as svc:
        yield svc


def _client(svc: LocalServices, **config: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": svc.ports.registry_url, **config})


def _text(schema_file: str) -> str:
    return json.dumps(schemas.raw_schema(schema_file))


def _write_schema(tmp_path: Path, name: str, change: Any) -> str:
    """A copy of the v2 user event schema with ``change`` applied; its absolute path."""
    raw = json.loads(json.dumps(schemas.raw_schema(schemas.USER_EVENT_V2)))
    change(raw)
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def _produce(svc: LocalServices, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.produce", "--pipeline=user",
         f"--bootstrap_servers={svc.ports.bootstrap_servers}", f"--topic={topic}",
         f"--schema_registry_url={svc.ports.registry_url}", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)


def _topic_values(svc: LocalServices, topic: str, want: int, wait_s: float = 30) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": svc.ports.bootstrap_servers,
                         "group.id": f"read-{topic}-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + wait_s
    try:
        while len(values) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
    finally:
        consumer.close()
    return values


def _end_offsets(svc: LocalServices, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": svc.ports.bootstrap_servers,
                         "group.id": "offsets"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in meta.partitions)
    finally:
        consumer.close()


def test_the_registry_runs_backward_compatibility_by_default(stack):
    """Every subject inherits the registry's global BACKWARD rule."""
    assert _client(stack).get_compatibility() == "BACKWARD"


def test_producer_registers_under_the_topic_subject_and_the_decoder_resolves_its_ids(
        stack, tmp_path):
    """``pipelines.produce`` registers v2 under ``<topic>-value``; every record carries
    the registry's id (not the catalogue's), and the decoder reads them through the
    registry."""
    topic = "registry-ids"
    stack.create_topic(topic, partitions=1)
    client = _client(stack)
    # Other subjects first, so that the registry's id for user v2 is not the catalogue's.
    for n, schema_file in enumerate((schemas.RIDE_EVENT, schemas.USER_EVENT_V1)):
        client.register_schema(f"other-{n}-value", Schema(_text(schema_file), "AVRO"))
    events = generate("user", StreamSpec(events=40, users=5, seed=3))
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in events))

    done = _produce(stack, topic, f"--input={events_file}")

    assert done.returncode == 0, done.stderr
    registered = client.get_latest_version(f"{topic}-value")
    assert json.loads(registered.schema.schema_str) == schemas.raw_schema(schemas.USER_EVENT_V2)
    assert registered.schema_id != schemas.schema_id_for(schemas.USER_EVENT_V2)
    values = _topic_values(stack, topic, len(events))
    assert len(values) == len(events)
    assert {struct.unpack(">I", v[1:5])[0] for v in values} == {registered.schema_id}
    catalogue = SchemaCatalogue(stack.ports.registry_url)
    # Written with v2, read with v1: the registry's writer schema, resolved.
    assert [decode_confluent(v, USER_V1, catalogue) for v in values] == events
    # The local catalogue would read these ids as other schemas.
    with pytest.raises(InvalidEvent):
        decode_confluent(values[0], USER_V1, SchemaCatalogue())


def test_an_id_the_registry_does_not_know_and_a_body_that_does_not_fit_are_dead_letters(
        stack):
    """Unknown id: a dead letter naming the registry. A body written with another
    schema than its id says: a dead letter naming the id."""
    client = _client(stack)
    ride_id = client.register_schema("rides-value", Schema(_text(schemas.RIDE_EVENT), "AVRO"))
    event = generate("user", StreamSpec(events=1, users=1, seed=4))[0]
    catalogue = SchemaCatalogue(stack.ports.registry_url)
    with pytest.raises(InvalidEvent, match=r"unknown schema id 987654 \(not in the schema "
                                           r"registry\)"):
        decode_confluent(encode_confluent(event, schemas.USER_EVENT_V2, 987_654), USER_V2,
                         catalogue)
    with pytest.raises(InvalidEvent, match=f"schema id {ride_id}"):
        decode_confluent(encode_confluent(event, schemas.USER_EVENT_V2, ride_id), USER_V2,
                         catalogue)


def test_backward_compatible_v2_registers_and_an_incompatible_v3_is_refused(stack, tmp_path):
    """v1 then v2 (optional deviceType) register; a v3 with a new required field is
    refused by the registry, and ``pipelines.produce`` says so and sends nothing."""
    topic = "registry-compat"
    stack.create_topic(topic, partitions=1)
    subject = f"{topic}-value"
    url = stack.ports.registry_url
    v1 = registry_schema_id(url, subject, schemas.USER_EVENT_V1)
    v2 = registry_schema_id(url, subject, schemas.USER_EVENT_V2)
    assert v2 != v1
    assert registry_schema_id(url, subject, schemas.USER_EVENT_V2) == v2  # idempotent

    def required_country(raw: dict[str, Any]) -> None:
        raw["fields"].append({"name": "country", "type": "string"})

    v3 = _write_schema(tmp_path, "user_v3_required_field.avsc", required_country)
    with pytest.raises(SchemaRefused, match="HTTP 409"):
        registry_schema_id(url, subject, v3)

    events_file = tmp_path / "events.jsonl"
    events = generate("user", StreamSpec(events=20, users=3, seed=5))
    events_file.write_text("".join(json.dumps({**e, "country": "FR"}) + "\n" for e in events))
    done = _produce(stack, topic, f"--schema_file={v3}", f"--input={events_file}")

    assert done.returncode == 2
    assert "refused" in done.stderr and "incompatible" in done.stderr.lower(), done.stderr
    assert "nothing sent" in done.stderr
    assert _end_offsets(stack, topic) == 0
    assert _client(stack).get_versions(subject) == [1, 2]

    def type_change(raw: dict[str, Any]) -> None:
        for field in raw["fields"]:
            if field["name"] == "eventTimestamp":
                field["type"] = "string"

    with pytest.raises(SchemaRefused, match="HTTP 409"):
        registry_schema_id(url, subject, _write_schema(tmp_path, "user_v3_type.avsc",
                                                       type_change))


def test_a_registry_that_does_not_answer_fails_the_lookup_instead_of_making_dead_letters():
    """No registry at the URL: the lookup retries, then raises (the bundle is retried);
    the record is not turned into a dead letter."""
    from runtime.ports import free_port

    catalogue = SchemaCatalogue(f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", retry_s=1.0)
    event = generate("user", StreamSpec(events=1, users=1, seed=6))[0]
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        decode_confluent(encode_confluent(event, schemas.USER_EVENT_V2, 5), USER_V2, catalogue)


def test_basic_auth_credentials_reach_the_registry_and_no_output(stack, secured, tmp_path):
    """``--schema_registry_config`` carries basic-auth credentials to the producer's and
    the decoder's registry clients; without them the producer is refused and sends
    nothing; the password appears in no output."""
    config = {"basic.auth.user.info": DEVELOPER.user_info}
    url = secured.ports.registry_url
    with pytest.raises(SchemaRegistryError) as refused:
        _client(secured).get_subjects()
    assert refused.value.http_status_code == 401

    schema_id = registry_schema_id(url, "secured-value", schemas.USER_EVENT_V2, config)
    event = generate("user", StreamSpec(events=1, users=1, seed=7))[0]
    value = encode_confluent(event, schemas.USER_EVENT_V2, schema_id)
    assert decode_confluent(value, USER_V1, SchemaCatalogue(url, config)) == event
    wrong = {"basic.auth.user.info": f"{DEVELOPER.name}:not-the-password"}
    with pytest.raises(RegistryUnavailable, match="refused the credentials"):
        decode_confluent(value, USER_V2, SchemaCatalogue(url, wrong, retry_s=1.0))

    events_file = tmp_path / "events.jsonl"
    events_file.write_text(json.dumps(event) + "\n")
    config_file = tmp_path / "registry.json"
    config_file.write_text(json.dumps(config))
    stack.create_topic("secured", partitions=1)
    args = [sys.executable, "-m", "pipelines.produce", "--pipeline=user",
            f"--bootstrap_servers={stack.ports.bootstrap_servers}", "--topic=secured",
            f"--input={events_file}", f"--schema_registry_url={url}"]
    without = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert without.returncode == 2 and "HTTP 401" in without.stderr, without.stderr
    assert _end_offsets(stack, "secured") == 0
    registered = subprocess.run([*args, f"--schema_registry_config=@{config_file}"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr
    assert _end_offsets(stack, "secured") == 1
    outputs = [without.stdout, without.stderr, registered.stdout, registered.stderr,
               (secured.log_dir / "registry.log").read_text(errors="replace"),
               *(p.read_text() for p in secured.pid_dir.glob("*.json"))]
    assert not [o for o in outputs if PASSWORD in o]
