"""Fault-suite fixtures: one set of local services, and the figures behind RELIABILITY.md.

Each test records figures (kills survived, records replayed, seconds of
outage, ...) through the ``figures`` fixture. After the test, its figures and
outcome are stored as ``tests/faults/results/<test>.json`` with the date and
the commit; at the end of the session RELIABILITY.md is regenerated from every
stored result, so a partial run keeps the figures of tests it did not run
(each marked with the date and commit it came from). Only ``make faults``
records (it sets ``RTF_FAULTS_RECORD=1``): the fast fault tests that
``make test`` runs leave the tracked results and the report as they were.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runners import services as rs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
REPORT = ROOT / "RELIABILITY.md"

_FIGURES: dict[str, dict[str, Any]] = {}
_OUTCOMES: dict[str, dict[str, Any]] = {}
_SETUP_S: dict[str, float] = {}


@pytest.fixture(scope="session")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.LocalServices]:
    """Kafka, Redis, Flink, expansion service and job server on free ports."""
    with rs.local_services(ports=rs.ServicePorts.free(),
                           state_dir=tmp_path_factory.mktemp("services")) as services:
        yield services


@pytest.fixture(autouse=True)
def _cluster_hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the services: no job of it is left running, and a
    TaskManager that died on its own (not by a test's kill) is reported and replaced,
    so one failure does not cascade into the next tests."""
    yield
    if "svc" not in request.fixturenames:
        return
    services: rs.LocalServices = request.getfixturevalue("svc")
    from runtime.flink import cancel_job, flink_jobs

    for job in flink_jobs(services.ports.flink_rest):
        if job["state"] in ("RUNNING", "RESTARTING", "CREATED", "INITIALIZING"):
            cancel_job(services.ports.flink_rest, job["jid"])
    for i in range(rs.FLINK_TASKMANAGERS):
        tm = services.recorded().get(f"flink-taskmanager-{i}")
        if tm is not None and not tm.alive():
            _FIGURES.setdefault(_name(request.node), {})["taskmanager_died_on_its_own"] = 1
            print(f"WARNING: a TaskManager died during {request.node.name}; see {tm.log}")
            restart_taskmanager(services, i)


def restart_taskmanager(services: rs.LocalServices, index: int = 0) -> None:
    """Kills TaskManager ``index`` together with the worker pool beside it (a lost machine),
    then starts both again with the cluster's config."""
    services.kill(f"flink-taskmanager-{index}")
    services.restart(f"worker-pool-{index}")
    services.restart(f"flink-taskmanager-{index}")


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict the test fills with its figures; stored with the test's outcome."""
    return _FIGURES.setdefault(_name(request.node), {})


def _name(item: pytest.Item) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    name = _name(item)
    if report.when == "setup":
        # A module fixture's run (e.g. the one hostile-input stream) counts for its first test.
        _SETUP_S[name] = report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[name] = {"nodeid": item.nodeid, "outcome": report.outcome,
                           "seconds": round(report.duration + _SETUP_S.get(name, 0.0), 1),
                           "doc": (item.obj.__doc__ or "").strip().split("\n\n")[0]
                           if hasattr(item, "obj") else ""}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _OUTCOMES or os.environ.get("RTF_FAULTS_RECORD") != "1":
        return
    RESULTS.mkdir(exist_ok=True)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = _commit()
    for name, outcome in _OUTCOMES.items():
        if outcome["outcome"] == "skipped":
            continue  # a skip proves nothing: keep the last real result
        record = {**outcome, "date": now, "commit": commit, "figures": _FIGURES.get(name, {}),
                  # A run with extra Flink flags is not a run of the product's preset.
                  "extra_flink_args": os.environ.get("RTF_FAULTS_FLINK_ARGS", "")}
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    REPORT.write_text(render_report(RESULTS))


def render_report(results: Path) -> str:
    """RELIABILITY.md from every stored result (written by the suite, not by hand)."""
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    lines = [
        "# Reliability",
        "",
        "Generated by the fault suite (`make faults`, `tests/faults/`) from "
        "`tests/faults/results/*.json`; do not edit by hand. Each row is the latest "
        "recorded run of that test, with its date and commit.",
        "",
        "| test | outcome | when | commit | seconds | figures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.get("figures", {}).items()))
        test = r["nodeid"].split("::", 1)[-1]
        if r.get("extra_flink_args"):
            figs += f" (run with extra Flink flags `{r['extra_flink_args']}`)"
        lines.append(f"| `{test}` | {r['outcome'].upper()} | {r['date']} | {r['commit']} "
                     f"| {r['seconds']} | {figs} |")
    totals: dict[str, float] = {}
    for r in records:
        if r["outcome"] != "passed" or r.get("extra_flink_args"):
            continue
        for k, v in r.get("figures", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in _TOTALLED:
                totals[k] = totals.get(k, 0) + v
    lines += ["", "## Totals over passing tests (product preset only)", ""]
    lines += [f"- {_TOTALLED[k]}: **{_fmt(v)}**" for k, v in sorted(totals.items())]
    samples = results / "soak_samples.csv"
    if samples.exists():
        rows = list(csv.reader(samples.read_text().splitlines()))
        sampled = (" (`rss_mb`), what each TaskManager's JVM says it holds (`jvm_mb`: heap, "
               "non-heap, direct buffers; the rest of its resident memory is native: "
               "RocksDB, the allocator)") if any(c.startswith("jvm_mb.") for c in rows[0]) else ""
        if any(c.startswith("rocksdb_mb.") for c in rows[0]):
            sampled += (", what RocksDB says it holds (`rocksdb_mb`: the slot's shared cache, "
                    "blocks and the memtables charged to it; the memtables alone)")
        lines += ["", "## Soak, minute by minute", "",
                  "Written by `make soak` (`tests/faults/test_soak.py`): resident memory of "
                  f"every process group of the runtime{sampled}, the latest checkpoint's size and "
                  "the freshness p99 of each minute.", ""]
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        if (ROOT / "docs" / "soak.png").exists():
            lines += ["", "![soak](docs/soak.png)"]
    lines += ["", "## What each test shows", ""]
    for r in records:
        doc = " ".join(r["doc"].split()) or "(no docstring)"
        lines.append(f"- `{r['nodeid'].split('::', 1)[-1]}`: {doc}")
    return "\n".join(lines) + "\n"


_TOTALLED = {
    "kills_survived": "TaskManager kills / job cancellations survived",
    "records_replayed": "records replayed from offset 0",
    "outage_seconds": "seconds of Redis / Kafka outage survived",
    "fuzz_cases": "hostile records sent (fuzz cases tried)",
    "dead_letters_counted": "dead letters counted on the dead-letter topic",
    "valid_records": "valid records processed",
    "race_writes": "racing guarded writes",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
