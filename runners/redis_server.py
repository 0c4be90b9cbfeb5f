"""The local Redis of the runtime: the features' store for the pipelines and serving.

``start_redis`` runs ``redis-server`` on 127.0.0.1 without persistence and with
an explicit memory limit, under the state directory, and waits until it answers
PING. (``runners.local_redis`` is a different thing: a throwaway server for
demos and tests, owned by the process that starts it.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runners.process import ServiceError, ServiceHandle, spawn, wait_ready

# Explicit memory budget: Redis's share of the box.
REDIS_MAXMEMORY = "512mb"


def redis_ping(port: int, timeout: float = 2.0) -> bool:
    """Whether the Redis on ``port`` answers PING (one attempt, no retries)."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                         socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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
    proc = spawn("redis", cmd, log)
    h = ServiceHandle("redis", proc.pid, port, log, cmd)
    return wait_ready(h, lambda: redis_ping(port), timeout, "PING")
