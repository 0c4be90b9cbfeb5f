"""Kafka SASL settings pass through from ``--kafka_config`` to both Kafka clients.

A real broker with a SASL/PLAIN listener (runners.services.start_kafka) takes
logins from one ``--kafka_config`` (librdkafka's names): confluent_kafka uses
it as given (producer, the driver's committed-offsets check), and the Java
client (KafkaIO's consumer and dead-letter producer) uses its translation
(pipelines.kafka_dialects.for_java), tried here with Kafka's own Java
console producer. A wrong password fails loudly and never appears in output.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import schemas
from pipelines.generate import StreamSpec, generate
from pipelines.kafka_dialects import for_java
from pipelines.kafka_source import committed_records
from pipelines.produce import EventProducer
from runners import services as rs

PASSWORD = "kafka-s3cret-\u00e9-pw"
USER = "feature-job"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    state = tmp_path_factory.mktemp("kafka-sasl")
    ports = {"plain": rs.free_port(), "controller": rs.free_port(), "sasl": rs.free_port()}
    handle = rs.start_kafka(ports["plain"], ports["controller"], state, state / "logs",
                            sasl_port=ports["sasl"], sasl_users={USER: PASSWORD})
    try:
        yield ports
    finally:
        rs.stop_process_group(handle.pid)


def _config(password: str = PASSWORD) -> dict[str, str]:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": USER, "sasl.password": password}


def _read(port: int, topic: str, config: dict[str, str], group: str, want: int) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": f"localhost:{port}", "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         **config})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                values.append(msg.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values


def test_python_clients_log_in_with_kafka_config(broker: dict[str, int]) -> None:
    topic = "sasl-python"
    assert rs.kafka_create_topic(broker["plain"], topic, partitions=1)
    events = generate("user", StreamSpec(events=30, users=3, seed=5))
    producer = EventProducer(f"localhost:{broker['sasl']}", topic, schemas.USER_EVENT_V2,
                             config=_config())
    for e in events:
        producer.send(e)
    assert producer.close(30) == 0 and producer.failed == 0 and producer.sent == 30
    got = _read(broker["sasl"], topic, _config(), "sasl-readers", 30)
    assert len(got) == 30
    # The driver's progress check logs in the same way (offsets committed by the reader).
    group = {"bootstrap.servers": f"localhost:{broker['sasl']}", "group.id": "sasl-readers",
             **_config()}
    assert committed_records(group, topic) == 30


def test_wrong_password_fails_without_showing_it(broker: dict[str, int],
                                                 capfd: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-pw-4711"
    producer = EventProducer(f"localhost:{broker['sasl']}", "sasl-python",
                             schemas.USER_EVENT_V2, config=_config(wrong))
    producer.send(generate("user", StreamSpec(events=1, users=1, seed=6))[0])
    undelivered = producer.flush(10)
    sent = producer.sent
    del producer  # stops its retries
    assert undelivered == 1 and sent == 0
    out, err = capfd.readouterr()
    said = out + err + caplog.text  # librdkafka's lines go to the rtfeatures.kafka logger
    assert "Authentication failed" in said  # librdkafka says why ...
    assert wrong not in said  # ... and not with what


def _java_producer(broker: dict[str, int], topic: str, config: dict[str, str],
                   lines: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    props = workdir / "producer.properties"
    # java.util.Properties: a backslash escapes, the file is ISO-8859-1.
    props.write_text("".join(f"{k}={rs._properties_text(v.replace(chr(92), chr(92) * 2))}\n"
                             for k, v in for_java(config).items()))
    log4j = workdir / "log4j.properties"
    log4j.write_text("log4j.rootLogger=WARN, err\n"
                     "log4j.appender.err=org.apache.log4j.ConsoleAppender\n"
                     "log4j.appender.err.Target=System.err\n"
                     "log4j.appender.err.layout=org.apache.log4j.PatternLayout\n"
                     "log4j.appender.err.layout.ConversionPattern=%p %m (%c)%n\n")
    cmd = [rs.java_bin(), f"-Dlog4j.configuration=file:{log4j}",
           "-cp", rs._classpath(rs.kafka_jars_dir()), "kafka.tools.ConsoleProducer",
           "--bootstrap-server", f"localhost:{broker['sasl']}", "--topic", topic,
           "--producer.config", str(props)]
    return subprocess.run(cmd, input="".join(f"{line}\n" for line in lines), text=True,
                          capture_output=True, timeout=120)


def test_java_client_logs_in_with_the_translated_config(broker: dict[str, int],
                                                        tmp_path: Path) -> None:
    topic = "sasl-java"
    assert rs.kafka_create_topic(broker["plain"], topic, partitions=1)
    lines = [json.dumps({"n": i}) for i in range(20)]
    done = _java_producer(broker, topic, _config(), lines, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = _read(broker["sasl"], topic, _config(), "sasl-java-readers", 20)
    assert sorted(v.decode() for v in got) == sorted(lines)
    assert PASSWORD not in done.stdout + done.stderr


def test_java_client_with_a_wrong_password_is_refused(broker: dict[str, int],
                                                      tmp_path: Path) -> None:
    wrong = "not-the-pw-0815"
    done = _java_producer(broker, "sasl-java", {**_config(wrong), "max.block.ms": "10000",
                                                "delivery.timeout.ms": "10000",
                                                "request.timeout.ms": "5000"},
                          ["x"], tmp_path)
    output = done.stdout + done.stderr
    assert "Authentication failed" in output or "SaslAuthenticationException" in output, \
        output[-2000:]
    assert wrong not in output
