"""Results files: ``benchmarks/results/<section>.json``, one per section, with history.

A file holds every recorded run of its section, oldest first. A run on the
same code (commit + uncommitted diff of the measured code) in the same mode
replaces the earlier one, so re-running never piles up duplicates, while a
new commit adds a row: that is how "before" and "after" end up side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.env import ROOT

RESULTS_DIR = ROOT / "benchmarks" / "results"
PLOTS_DIR = ROOT / "benchmarks" / "plots"


def _path(section: str) -> Path:
    return RESULTS_DIR / f"{section}.json"


def load(section: str) -> list[dict[str, Any]]:
    """Every recorded run of ``section``, oldest first (empty if never run)."""
    path = _path(section)
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]


def _same_code(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ca, cb = a["code"], b["code"]
    return (ca["commit"], ca["diff_id"], a["mode"]) == (cb["commit"], cb["diff_id"], b["mode"])


def record(section: str, run: dict[str, Any]) -> None:
    """Appends ``run`` to the section's history (replacing a run on the same code)."""
    runs = [r for r in load(section) if not _same_code(r, run)]
    runs.append(run)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    _path(section).write_text(json.dumps({"section": section, "runs": runs}, indent=1) + "\n")
