"""Beam's Java services for the local runtime: the expansion service and the Flink
job server.

The expansion service expands KafkaIO for Python pipelines; its Java transforms
run EMBEDDED in the TaskManagers. The job server takes portable pipelines and
submits them to the local Flink session cluster. Both run from the Beam jars in
the runtime cache and are ready once their ports accept connections.
"""

from __future__ import annotations

from pathlib import Path

from runners.process import ServiceHandle, spawn, tcp_open, wait_ready
from runners.runtime_cache import beam_jars_dir, classpath, java_bin
from runtime.endpoints import ServicePorts

BEAM_JAVA_VERSION = "2.62.0"

# Explicit memory budget: the Beam services' share of the box.
EXPANSION_HEAP = "512m"
JOBSERVER_HEAP = "1g"


def start_expansion_service(port: int, log_dir: Path, timeout: float = 90.0) -> ServiceHandle:
    """Beam Java expansion service for KafkaIO; Java transforms run EMBEDDED in the TaskManager."""
    cmd = [
        java_bin(),
        "-Xms256m",
        f"-Xmx{EXPANSION_HEAP}",
        "-cp",
        classpath(beam_jars_dir()),
        "org.apache.beam.sdk.expansion.service.ExpansionService",
        str(port),
        "--defaultEnvironmentType=EMBEDDED",
        "--experiments=use_deprecated_read",
    ]
    log = log_dir / "expansion-service.log"
    h = ServiceHandle("expansion", spawn("expansion", cmd, log).pid, port, log, cmd)
    return wait_ready(h, lambda: tcp_open(port), timeout, "gRPC port")


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
        classpath(beam_jars_dir()),
        "org.apache.beam.runners.flink.FlinkJobServerDriver",
        f"--flink-master=localhost:{ports.flink_rest}",
        f"--job-port={ports.job}",
        f"--artifact-port={ports.artifact}",
        "--expansion-port=0",
        f"--artifacts-dir={artifacts}",
    ]
    log = log_dir / "jobserver.log"
    h = ServiceHandle("jobserver", spawn("jobserver", cmd, log).pid, ports.job, log, cmd)
    return wait_ready(
        h, lambda: tcp_open(ports.job) and tcp_open(ports.artifact), timeout, "job port"
    )
