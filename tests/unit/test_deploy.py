"""deploy/ describes what runs locally: the worker-pool command, its address, slots, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from runners.flink_cluster import JVM_METASPACE, NETTY_DIRECT_MEMORY, ROCKSDB_METRICS
from runners.services import FLINK_TM_SLOTS
from runtime.endpoints import POOL_HOST_NAME, ServicePorts
from runtime.metrics import PROMETHEUS_REPORTER
from runtime.worker_pool import worker_pool_command

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _flink_deployment() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((DEPLOY / "flink-deployment.yaml").read_text()))
    (found,) = [d for d in docs if d and d.get("kind") == "FlinkDeployment"]
    return found


def test_the_sidecar_runs_the_local_worker_pool_command() -> None:
    spec = _flink_deployment()["spec"]["taskManager"]["podTemplate"]["spec"]
    (pool,) = [c for c in spec["containers"] if c["name"] == "beam-worker-pool"]
    assert pool["args"] == worker_pool_command("127.0.0.1", 50000)
    assert pool["ports"][0]["containerPort"] == ServicePorts().worker_pool
    aliases = {h for alias in spec["hostAliases"] if alias["ip"] == "127.0.0.1"
               for h in alias["hostnames"]}
    assert POOL_HOST_NAME in aliases


def test_jobs_are_submitted_to_the_pool_as_locally() -> None:
    text = (DEPLOY / "flink-deployment.yaml").read_text()
    assert f"--environment_config={ServicePorts().worker_pool_address}" in text
    assert "--environment_type=EXTERNAL" in text and "LOOPBACK" not in text


def test_slots_and_the_metrics_match_the_local_cluster() -> None:
    conf = _flink_deployment()["spec"]["flinkConfiguration"]
    assert int(conf["taskmanager.numberOfTaskSlots"]) == FLINK_TM_SLOTS
    assert conf["metrics.reporter.prom.factory.class"] == PROMETHEUS_REPORTER
    assert int(conf["metrics.reporter.prom.port"]) == ServicePorts().prometheus
    assert {k: conf.get(k) for k in ROCKSDB_METRICS} == ROCKSDB_METRICS
    assert {k: conf.get(k) for k in NETTY_DIRECT_MEMORY} == NETTY_DIRECT_MEMORY
    assert {k: conf.get(k) for k in JVM_METASPACE} == JVM_METASPACE


def test_the_grafana_dashboard_queries_flink_series_per_job_or_taskmanager() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    jvm = [e for e in exprs if e.startswith("flink_taskmanager_Status_JVM_")]
    assert exprs and all("flink_" in e and "$job" in e for e in exprs if e not in jvm)
    assert any("freshness_ms_le_1000" in e for e in exprs)
    # Each job's classes stay in the TaskManager's metaspace: used beside its max.
    assert {e.split("{")[0] for e in jvm} >= {
        "flink_taskmanager_Status_JVM_Memory_Metaspace_Used",
        "flink_taskmanager_Status_JVM_Memory_Metaspace_Max"}
