"""The pipelines' Beam metrics as Flink's Prometheus reporter exports them.

Flink registers every Beam counter a Python step reports (``Metrics.counter(namespace,
name)``) in the step's operator metric group; the Prometheus reporter on each
JobManager and TaskManager serves them at ``http://<host>:<port>/metrics`` as
``flink_taskmanager_job_task_operator_<namespace>_<name>``-style series, one per
operator, subtask and TaskManager. :func:`scrape` reads those endpoints and
:func:`beam_counters` adds the series of one job up per ``(namespace, name)``,
which is what the pipeline's own ``MetricResults`` report for the same job.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Flink's reporter, from the distribution's plugins/ directory.
PROMETHEUS_REPORTER = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
# Beam counter namespaces the feature pipelines report (transforms/*).
BEAM_NAMESPACES = ("decode", "features", "late", "merge", "redis_sink", "ttl", "aggregate")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One series of a scrape: its metric name, labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition (comments and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(3) or "")}
        out.append(Sample(m.group(1), labels, float(m.group(4))))
    return out


def scrape(urls: Iterable[str], timeout: float = 5.0) -> list[Sample]:
    """Every sample of every endpoint that answers (a process that is down is skipped)."""
    samples: list[Sample] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our own)
                samples += parse(resp.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError):
            continue
    return samples


def endpoints(ports: Iterable[int], host: str = "localhost") -> list[str]:
    return [f"http://{host}:{p}/metrics" for p in ports]


def _counter_key(name: str) -> tuple[str, str] | None:
    """``flink_taskmanager_job_task_operator_redis_sink_batches`` -> (redis_sink, batches)."""
    prefix = "flink_taskmanager_job_task_operator_"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    for ns in sorted(BEAM_NAMESPACES, key=len, reverse=True):
        if rest.startswith(ns + "_"):
            return ns, rest[len(ns) + 1:].lstrip("_")
    return None


def flink_label(value: str) -> str:
    """A name as Flink's Prometheus reporter writes it in a label (``make-run`` -> ``make_run``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", value)


def beam_counters(samples: Iterable[Sample], job_name: str | None = None
                  ) -> dict[tuple[str, str], int]:
    """Beam counters of the job named ``job_name`` (every job: None), summed over
    operators, subtasks and TaskManagers, keyed by ``(namespace, name)``."""
    wanted = None if job_name is None else flink_label(job_name)
    totals: dict[tuple[str, str], float] = {}
    for s in samples:
        key = _counter_key(s.name)
        if key is None or (wanted is not None and s.labels.get("job_name") != wanted):
            continue
        if math.isnan(s.value):
            continue
        totals[key] = totals.get(key, 0.0) + s.value
    return {k: int(v) for k, v in totals.items()}


def freshness_quantile(counters: Mapping[tuple[str, str], int], q: float) -> float | None:
    """The bucket bound (ms) at quantile ``q`` of the sink's freshness histogram
    (``redis_sink/freshness_ms_le_<bound>``); None before any write. Like
    Prometheus' ``histogram_quantile`` without interpolation: an upper bound."""
    total = counters.get(("redis_sink", "freshness_ms_count"), 0)
    if not total:
        return None
    bounds = sorted(int(name.rsplit("_", 1)[1]) for ns, name in counters
                    if ns == "redis_sink" and name.startswith("freshness_ms_le_"))
    for b in bounds:
        if counters.get(("redis_sink", f"freshness_ms_le_{b}"), 0) >= q * total:
            return float(b)
    return math.inf
