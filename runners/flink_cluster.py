"""The local Flink session cluster: one JobManager, two TaskManagers, and a Python
worker pool beside each TaskManager.

``start_flink`` generates the cluster's ``config.yaml`` (RocksDB incremental
state, checkpoint and savepoint directories under the state directory, restart
strategy, Prometheus reporter, memory sizes) and its log4j settings, then starts
the processes from the Flink distribution that the Flink venv's pyflink wheel
carries. Each TaskManager resolves ``beam-worker-pool`` to its own pool's
loopback address, as a pod resolves its sidecar to ``localhost``. The cluster is
ready when the REST ``/overview`` counts every TaskManager and slot.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runners.process import (
    ServiceError,
    ServiceHandle,
    log_tail,
    spawn,
    stop_process_group,
    tcp_open,
    wait_ready,
)
from runners.runtime_cache import flink_home
from runtime.endpoints import POOL_HOST_NAME, ServicePorts
from runtime.metrics import PROMETHEUS_REPORTER
from runtime.worker_pool import worker_pool_command

REPO_ROOT = Path(__file__).resolve().parents[1]
FLINK_VERSION = "1.19.0"

# Explicit memory budget: Flink's share of the box.
FLINK_JM_PROCESS_SIZE = "1024m"
FLINK_TM_PROCESS_SIZE = "3584m"
FLINK_TM_SLOTS = 1
FLINK_TASKMANAGERS = 2


def http_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (localhost only)
        return json.loads(resp.read().decode())


def flink_overview(rest_port: int) -> dict[str, Any] | None:
    """The REST ``/overview`` of the cluster on ``rest_port``, or None if it does not answer."""
    try:
        return dict(http_json(f"http://127.0.0.1:{rest_port}/overview"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


# Every Beam job loads its own copy of gRPC's netty (vendored, relocated), whose
# pooled direct buffers outlive the job: a TaskManager's direct memory grows with
# each job it ran, and once it is spent the next job's Python workers cannot
# start (gRPC fails to answer them; the task then waits for them for ever). One
# arena per job instead of one per core, and room for many jobs per session.
NETTY_DIRECT_MEMORY = {
    "taskmanager.memory.task.off-heap.size": "512m",
    "env.java.opts.taskmanager":
        "-Dorg.apache.beam.vendor.grpc.v1p60p1.io.netty.allocator.numDirectArenas=1",
}

# Every Beam job loads Beam's classes into a class loader of its own, and threads
# the job's vendored gRPC starts (grpc-timer, grpc-shared-destroyer,
# grpc-default-executor) outlive the job and keep that loader, its classes and
# what they reference: metaspace and heap grow with every job a TaskManager ran
# (apache/beam#25510), until the TaskManager fails with "OutOfMemoryError:
# Metaspace" and restarts. Room for a session's worth of jobs; a long-lived
# cluster restarts its TaskManagers before Metaspace.Used reaches Metaspace.Max
# (deploy/grafana-dashboard.json plots both).
JVM_METASPACE = {"taskmanager.memory.jvm-metaspace.size": "768m"}

# RocksDB's native memory as metrics: memtables and blocks (both charged to the slot's
# managed-memory cache), one series per state with the state's name as a label.
ROCKSDB_METRICS = {
    "state.backend.rocksdb.metrics.block-cache-usage": "true",
    "state.backend.rocksdb.metrics.size-all-mem-tables": "true",
    "state.backend.rocksdb.metrics.column-family-as-variable": "true",
}


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
        **JVM_METASPACE,
        "env.java.opts.all": java_opts,
        **NETTY_DIRECT_MEMORY,
        # Metrics for Prometheus (the reporter ships in Flink's plugins/ directory); each
        # TaskManager gets its own port on its command line.
        "metrics.reporter.prom.factory.class": PROMETHEUS_REPORTER,
        # A string: the reporter ignores a bare number here and falls back to 9249.
        "metrics.reporter.prom.port": str(ports.prometheus),
        **ROCKSDB_METRICS,
        **(extra or {}),
    }
    return "".join(f"{k}: {json.dumps(v) if isinstance(v, str) else v}\n" for k, v in conf.items())


def jemalloc_env() -> dict[str, str]:
    """``LD_PRELOAD`` of jemalloc for Flink's JVMs, as Flink's own image (the deployment's)
    sets it, and as there ``DISABLE_JEMALLOC=true`` turns it off: RocksDB's native memory
    is allocated the same way locally as when deployed. Empty when jemalloc is not
    installed: glibc's malloc then."""
    if os.environ.get("DISABLE_JEMALLOC", "false") != "false":
        return {}
    lib = Path(f"/usr/lib/{os.uname().machine}-linux-gnu/libjemalloc.so.2")
    if not lib.exists():
        return {}
    preload = os.environ.get("LD_PRELOAD", "")
    return {"LD_PRELOAD": f"{preload}:{lib}" if preload else str(lib)}


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
        **jemalloc_env(),
    }
    jm_log = log_dir / "flink-jobmanager.log"
    jm_cmd = ["bash", str(home / "bin" / "jobmanager.sh"), "start-foreground"]
    jm = ServiceHandle("flink-jobmanager", spawn("flink-jobmanager", jm_cmd, jm_log, env).pid,
                       ports.flink_rest, jm_log, jm_cmd, env=env)
    started = [jm]
    try:
        for i in range(FLINK_TASKMANAGERS):
            started.append(start_worker_pool(i, ports.worker_pool, log_dir))
            started.append(_spawn_taskmanager(i, home, env, state_dir, log_dir, ports))

        def ready() -> bool:
            for h in started:
                if not h.alive():
                    raise ServiceError(f"{h.name} exited; see {h.log}:\n{log_tail(h.log)}")
            ov = flink_overview(ports.flink_rest)
            return bool(ov and ov.get("taskmanagers", 0) >= FLINK_TASKMANAGERS
                        and ov.get("slots-total", 0) >= FLINK_TASKMANAGERS * FLINK_TM_SLOTS)

        wait_ready(jm, ready, timeout, f"REST /overview with {FLINK_TASKMANAGERS} TaskManagers")
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
    cmd = worker_pool_command(host, port, python=sys.executable)
    log = log_dir / f"{name}.log"
    # The work tree is on the workers' path: DoFns that tests define resolve there too.
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                     os.environ.get("PYTHONPATH")) if p)}
    h = ServiceHandle(name, spawn(name, cmd, log, env, cwd=REPO_ROOT).pid, port, log, cmd,
                      env=env)
    return wait_ready(h, lambda: tcp_open(port, host), timeout, "gRPC port")


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
    return ServiceHandle(name, spawn(name, cmd, log, tm_env).pid, ports.flink_rest, log, cmd,
                         env=tm_env)
