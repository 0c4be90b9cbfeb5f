"""The sections of BENCHMARKS.md, in report order, and the module that measures each.

A section whose ``module`` is ``None`` has no benchmark in this tree yet: the
report says "not run" for it until a module exists and has written its
results file. To add one, write a module with ``NAME``, ``TITLE``,
``run(mode) -> dict``, ``headline(data)`` and ``print_summary(data)``, name
it here, and give ``report.RENDERERS`` a table for it. A section with
``quick=False`` (the Flink ones: a job needs a minute to start) is skipped by
``--quick``; the report keeps showing its last full run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Section:
    """One section of BENCHMARKS.md.

    Attributes:
        name: short name: ``--sections`` value and results file name.
        part: its number in BENCHMARKS.md.
        title: heading in BENCHMARKS.md.
        module: dotted module that measures it, or ``None`` if none exists yet.
        pending: why it is not measured yet (sections without a module).
        quick: whether ``--quick`` runs it.
    """

    name: str
    part: str
    title: str
    module: str | None = None
    pending: str | None = None
    quick: bool = True

    def load(self) -> ModuleType:
        if self.module is None:
            raise LookupError(f"section {self.name!r} has no benchmark yet: {self.pending}")
        return importlib.import_module(self.module)

    def doc(self) -> str | None:
        """The measuring module's docstring, without its title line (the method)."""
        if self.module is None:
            return None
        text = (self.load().__doc__ or "").strip()
        return text.split("\n", 1)[1].strip() if "\n" in text else None


SECTIONS = (
    Section("transform", "1", "Transform cost: DirectRunner vs a plain-Python loop",
            "benchmarks.transform"),
    Section("sink", "2", "Sink: Redis feature writes/s vs a raw redis-py loop",
            "benchmarks.sink"),
    Section("e2e", "3", "End to end on Flink: sustained events/s and freshness",
            "benchmarks.e2e", quick=False),
    Section("workers", "3b", "Worker pools vs LOOPBACK: the same job, Python workers either way",
            "benchmarks.workers", quick=False),
    Section("state", "4a", "State: sliding-window state per key vs event rate",
            "benchmarks.state"),
    Section("rocksdb", "4b", "State: RocksDB checkpoint size and duration for 100k keys",
            "benchmarks.rocksdb", quick=False),
    Section("serving", "5", "Serving: lookup latency for 1 and 100 entities",
            "benchmarks.serving"),
    Section("engine", "6", "Engine: a keyed stage per feature group vs one fused stage",
            "benchmarks.engine", quick=False),
    Section("hotkeys", "6b", "Hot keys: one user sending half of all events",
            "benchmarks.hot_keys", quick=False),
    Section("routes", "6c", "Routes: each window kind as a stateful stage and as Beam windowing",
            "benchmarks.routes", quick=False),
    Section("bundles", "6d", "Bundles: catch-up speculative updates and timers for the "
            "fused stage",
            "benchmarks.bundles", quick=False),
    Section("peers", "7", "Peers: the user features as a Flink SQL job and a plain Python consumer",
            "benchmarks.peers", quick=False),
    Section("training", "8", "Training sets: DirectRunner and Flink batch, 10x events and labels",
            "benchmarks.training_sets", quick=False),
)

BY_NAME = {s.name: s for s in SECTIONS}
