"""The local Kafka broker: a single KRaft node that is broker and controller at once.

``start_kafka`` writes its ``server.properties`` and log4j settings under the
state directory, formats the storage once, starts the broker and waits until
its metadata lists it. Automatic topic creation is off: ``kafka_create_topic``
creates topics with their partition count. An optional second listener takes
SASL/PLAIN logins, for testing the clients' security settings.

Metadata and topic creation go through ``confluent_kafka``'s AdminClient. Each
call uses a client of its own and destroys it before returning, so no client
keeps reconnecting to a broker that has since been stopped. librdkafka's log
lines go to ``pipelines.produce.kafka_client_logger()``; those of a call that
failed are dropped with its client, since the exception already says what
went wrong (a broker that is still starting refuses connections, and that is
no news).
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from pipelines.produce import kafka_client_logger
from runners.process import ServiceError, ServiceHandle, log_tail, spawn, tcp_open, wait_ready
from runners.runtime_cache import classpath, java_bin, kafka_jars_dir

# Explicit memory budget: the broker's share of the box.
KAFKA_HEAP = "512m"

_T = TypeVar("_T")


# --------------------------------------------------------------------------- admin client


def _with_admin(port: int, call: Callable[[AdminClient], _T]) -> _T:
    """``call`` with a fresh AdminClient for the broker on ``port``.

    The client is destroyed (connections closed, threads joined) before this returns
    or raises. A librdkafka error (the broker is down, a request timed out) is raised
    as ConnectionError. Log lines the client queued go to ``kafka_client_logger()``
    when the call succeeded, and are dropped with the client when it failed.
    """
    admin = AdminClient({
        "bootstrap.servers": f"127.0.0.1:{port}",
        # The broker listens on 127.0.0.1 only: never try ::1 for "localhost".
        "broker.address.family": "v4",
        "logger": kafka_client_logger(),
    })
    failure: str | None = None
    try:
        result = call(admin)
    except KafkaException as e:
        failure = _error_text(e)
    else:
        admin.poll(0)  # serves the log queue: hands the queued lines to the logger
    finally:
        del admin  # the last reference: librdkafka's handle is destroyed here
    if failure is not None:
        raise ConnectionError(f"Kafka on port {port}: {failure}")
    return result


def _error_text(e: KafkaException) -> str:
    err = e.args[0] if e.args else None
    return err.str() if isinstance(err, KafkaError) else str(e)


def _metadata_dict(md: ClusterMetadata) -> dict[str, Any]:
    brokers = [(b.id, b.host, b.port) for b in sorted(md.brokers.values(), key=lambda b: b.id)]
    topics = {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}
    return {"brokers": brokers, "topics": topics}


def kafka_metadata(port: int, timeout: float = 3.0) -> dict[str, Any]:
    """Cluster metadata: {'brokers': [(id, host, port)], 'topics': {name: partitions}}.

    Topics whose metadata carries an error are left out. Raises ConnectionError
    (an OSError) when the broker does not answer within ``timeout`` seconds.
    """
    return _with_admin(port, lambda admin: _metadata_dict(admin.list_topics(timeout=timeout)))


def kafka_create_topic(
    port: int, name: str, partitions: int = 1, replication: int = 1, timeout: float = 15.0
) -> bool:
    """Creates topic ``name`` and waits until every partition has a leader.

    Returns True if created, False if it already existed. A broker that refuses the
    topic raises ServiceError; one that cannot be reached, ConnectionError.
    """

    def create(admin: AdminClient) -> KafkaError | None:
        future = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=replication)],
            operation_timeout=timeout,
            request_timeout=timeout + 5,
        )[name]
        # exception() rather than result(): a raised exception would hold this frame
        # (and the client) through its traceback, and the future holds the exception.
        failed = future.exception()
        if failed is not None:
            err = failed.args[0] if failed.args else None
            if not isinstance(err, KafkaError) or err.code() < 0:
                # librdkafka's own error (transport, timeout): the broker is not there.
                raise KafkaException(err if err is not None else str(failed))
            return err  # the broker's answer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # wait until the leaders are known
            topic = admin.list_topics(topic=name, timeout=timeout).topics.get(name)
            if (topic is not None and topic.error is None
                    and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values())):
                break
            time.sleep(0.2)
        return None

    err = _with_admin(port, create)
    if err is None:
        return True
    if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
        return False
    raise ServiceError(f"CreateTopics {name!r} failed: error {err.code()} {err.str()}")


def kafka_ready(port: int) -> bool:
    """Readiness probe: the broker is in its own metadata. Quiet while the broker is
    starting: no client is made before the port accepts connections, and a client
    that fails in its short timeout leaves no log lines."""
    return tcp_open(port) and bool(kafka_metadata(port, timeout=1.0)["brokers"])


# --------------------------------------------------------------------------- broker


def properties_text(value: str) -> str:
    """``value`` for a Java .properties file (read as ISO-8859-1: escape the rest)."""
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in value)


def _sasl_listener(port: int | None, users: Mapping[str, str] | None) -> dict[str, str]:
    """server.properties lines of a SASL_PLAINTEXT (PLAIN) listener for ``users``."""
    if port is None:
        return {"listener": "", "advertised": "", "map": "", "jaas": ""}
    if not users:
        raise ValueError("a SASL listener needs users")
    accounts = " ".join(f'user_{u}="{properties_text(pw)}"' for u, pw in users.items())
    return {"listener": f",SASL_PLAINTEXT://127.0.0.1:{port}",
            "advertised": f",SASL_PLAINTEXT://localhost:{port}",
            "map": ",SASL_PLAINTEXT:SASL_PLAINTEXT",
            "jaas": "sasl.enabled.mechanisms=PLAIN\n"
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {accounts};"}


def start_kafka(
    port: int, controller_port: int, state_dir: Path, log_dir: Path, timeout: float = 90.0,
    sasl_port: int | None = None, sasl_users: Mapping[str, str] | None = None,
) -> ServiceHandle:
    """Single-node KRaft broker+controller; auto topic creation is OFF (use create_topic).

    With ``sasl_port``, a second listener there takes SASL/PLAIN logins of
    ``sasl_users`` (name -> password): for testing the clients' security
    settings; the PLAINTEXT listener stays (readiness, admin).
    """
    sasl = _sasl_listener(sasl_port, sasl_users)
    home = state_dir / "kafka"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
                + sasl["listener"],
                f"advertised.listeners=PLAINTEXT://localhost:{port}" + sasl["advertised"],
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
                + sasl["map"],
                sasl["jaas"],
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Records carry their event time (CreateTime), often long past in
                # replays: time-based retention would delete them at once.
                "log.retention.ms=-1",
                "num.network.threads=2",
                "num.io.threads=2",
                "",
            ]
        )
    )
    log4j = home / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.request.logger=WARN\n"
        "log4j.logger.state.change.logger=WARN\n"
        "log4j.logger.org.apache.kafka.controller=INFO\n"
    )
    cp = classpath(kafka_jars_dir())
    jvm = [
        java_bin(),
        f"-Xms{KAFKA_HEAP}",
        f"-Xmx{KAFKA_HEAP}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        cp,
    ]
    log = log_dir / "kafka.log"
    if not (data / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # a leading "-" reads as an option: format fails
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        fmt = [
            *jvm,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(props),
            "--ignore-formatted",
        ]
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            res = subprocess.run(
                fmt,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        if res.returncode != 0:
            raise ServiceError(f"kafka storage format failed; see {log}:\n{log_tail(log)}")
    cmd = [*jvm, "kafka.Kafka", str(props)]
    proc = spawn("kafka", cmd, log)
    h = ServiceHandle("kafka", proc.pid, port, log, cmd)
    return wait_ready(h, lambda: kafka_ready(port), timeout, "Kafka Metadata")
