"""What a number was measured on: the machine, the software, the code (git)."""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Paths whose changes do not change what is measured (the benchmarks themselves).
_NOT_MEASURED = ("benchmarks", "BENCHMARKS.md")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def _memory_gib() -> float | None:
    match = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _redis_server_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip() or None


def machine() -> dict[str, Any]:
    """The machine and software a run measured."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "apache_beam": _version("apache-beam"),
        "redis_py": _version("redis"),
        "redis_server": _redis_server_version(),
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    # Only trailing newlines go: porcelain lines start with a meaningful space.
    return done.stdout.rstrip("\n") if done.returncode == 0 else ""


def code_identity() -> dict[str, Any]:
    """The commit measured, and whether the measured code differs from it.

    Changes under ``benchmarks/`` do not count: they do not change what runs.
    ``diff_id`` tells two different uncommitted states of one commit apart.
    """
    excludes = [f":(exclude){p}" for p in _NOT_MEASURED]
    changed = _git("status", "--porcelain", "--", ".", *excludes).splitlines()
    diff = _git("diff", "HEAD", "--", ".", *excludes)
    return {
        "commit": _git("rev-parse", "--short=12", "HEAD") or "unknown",
        "subject": _git("log", "-1", "--format=%s"),
        "dirty": bool(changed),
        "changed_paths": [line[3:] for line in changed],
        "diff_id": hashlib.sha1(diff.encode()).hexdigest()[:10] if changed else None,
    }


def commit_identity(rev: str) -> dict[str, str]:
    """The commit ``rev`` names (any git revision), as ``code_identity`` spells it."""
    commit = _git("rev-parse", "--verify", "--quiet", "--short=12", f"{rev}^{{commit}}")
    if not commit:
        raise ValueError(f"{rev!r} is not a commit of {ROOT}")
    return {"rev": rev, "commit": commit, "subject": _git("log", "-1", "--format=%s", commit)}


def export_commit(rev: str, dest: Path) -> dict[str, str]:
    """Writes the tree of commit ``rev`` into ``dest`` (``git archive``); returns its identity.

    A "before" measurement runs the old code from there, while the harness
    itself stays the current one.
    """
    identity = commit_identity(rev)
    done = subprocess.run(["git", "archive", "--format=tar", identity["commit"]], cwd=ROOT,
                          capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return identity


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def command_line() -> str:
    """How this process was started, as a user would type it."""
    argv = sys.argv[1:]
    return " ".join(["python -m benchmarks.run", *argv])
