"""Supervision of the local services' processes.

Each service runs in a process group of its own (``spawn``), with its output
appended to a log file. A ``ServiceHandle`` records what was started: the
group leader's pid, the port, the log, the command line and its environment,
so that another process (``python -m runners.services down``) can find it
again through the pid file. ``stop_process_group`` ends a whole group, SIGTERM
first and SIGKILL after a grace period; ``wait_ready`` polls a readiness probe
while checking that the service is still alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


class ServiceError(RuntimeError):
    """A service failed to start, or is not ready in time."""


@dataclasses.dataclass
class ServiceHandle:
    """A started service: its process group, port and log."""

    name: str
    pid: int
    port: int
    log: Path
    cmd: list[str]
    started: float = dataclasses.field(default_factory=time.time)
    ready_seconds: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["log"] = str(self.log)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServiceHandle:
        d = dict(d)
        d["log"] = Path(d["log"])
        return cls(**d)


def tcp_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def proc_stats() -> Iterator[tuple[Path, list[str]]]:
    """Every process's ``/proc/<pid>`` and the fields of its ``stat`` after the name
    (state first, then ppid, pgrp, ...); processes that vanish meanwhile are skipped."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2:
            yield stat.parent, fields


def group_members(pgid: int) -> list[Path]:
    """The ``/proc`` directories of the live (not zombie) processes in group ``pgid``."""
    return [proc for proc, fields in proc_stats()
            if fields[2] == str(pgid) and fields[0] != "Z"]


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain; look for a live member.
    return bool(group_members(pgid))


def spawn(
    name: str,
    cmd: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``cmd`` in a new process group, its output appended to ``log`` after a
    header line; ``env`` is added to this process's environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(
            f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: "
            f"{' '.join(cmd)}\n".encode()
        )
        out.flush()
        return subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # own process group: `down` kills exactly this tree
        )


def stop_process_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group led by pid, SIGKILL what is left after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not group_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    handle: ServiceHandle, probe: Callable[[], bool], timeout: float, what: str
) -> ServiceHandle:
    """Polls ``probe`` until it returns true and records how long the service took.

    A probe that raises OSError or ValueError counts as not ready yet. If the service
    exits, or is not ready after ``timeout`` seconds (then its group is stopped),
    ServiceError tells so with the end of its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise ServiceError(
                f"{handle.name} exited during startup; see {handle.log}:\n{log_tail(handle.log)}"
            )
        try:
            if probe():
                handle.ready_seconds = round(time.time() - handle.started, 1)
                return handle
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    stop_process_group(handle.pid)
    raise ServiceError(
        f"{handle.name} not ready ({what}) after {timeout:.0f}s; "
        f"see {handle.log}:\n{log_tail(handle.log)}"
    )
