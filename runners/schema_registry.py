"""The local schema registry: Apicurio Registry, which speaks the Confluent API.

``start_registry`` runs the released Apicurio application (unpacked from Maven
Central by ``runners/install_runtime.sh``) on 127.0.0.1 with in-memory storage:

- the Confluent-compatible API at ``http://127.0.0.1:<port>/apis/ccompat/v7``,
  which ``confluent_kafka``'s ``SchemaRegistryClient`` and the pipelines'
  ``--schema_registry_url`` use;
- health on its own port (Quarkus's management interface, which the released
  build always opens): readiness is ``/health/ready`` there;
- BACKWARD compatibility as the global rule, so every subject (``<topic>-value``)
  refuses a new version that readers of the previous one could not read;
- optionally HTTP basic auth with the given users. Their passwords go to a
  ``config/application.properties`` readable only by its owner (Quarkus reads it
  from the working directory), never to the command line, the environment, the
  pid files or the log.

Nothing persists: a restarted registry is empty, and producers register their
schemas again when they start (the ids it gives then may differ).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from runners.flink_cluster import http_json
from runners.process import ServiceHandle, spawn, wait_ready
from runners.runtime_cache import registry_home, registry_java

REGISTRY_HEAP = "384m"
ROLES = ("sr-admin", "sr-developer", "sr-readonly")


@dataclasses.dataclass(frozen=True)
class RegistryUser:
    """A basic-auth user of the registry: ``sr-admin`` may change rules,
    ``sr-developer`` register schemas, ``sr-readonly`` read them."""

    name: str
    password: str = dataclasses.field(repr=False)
    role: str = "sr-developer"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"registry user {self.name!r}: role must be one of {ROLES}")

    @property
    def user_info(self) -> str:
        """``basic.auth.user.info`` for ``SchemaRegistryClient``."""
        return f"{self.name}:{self.password}"


def registry_ready(health_port: int, timeout: float = 2.0) -> bool:
    """Whether the registry's readiness check (storage included) says UP."""
    try:
        return http_json(f"http://127.0.0.1:{health_port}/health/ready",
                         timeout=timeout).get("status") == "UP"
    except (OSError, ValueError):  # urllib's errors are OSErrors; a 503 is one too
        return False


def registry_properties(port: int, health_port: int, users: tuple[RegistryUser, ...]) -> str:
    """The registry's Quarkus configuration (its passwords included: written 0600)."""
    props = {
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": port,
        "quarkus.management.host": "127.0.0.1",
        "quarkus.management.port": health_port,
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        "apicurio.datasource.url": "jdbc:h2:mem:registry",
        "apicurio.rules.global.compatibility": "BACKWARD",
        # The demo and the tests delete their subjects.
        "apicurio.rest.deletion.artifact.enabled": "true",
        "apicurio.rest.deletion.artifact-version.enabled": "true",
        "quarkus.log.console.color": "false",
    }
    if users:
        props.update({
            "quarkus.oidc.tenant-enabled": "false",
            "quarkus.http.auth.basic": "true",
            "apicurio.auth.role-based-authorization": "true",
            "quarkus.security.users.embedded.enabled": "true",
            "quarkus.security.users.embedded.plain-text": "true",
        })
        for u in users:
            props[f"quarkus.security.users.embedded.users.{u.name}"] = u.password
            props[f"quarkus.security.users.embedded.roles.{u.name}"] = u.role
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start_registry(port: int, health_port: int, state_dir: Path, log_dir: Path,
                   users: tuple[RegistryUser, ...] = (), timeout: float = 120.0
                   ) -> ServiceHandle:
    """Apicurio Registry on 127.0.0.1:``port`` (API) and ``health_port`` (health),
    in memory, BACKWARD by default; waits until it is ready."""
    home = state_dir / "registry"
    config = home / "config" / "application.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.unlink(missing_ok=True)
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(registry_properties(port, health_port, users))
    cmd = [registry_java(), f"-Xmx{REGISTRY_HEAP}", "-Xms64m", "-XX:+UseSerialGC",
           "-XX:TieredStopAtLevel=1", "-jar", str(registry_home() / "quarkus-run.jar")]
    log = log_dir / "registry.log"
    proc = spawn("registry", cmd, log, cwd=home)
    handle = ServiceHandle("registry", proc.pid, port, log, cmd)
    return wait_ready(handle, lambda: registry_ready(health_port), timeout, "/health/ready")
