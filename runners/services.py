"""Local runtime services for rtfeatures: Kafka (KRaft), Redis, Flink, Beam.

Everything runs as plain processes on this machine (no Docker), from the jars
and the Flink distribution that ``runners/install_runtime.sh`` put into the
cache (``$RTF_CACHE``, default ``~/.cache/rtfeatures``).

CLI::

    python -m runners.services up [--only kafka,redis,flink,expansion,jobserver]
    python -m runners.services status
    python -m runners.services down
    python -m runners.services create-topic NAME [--partitions N]
    python -m runners.services env        # shell exports for the running set

API (used by tests)::

    with LocalServices(ports=ServicePorts.free(), state_dir=tmp) as svc:
        svc.create_topic("events", partitions=2)
        ...                                # everything is stopped on exit

Each service is started in its own process group; its pid, port and command
are written to ``<state_dir>/pids/<name>.json`` so ``down`` stops exactly
what ``up`` started (SIGTERM to the group, SIGKILL after a grace period).
Logs of all services go to ``<state_dir>/logs``. Only the standard library is
used: readiness probes speak the Kafka wire protocol (Metadata v0), RESP
(Redis PING) and HTTP (Flink REST ``/overview``) directly.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.endpoints import POOL_HOST_NAME, ServicePorts, default_state_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_ORDER: tuple[str, ...] = ("kafka", "redis", "flink", "expansion", "jobserver")
FLINK_VERSION = "1.19.0"
BEAM_JAVA_VERSION = "2.62.0"

# Explicit memory budget (2 cores / 24 GiB box): ~5.5 GiB for everything.
KAFKA_HEAP = "512m"
REDIS_MAXMEMORY = "512mb"
FLINK_JM_PROCESS_SIZE = "1024m"
FLINK_TM_PROCESS_SIZE = "2048m"
FLINK_TM_SLOTS = 1
FLINK_TASKMANAGERS = 2
EXPANSION_HEAP = "512m"
JOBSERVER_HEAP = "1g"


class ServiceError(RuntimeError):
    """A service failed to start, or is not ready in time."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Where install_runtime.sh put jars and the Flink venv ($RTF_CACHE)."""
    return Path(os.environ.get("RTF_CACHE", str(Path.home() / ".cache" / "rtfeatures")))


def kafka_jars_dir() -> Path:
    return cache_dir() / "jars" / "kafka"


def beam_jars_dir() -> Path:
    return cache_dir() / "jars" / "beam"


def flink_home() -> Path:
    """The Flink distribution shipped inside the pyflink wheel of the Flink venv."""
    if os.environ.get("FLINK_HOME"):
        return Path(os.environ["FLINK_HOME"])
    venv = cache_dir() / "flink-venv"
    found = sorted(venv.glob("lib/python3*/site-packages/pyflink"))
    if not found:
        raise ServiceError(f"no pyflink distribution under {venv}; run runners/install_runtime.sh")
    return found[0]


def java_bin() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found on PATH (Java 17 is required)")
    return java


def _classpath(jar_dir: Path) -> str:
    if not jar_dir.is_dir() or not any(jar_dir.glob("*.jar")):
        raise ServiceError(f"no jars in {jar_dir}; run runners/install_runtime.sh")
    return str(jar_dir / "*")


# --------------------------------------------------------------------------- ports


# --------------------------------------------------------------------------- probes


def tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _kafka_request(port: int, api_key: int, api_version: int, body: bytes, timeout: float) -> bytes:
    """One request/response on the Kafka wire protocol (non-flexible versions)."""
    client_id = b"rtfeatures"
    header = struct.pack(">hhih", api_key, api_version, 7, len(client_id)) + client_id
    payload = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        resp = _recv_exact(s, size)
    (correlation,) = struct.unpack(">i", resp[:4])
    if correlation != 7:
        raise ConnectionError("unexpected Kafka correlation id")
    return resp[4:]


def _kstr(data: bytes, off: int) -> tuple[str, int]:
    (n,) = struct.unpack(">h", data[off : off + 2])
    off += 2
    if n < 0:
        return "", off
    return data[off : off + n].decode(), off + n


def kafka_metadata(port: int, timeout: float = 3.0) -> dict[str, Any]:
    """Metadata v0 for all topics: {'brokers': [(id, host, port)], 'topics': {name: partitions}}."""
    data = _kafka_request(port, 3, 0, struct.pack(">i", 0), timeout)
    off = 0
    (nb,) = struct.unpack(">i", data[off : off + 4])
    off += 4
    brokers = []
    for _ in range(nb):
        (node,) = struct.unpack(">i", data[off : off + 4])
        host, off = _kstr(data, off + 4)
        (bport,) = struct.unpack(">i", data[off : off + 4])
        off += 4
        brokers.append((node, host, bport))
    (nt,) = struct.unpack(">i", data[off : off + 4])
    off += 4
    topics: dict[str, int] = {}
    for _ in range(nt):
        (err,) = struct.unpack(">h", data[off : off + 2])
        name, off = _kstr(data, off + 2)
        (np_,) = struct.unpack(">i", data[off : off + 4])
        off += 4
        for _ in range(np_):
            off += 2 + 4 + 4  # error, partition, leader
            (nr,) = struct.unpack(">i", data[off : off + 4])
            off += 4 + 4 * nr
            (ni,) = struct.unpack(">i", data[off : off + 4])
            off += 4 + 4 * ni
        if err == 0:
            topics[name] = np_
    return {"brokers": brokers, "topics": topics}


def kafka_create_topic(
    port: int, name: str, partitions: int = 1, replication: int = 1, timeout: float = 15.0
) -> bool:
    """CreateTopics v1. Returns True if created, False if it already existed."""
    enc = name.encode()
    body = struct.pack(">i", 1)
    body += struct.pack(">h", len(enc)) + enc
    body += struct.pack(">ih", partitions, replication)
    body += struct.pack(">i", 0)  # replica assignments
    body += struct.pack(">i", 0)  # configs
    body += struct.pack(">i?", int(timeout * 1000), False)  # timeout, validate_only
    data = _kafka_request(port, 19, 1, body, timeout + 5)
    off = 4  # topics array length (1)
    _, off = _kstr(data, off)
    (err,) = struct.unpack(">h", data[off : off + 2])
    msg, _ = _kstr(data, off + 2)
    if err == 36:  # TOPIC_ALREADY_EXISTS
        return False
    if err != 0:
        raise ServiceError(f"CreateTopics {name!r} failed: error {err} {msg}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # wait until the leader is known
        if kafka_metadata(port).get("topics", {}).get(name) == partitions:
            return True
        time.sleep(0.2)
    return True


def redis_ping(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (localhost only)
        return json.loads(resp.read().decode())


def flink_overview(rest_port: int) -> dict[str, Any] | None:
    try:
        return dict(http_json(f"http://127.0.0.1:{rest_port}/overview"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _log_contains(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class ServiceHandle:
    """A started service: its process group, port and log."""

    name: str
    pid: int
    port: int
    log: Path
    cmd: list[str]
    started: float = dataclasses.field(default_factory=time.time)
    ready_seconds: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def alive(self) -> bool:
        return _pid_alive(self.pid)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["log"] = str(self.log)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServiceHandle:
        d = dict(d)
        d["log"] = Path(d["log"])
        return cls(**d)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain; look for a live member.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _spawn(
    name: str,
    cmd: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: "
            f"{' '.join(cmd)}\n".encode()
        )
        out.flush()
        return subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # own process group: `down` kills exactly this tree
        )


def stop_process_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group led by pid, SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _group_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _wait_ready(handle: ServiceHandle, probe: Any, timeout: float, what: str) -> ServiceHandle:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise ServiceError(
                f"{handle.name} exited during startup; see {handle.log}:\n{_tail(handle.log)}"
            )
        try:
            if probe():
                handle.ready_seconds = round(time.time() - handle.started, 1)
                return handle
        except (OSError, ValueError, struct.error):
            pass
        time.sleep(0.3)
    stop_process_group(handle.pid)
    raise ServiceError(
        f"{handle.name} not ready ({what}) after {timeout:.0f}s; "
        f"see {handle.log}:\n{_tail(handle.log)}"
    )


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- services


def _properties_text(value: str) -> str:
    """``value`` for a Java .properties file (read as ISO-8859-1: escape the rest)."""
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in value)


def _sasl_listener(port: int | None, users: Mapping[str, str] | None) -> dict[str, str]:
    """server.properties lines of a SASL_PLAINTEXT (PLAIN) listener for ``users``."""
    if port is None:
        return {"listener": "", "advertised": "", "map": "", "jaas": ""}
    if not users:
        raise ValueError("a SASL listener needs users")
    accounts = " ".join(f'user_{u}="{_properties_text(pw)}"' for u, pw in users.items())
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
    cp = _classpath(kafka_jars_dir())
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
            raise ServiceError(f"kafka storage format failed; see {log}:\n{_tail(log)}")
    cmd = [*jvm, "kafka.Kafka", str(props)]
    proc = _spawn("kafka", cmd, log)
    h = ServiceHandle("kafka", proc.pid, port, log, cmd)
    return _wait_ready(h, lambda: bool(kafka_metadata(port)["brokers"]), timeout, "Kafka Metadata")


def start_redis(port: int, state_dir: Path, log_dir: Path, timeout: float = 30.0) -> ServiceHandle:
    """redis-server on 127.0.0.1 without persistence, maxmemory set explicitly."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise ServiceError("redis-server not installed; run runners/install_runtime.sh")
    home = state_dir / "redis"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(home),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxmemory",
        REDIS_MAXMEMORY,
        "--maxmemory-policy",
        "noeviction",
        "--protected-mode",
        "yes",
    ]
    log = log_dir / "redis.log"
    proc = _spawn("redis", cmd, log)
    h = ServiceHandle("redis", proc.pid, port, log, cmd)
    return _wait_ready(h, lambda: redis_ping(port), timeout, "PING")


def _flink_config(ports: ServicePorts, state_dir: Path,
                  extra: Mapping[str, Any] | None = None) -> str:
    home = flink_home()
    java_opts = ""
    for line in (home / "conf" / "config.yaml").read_text().splitlines():
        if line.strip().startswith("all: --add-"):
            java_opts = line.split("all:", 1)[1].strip()
    fl = state_dir / "flink"
    conf = {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": ports.flink_rpc,
        "jobmanager.bind-host": "localhost",
        "jobmanager.memory.process.size": FLINK_JM_PROCESS_SIZE,
        "taskmanager.host": "localhost",
        "taskmanager.bind-host": "localhost",
        "taskmanager.memory.process.size": FLINK_TM_PROCESS_SIZE,
        "taskmanager.numberOfTaskSlots": FLINK_TM_SLOTS,
        "parallelism.default": 1,
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": ports.flink_rest,
        "blob.server.port": "0",
        "state.backend.type": "rocksdb",
        "state.backend.incremental": "true",
        "state.checkpoints.dir": f"file://{fl / 'checkpoints'}",
        "state.savepoints.dir": f"file://{fl / 'savepoints'}",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "state.checkpoints.num-retained": 3,
        "io.tmp.dirs": str(fl / "tmp"),
        "web.tmpdir": str(fl / "web"),
        "classloader.check-leaked-classloader": "false",
        "jobmanager.execution.failover-strategy": "region",
        # A job must outlive any number of TaskManager losses, spaced out.
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "30 s",
        "restart-strategy.exponential-delay.reset-backoff-threshold": "5 min",
        # Every Beam job loads its own classes: many jobs per session need room.
        "taskmanager.memory.jvm-metaspace.size": "768m",
        "env.java.opts.all": java_opts,
        # Metrics for Prometheus (the reporter ships in Flink's plugins/ directory); each
        # TaskManager gets its own port on its command line.
        "metrics.reporter.prom.factory.class":
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": ports.prometheus,
        **(extra or {}),
    }
    return "".join(f"{k}: {json.dumps(v) if isinstance(v, str) else v}\n" for k, v in conf.items())


def start_flink(
    ports: ServicePorts, state_dir: Path, log_dir: Path, timeout: float = 120.0,
    extra_config: Mapping[str, Any] | None = None,
) -> list[ServiceHandle]:
    """Standalone session cluster, RocksDB default: 1 JobManager, 2 TaskManagers with one slot
    each, and a Python worker pool beside each TaskManager.

    ``extra_config``: Flink settings added to (or replacing) the generated ones.
    """
    home = flink_home()
    conf_dir = state_dir / "flink" / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("checkpoints", "savepoints", "tmp", "web", "pids"):
        (state_dir / "flink" / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "config.yaml").write_text(_flink_config(ports, state_dir, extra_config))
    (conf_dir / "log4j-console.properties").write_text(
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.console.ref = ConsoleAppender\n"
        "appender.console.name = ConsoleAppender\n"
        "appender.console.type = CONSOLE\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n\n"
        "logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline\n"
        "logger.netty.level = OFF\n"
    )
    env = {
        "FLINK_CONF_DIR": str(conf_dir),
        "FLINK_LOG_DIR": str(log_dir),
        "FLINK_PID_DIR": str(state_dir / "flink" / "pids"),
    }
    jm_log = log_dir / "flink-jobmanager.log"
    jm_cmd = ["bash", str(home / "bin" / "jobmanager.sh"), "start-foreground"]
    jm = ServiceHandle("flink-jobmanager", _spawn("flink-jobmanager", jm_cmd, jm_log, env).pid,
                       ports.flink_rest, jm_log, jm_cmd, env=env)
    started = [jm]
    try:
        for i in range(FLINK_TASKMANAGERS):
            started.append(start_worker_pool(i, ports.worker_pool, log_dir))
            started.append(_spawn_taskmanager(i, home, env, state_dir, log_dir, ports))

        def ready() -> bool:
            for h in started:
                if not h.alive():
                    raise ServiceError(f"{h.name} exited; see {h.log}:\n{_tail(h.log)}")
            ov = flink_overview(ports.flink_rest)
            return bool(ov and ov.get("taskmanagers", 0) >= FLINK_TASKMANAGERS
                        and ov.get("slots-total", 0) >= FLINK_TASKMANAGERS * FLINK_TM_SLOTS)

        _wait_ready(jm, ready, timeout, f"REST /overview with {FLINK_TASKMANAGERS} TaskManagers")
    except BaseException:
        for h in started[1:]:
            stop_process_group(h.pid)
        raise
    for h in started[1:]:
        h.ready_seconds = jm.ready_seconds
    return started


def pool_address(index: int) -> str:
    """The loopback address of TaskManager ``index``'s worker pool (127.0.0.<index+1>)."""
    return f"127.0.0.{index + 1}"


def start_worker_pool(index: int, port: int, log_dir: Path, timeout: float = 60.0
                      ) -> ServiceHandle:
    """The Python worker pool beside TaskManager ``index`` (``runtime.worker_pool``), on its
    own loopback address and the shared pool port."""
    name = f"worker-pool-{index}"
    host = pool_address(index)
    cmd = [sys.executable, "-m", "runtime.worker_pool", f"--host={host}", f"--port={port}"]
    log = log_dir / f"{name}.log"
    # The work tree is on the workers' path: DoFns that tests define resolve there too.
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                     os.environ.get("PYTHONPATH")) if p)}
    h = ServiceHandle(name, _spawn(name, cmd, log, env, cwd=REPO_ROOT).pid, port, log, cmd,
                      env=env)
    return _wait_ready(h, lambda: tcp_open(port, host), timeout, "gRPC port")


def _spawn_taskmanager(index: int, home: Path, env: dict[str, str], state_dir: Path,
                       log_dir: Path, ports: ServicePorts) -> ServiceHandle:
    """TaskManager ``index``. Its JVM resolves ``beam-worker-pool`` to its own pool's address
    (a hosts file of its own, ``-Djdk.net.hosts.file``), as a pod's sidecar is ``localhost``."""
    hosts = state_dir / "flink" / f"hosts-{index}"
    hosts.write_text(f"127.0.0.1 localhost {socket.gethostname()}\n"
                     f"{pool_address(index)} {POOL_HOST_NAME}\n")
    name = f"flink-taskmanager-{index}"
    tm_env = {**env, "JVM_ARGS": f"-Djdk.net.hosts.file={hosts}"}
    log = log_dir / f"{name}.log"
    cmd = ["bash", str(home / "bin" / "taskmanager.sh"), "start-foreground",
           f"-Dmetrics.reporter.prom.port={ports.prometheus + 1 + index}"]
    return ServiceHandle(name, _spawn(name, cmd, log, tm_env).pid, ports.flink_rest, log, cmd,
                         env=tm_env)


def start_expansion_service(port: int, log_dir: Path, timeout: float = 90.0) -> ServiceHandle:
    """Beam Java expansion service for KafkaIO; Java transforms run EMBEDDED in the TaskManager."""
    cmd = [
        java_bin(),
        "-Xms256m",
        f"-Xmx{EXPANSION_HEAP}",
        "-cp",
        _classpath(beam_jars_dir()),
        "org.apache.beam.sdk.expansion.service.ExpansionService",
        str(port),
        "--defaultEnvironmentType=EMBEDDED",
        "--experiments=use_deprecated_read",
    ]
    log = log_dir / "expansion-service.log"
    h = ServiceHandle("expansion", _spawn("expansion", cmd, log).pid, port, log, cmd)
    return _wait_ready(h, lambda: tcp_open(port), timeout, "gRPC port")


def start_job_server(
    ports: ServicePorts, state_dir: Path, log_dir: Path, timeout: float = 90.0
) -> ServiceHandle:
    """Beam portable Flink job server, submitting to the standalone cluster."""
    artifacts = state_dir / "jobserver" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [
        java_bin(),
        "-Xms256m",
        f"-Xmx{JOBSERVER_HEAP}",
        "-cp",
        _classpath(beam_jars_dir()),
        "org.apache.beam.runners.flink.FlinkJobServerDriver",
        f"--flink-master=localhost:{ports.flink_rest}",
        f"--job-port={ports.job}",
        f"--artifact-port={ports.artifact}",
        "--expansion-port=0",
        f"--artifacts-dir={artifacts}",
    ]
    log = log_dir / "jobserver.log"
    h = ServiceHandle("jobserver", _spawn("jobserver", cmd, log).pid, ports.job, log, cmd)
    return _wait_ready(
        h, lambda: tcp_open(ports.job) and tcp_open(ports.artifact), timeout, "job port"
    )


# --------------------------------------------------------------------------- the set


class LocalServices:
    """Start/stop a set of local services; usable as a context manager.

    State (pid files, data, checkpoints) lives under ``state_dir``; logs under
    ``state_dir/logs``. ``down()`` stops every service recorded in the pid files.
    ``flink_config`` adds Flink settings to the generated ``config.yaml``
    (benchmarks: a 1 s REST metrics refresh instead of 10 s).
    """

    def __init__(
        self,
        ports: ServicePorts | None = None,
        state_dir: Path | None = None,
        services: Iterable[str] = SERVICE_ORDER,
        flink_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.ports = ports or self._recorded_ports() or ServicePorts.from_env()
        self.services = [s for s in SERVICE_ORDER if s in set(services)]
        unknown = set(services) - set(SERVICE_ORDER)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        self.handles: dict[str, ServiceHandle] = {}
        self.flink_config = dict(flink_config or {})

    # paths
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "flink" / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return self.state_dir / "flink" / "savepoints"

    def _recorded_ports(self) -> ServicePorts | None:
        f = self.state_dir / "ports.json"
        if f.exists() and any(self.state_dir.glob("pids/*.json")):
            return ServicePorts(**json.loads(f.read_text()))
        return None

    def _record(self, h: ServiceHandle) -> None:
        self.handles[h.name] = h
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        (self.pid_dir / f"{h.name}.json").write_text(json.dumps(h.to_json(), indent=1))

    def recorded(self) -> dict[str, ServiceHandle]:
        out = {}
        for f in sorted(self.pid_dir.glob("*.json")):
            with contextlib.suppress(ValueError, TypeError, OSError):
                out[f.stem] = ServiceHandle.from_json(json.loads(f.read_text()))
        return out

    # lifecycle
    def up(self) -> dict[str, ServiceHandle]:
        """Start the selected services that are not already running; wait for readiness."""
        running = {n: h for n, h in self.recorded().items() if h.alive()}
        for name in self.recorded():
            if name not in running:
                (self.pid_dir / f"{name}.json").unlink(missing_ok=True)
        self.handles.update(running)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "ports.json").write_text(json.dumps(dataclasses.asdict(self.ports)))
        try:
            for name in self.services:
                if name == "flink":
                    if "flink-jobmanager" in running:
                        continue
                    for h in start_flink(self.ports, self.state_dir, self.log_dir,
                                         extra_config=self.flink_config):
                        self._record(h)
                    continue
                if name in running:
                    continue
                if name == "kafka":
                    self._record(
                        start_kafka(
                            self.ports.kafka,
                            self.ports.kafka_controller,
                            self.state_dir,
                            self.log_dir,
                        )
                    )
                elif name == "redis":
                    self._record(start_redis(self.ports.redis, self.state_dir, self.log_dir))
                elif name == "expansion":
                    self._record(start_expansion_service(self.ports.expansion, self.log_dir))
                elif name == "jobserver":
                    self._record(start_job_server(self.ports, self.state_dir, self.log_dir))
        except BaseException:
            self.down()
            raise
        return dict(self.handles)

    def down(self) -> list[str]:
        """Stop everything recorded under state_dir (reverse start order). Returns names stopped."""
        stopped = []
        recorded = {**self.recorded(), **self.handles}
        order = [
            "jobserver",
            "expansion",
            "flink-taskmanager-1",
            "worker-pool-1",
            "flink-taskmanager-0",
            "worker-pool-0",
            "flink-jobmanager",
            "redis",
            "kafka",
        ]
        for name in sorted(recorded, key=lambda n: order.index(n) if n in order else -1):
            h = recorded[name]
            if _group_alive(h.pid):
                stop_process_group(h.pid)
                stopped.append(name)
            (self.pid_dir / f"{name}.json").unlink(missing_ok=True)
        self.handles.clear()
        return stopped

    def kill(self, name: str) -> None:
        """SIGKILLs service ``name``'s whole process group, as a crash would."""
        h = self.recorded()[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(h.pid, signal.SIGKILL)
        stop_process_group(h.pid, grace=5)

    def restart(self, name: str) -> ServiceHandle:
        """Kills service ``name`` if anything of it is left and starts it again with the
        command and environment it was started with (fault tests: a TaskManager, a pool)."""
        old = self.recorded()[name]
        self.kill(name)
        h = ServiceHandle(name, _spawn(name, old.cmd, old.log, old.env).pid, old.port, old.log,
                          old.cmd, env=old.env)
        if name.startswith("worker-pool-"):
            host = pool_address(int(name.rsplit("-", 1)[1]))
            _wait_ready(h, lambda: tcp_open(h.port, host), 60, "gRPC port")
        self._record(h)
        return h

    def status(self) -> dict[str, dict[str, Any]]:
        """Per recorded service: pid, port, alive, and a live probe result."""
        out: dict[str, dict[str, Any]] = {}
        for name, h in self.recorded().items():
            alive = h.alive()
            probe: Any = None
            if alive:
                with contextlib.suppress(OSError, ValueError, struct.error):
                    if name == "kafka":
                        probe = {"topics": kafka_metadata(h.port)["topics"]}
                    elif name == "redis":
                        probe = {"ping": redis_ping(h.port)}
                    elif name == "flink-jobmanager":
                        ov = flink_overview(h.port) or {}
                        probe = {
                            k: ov.get(k)
                            for k in (
                                "taskmanagers",
                                "slots-total",
                                "slots-available",
                                "jobs-running",
                                "flink-version",
                            )
                        }
                    else:
                        probe = {"tcp": tcp_open(h.port)}
            out[name] = {
                "pid": h.pid,
                "port": h.port,
                "alive": alive,
                "log": str(h.log),
                "probe": probe,
            }
        return out

    def create_topic(self, name: str, partitions: int = 1) -> bool:
        """Create a Kafka topic (auto creation is off). False if it already existed."""
        return kafka_create_topic(self.ports.kafka, name, partitions)

    def env(self) -> dict[str, str]:
        """Environment variables describing this set (for pipelines and tests)."""
        return {
            "KAFKA_PORT": str(self.ports.kafka),
            "REDIS_PORT": str(self.ports.redis),
            "FLINK_REST_PORT": str(self.ports.flink_rest),
            "EXPANSION_PORT": str(self.ports.expansion),
            "JOB_SERVER_PORT": str(self.ports.job),
            "BOOTSTRAP_SERVERS": self.ports.bootstrap_servers,
            "RTF_SERVICES_DIR": str(self.state_dir),
        }

    def __enter__(self) -> LocalServices:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


_default: LocalServices | None = None


def stop_all(state_dir: Path | None = None) -> list[str]:
    """Stop every service recorded under state_dir (default: $RTF_SERVICES_DIR or .services)."""
    return LocalServices(state_dir=state_dir).down()


@contextlib.contextmanager
def local_services(**kwargs: Any) -> Iterator[LocalServices]:
    """Context manager form of LocalServices(**kwargs)."""
    svc = LocalServices(**kwargs)
    try:
        svc.up()
        yield svc
    finally:
        svc.down()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runners.services", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default: $RTF_SERVICES_DIR or ./.services"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start services and wait until ready")
    p_up.add_argument("--only", default=",".join(SERVICE_ORDER), help="comma-separated subset")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="show recorded services and probe them")
    sub.add_parser("env", help="print shell exports for the running set")
    p_t = sub.add_parser("create-topic", help="create a Kafka topic")
    p_t.add_argument("name")
    p_t.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args(argv)

    if args.cmd == "up":
        svc = LocalServices(
            state_dir=args.state_dir, services=[s for s in args.only.split(",") if s]
        )
        t0 = time.monotonic()
        try:
            handles = svc.up()
        except ServiceError as e:
            print(f"services up FAILED: {e}", file=sys.stderr)
            return 1
        for name, h in handles.items():
            ready = (
                f"ready in {h.ready_seconds}s" if h.ready_seconds is not None else "already running"
            )
            print(f"{name:18s} pid={h.pid:<7d} port={h.port:<6d} {ready}  log={h.log}")
        print(f"all up in {time.monotonic() - t0:.1f}s; logs in {svc.log_dir}")
        return 0
    svc = LocalServices(state_dir=args.state_dir)
    if args.cmd == "down":
        stopped = svc.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.cmd == "status":
        st = svc.status()
        if not st:
            print("no services recorded under", svc.state_dir)
            return 1
        for name, s in st.items():
            state = "UP  " if s["alive"] else "DOWN"
            print(
                f"{state} {name:18s} pid={s['pid']:<7d} port={s['port']:<6d} "
                f"{json.dumps(s['probe'])}"
            )
        return 0 if all(s["alive"] for s in st.values()) else 1
    if args.cmd == "env":
        for k, v in svc.env().items():
            print(f"export {k}={v}")
        return 0
    if args.cmd == "create-topic":
        created = svc.create_topic(args.name, args.partitions)
        print(
            f"topic {args.name}: {'created' if created else 'already exists'} "
            f"({args.partitions} partitions)"
        )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
