"""Where a job's local cluster listens, and where its state goes.

The ports of the local runtime (Kafka, Redis, the schema registry, Flink, the
Beam job and expansion services, the Python worker pools) with their environment
overrides. ``pipelines`` reads them for its ``--runner=FlinkRunner``
defaults; the local-services harness (``runners.services``) starts services on them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from runtime.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
# The name under which a TaskManager reaches the Python worker pool beside it
# (``--environment_config=beam-worker-pool:<port>``). Locally every TaskManager
# resolves it to its own pool's loopback address; in a pod it is 127.0.0.1.
POOL_HOST_NAME = "beam-worker-pool"
# Processes of the local cluster that export metrics: the JobManager and two TaskManagers.
PROMETHEUS_PORTS = 3


def default_state_dir() -> Path:
    """Runtime state (data, pids, logs): $RTF_SERVICES_DIR or <repo>/.services."""
    return Path(os.environ.get("RTF_SERVICES_DIR", str(REPO_ROOT / ".services")))


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


@dataclasses.dataclass(frozen=True)
class ServicePorts:
    """All ports the local runtime listens on (127.0.0.1 only)."""

    kafka: int = 9092
    kafka_controller: int = 9093
    redis: int = 6379
    flink_rest: int = 8081
    flink_rpc: int = 6123
    expansion: int = 8097
    job: int = 8099
    artifact: int = 8098
    worker_pool: int = 50000
    # Flink's Prometheus reporter: the JobManager on this port, TaskManager i on port + 1 + i.
    prometheus: int = 9249
    # The schema registry's API, and its health checks (a port of their own).
    registry: int = 8085
    registry_health: int = 8086

    @classmethod
    def from_env(cls) -> ServicePorts:
        """Defaults overridden by KAFKA_PORT, REDIS_PORT, FLINK_REST_PORT, EXPANSION_PORT, ..."""
        kafka = _env_port("KAFKA_PORT", 9092)
        registry = _env_port("REGISTRY_PORT", 8085)
        return cls(
            kafka=kafka,
            kafka_controller=_env_port("KAFKA_CONTROLLER_PORT", kafka + 1),
            redis=_env_port("REDIS_PORT", 6379),
            flink_rest=_env_port("FLINK_REST_PORT", 8081),
            flink_rpc=_env_port("FLINK_RPC_PORT", 6123),
            expansion=_env_port("EXPANSION_PORT", 8097),
            job=_env_port("JOB_SERVER_PORT", 8099),
            artifact=_env_port("ARTIFACT_PORT", 8098),
            worker_pool=_env_port("WORKER_POOL_PORT", 50000),
            prometheus=_env_port("PROMETHEUS_PORT", 9249),
            registry=registry,
            registry_health=_env_port("REGISTRY_HEALTH_PORT", registry + 1),
        )

    @classmethod
    def free(cls) -> ServicePorts:
        """Distinct free ports, for tests that must not collide with a dev's services."""
        seen: set[int] = set()
        ports: dict[str, int] = {}
        for field in dataclasses.fields(cls):
            block = PROMETHEUS_PORTS if field.name == "prometheus" else 1
            while True:
                p = free_port(block)
                if not seen & set(range(p, p + block)):
                    break
            seen.update(range(p, p + block))
            ports[field.name] = p
        return cls(**ports)

    def prometheus_ports(self) -> list[int]:
        """The Prometheus reporter's ports: the JobManager's, then each TaskManager's."""
        return list(range(self.prometheus, self.prometheus + PROMETHEUS_PORTS))

    @property
    def bootstrap_servers(self) -> str:
        return f"localhost:{self.kafka}"

    @property
    def flink_master(self) -> str:
        return f"localhost:{self.flink_rest}"

    @property
    def expansion_address(self) -> str:
        return f"localhost:{self.expansion}"

    @property
    def worker_pool_address(self) -> str:
        return f"{POOL_HOST_NAME}:{self.worker_pool}"

    @property
    def registry_url(self) -> str:
        """The schema registry's Confluent-compatible API (``--schema_registry_url``)."""
        return f"http://127.0.0.1:{self.registry}/apis/ccompat/v7"

    @property
    def job_endpoint(self) -> str:
        return f"localhost:{self.job}"
