"""Local runtime services for rtfeatures: Kafka (KRaft), Redis, Flink, Beam.

Everything runs as plain processes on this machine (no Docker), from the jars
and the Flink distribution that ``runners/install_runtime.sh`` put into the
cache (``$RTF_CACHE``, default ``~/.cache/rtfeatures``).

CLI::

    python -m runners.services up [--only kafka,redis,registry,flink,expansion,jobserver]
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
Logs of all services go to ``<state_dir>/logs``. Readiness probes: Kafka's
metadata (``confluent_kafka`` AdminClient), Redis PING (``redis``), the schema
registry's ``/health/ready``, Flink's REST ``/overview``, and open ports for the rest.

This module is the set and its CLI; each service lives in a module of its own
(``runners.kafka_broker``, ``runners.redis_server``, ``runners.schema_registry``,
``runners.flink_cluster``, ``runners.beam_services``), on top of the process supervision in
``runners.process`` and the cache paths in ``runners.runtime_cache``. The names
callers use are importable from here too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runners.beam_services import (
    BEAM_JAVA_VERSION,
    EXPANSION_HEAP,
    JOBSERVER_HEAP,
    start_expansion_service,
    start_job_server,
)
from runners.flink_cluster import (
    FLINK_JM_PROCESS_SIZE,
    FLINK_TASKMANAGERS,
    FLINK_TM_PROCESS_SIZE,
    FLINK_TM_SLOTS,
    FLINK_VERSION,
    REPO_ROOT,
    flink_overview,
    http_json,
    pool_address,
    start_flink,
    start_worker_pool,
)
from runners.kafka_broker import (
    KAFKA_HEAP,
    kafka_create_topic,
    kafka_metadata,
    kafka_ready,
    properties_text,
    start_kafka,
)
from runners.process import (
    ServiceError,
    ServiceHandle,
    group_alive,
    log_tail,
    pid_alive,
    spawn,
    stop_process_group,
    tcp_open,
    wait_ready,
)
from runners.redis_server import REDIS_MAXMEMORY, redis_ping, start_redis
from runners.runtime_cache import (
    beam_jars_dir,
    cache_dir,
    classpath,
    flink_home,
    java_bin,
    kafka_jars_dir,
)
from runners.schema_registry import REGISTRY_HEAP, RegistryUser, registry_ready, start_registry
from runtime.endpoints import POOL_HOST_NAME, ServicePorts, default_state_dir
from runtime.ports import free_port

__all__ = [
    "BEAM_JAVA_VERSION", "EXPANSION_HEAP", "FLINK_JM_PROCESS_SIZE", "FLINK_TASKMANAGERS",
    "FLINK_TM_PROCESS_SIZE", "FLINK_TM_SLOTS", "FLINK_VERSION", "JOBSERVER_HEAP", "KAFKA_HEAP",
    "POOL_HOST_NAME", "REDIS_MAXMEMORY", "REGISTRY_HEAP", "REPO_ROOT", "SERVICE_ORDER",
    "LocalServices", "RegistryUser",
    "ServiceError", "ServiceHandle", "ServicePorts", "beam_jars_dir", "cache_dir", "classpath",
    "default_state_dir", "flink_home", "flink_overview", "free_port", "group_alive",
    "http_json", "java_bin", "kafka_create_topic", "kafka_jars_dir", "kafka_metadata",
    "kafka_ready", "local_services", "log_tail", "main", "pid_alive", "pool_address",
    "properties_text", "redis_ping", "spawn", "start_expansion_service", "start_flink",
    "start_job_server", "start_kafka", "start_redis", "start_worker_pool", "stop_all",
    "stop_process_group", "tcp_open", "wait_ready",
]

# Names these helpers had while they were private to this module, still used by tests.
_spawn = spawn
_pid_alive = pid_alive
_classpath = classpath
_properties_text = properties_text

SERVICE_ORDER: tuple[str, ...] = ("kafka", "redis", "registry", "flink", "expansion",
                                   "jobserver")
# Memory budget (2 cores / 24 GiB box), ~10 GiB for everything: KAFKA_HEAP, REDIS_MAXMEMORY,
# REGISTRY_HEAP, FLINK_JM_PROCESS_SIZE + FLINK_TASKMANAGERS x FLINK_TM_PROCESS_SIZE,
# EXPANSION_HEAP, JOBSERVER_HEAP.


# --------------------------------------------------------------------------- the set


class LocalServices:
    """Start/stop a set of local services; usable as a context manager.

    State (pid files, data, checkpoints) lives under ``state_dir``; logs under
    ``state_dir/logs``. ``down()`` stops every service recorded in the pid files.
    ``flink_config`` adds Flink settings to the generated ``config.yaml``
    (benchmarks: a 1 s REST metrics refresh instead of 10 s). ``registry_users``
    turns on the schema registry's basic auth with those users.
    """

    def __init__(
        self,
        ports: ServicePorts | None = None,
        state_dir: Path | None = None,
        services: Iterable[str] = SERVICE_ORDER,
        flink_config: Mapping[str, Any] | None = None,
        registry_users: Iterable[RegistryUser] = (),
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.ports = ports or self._recorded_ports() or ServicePorts.from_env()
        self.services = [s for s in SERVICE_ORDER if s in set(services)]
        unknown = set(services) - set(SERVICE_ORDER)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        self.handles: dict[str, ServiceHandle] = {}
        self.flink_config = dict(flink_config or {})
        self.registry_users = tuple(registry_users)

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
                elif name == "registry":
                    self._record(start_registry(self.ports.registry, self.ports.registry_health,
                                                self.state_dir, self.log_dir,
                                                self.registry_users))
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
            "registry",
            "redis",
            "kafka",
        ]
        for name in sorted(recorded, key=lambda n: order.index(n) if n in order else -1):
            h = recorded[name]
            if group_alive(h.pid):
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
        h = ServiceHandle(name, spawn(name, old.cmd, old.log, old.env).pid, old.port, old.log,
                          old.cmd, env=old.env)
        if name.startswith("worker-pool-"):
            host = pool_address(int(name.rsplit("-", 1)[1]))
            wait_ready(h, lambda: tcp_open(h.port, host), 60, "gRPC port")
        self._record(h)
        return h

    def status(self) -> dict[str, dict[str, Any]]:
        """Per recorded service: pid, port, alive, and a live probe result."""
        out: dict[str, dict[str, Any]] = {}
        for name, h in self.recorded().items():
            alive = h.alive()
            probe: Any = None
            if alive:
                with contextlib.suppress(OSError, ValueError):
                    if name == "kafka":
                        probe = {"topics": kafka_metadata(h.port)["topics"]}
                    elif name == "redis":
                        probe = {"ping": redis_ping(h.port)}
                    elif name == "registry":
                        probe = {"ready": registry_ready(self.ports.registry_health),
                                 "url": self.ports.registry_url}
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
            "REGISTRY_PORT": str(self.ports.registry),
            "REGISTRY_HEALTH_PORT": str(self.ports.registry_health),
            "SCHEMA_REGISTRY_URL": self.ports.registry_url,
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
