"""A feature pipeline as its own process on Flink, as a user starts it.

    python -m pipelines.<user|ride>_features --runner=FlinkRunner --topic=... [...]

With the LOOPBACK environment that process also hosts the job's Python SDK
workers, so it must live as long as the job. ``PipelineProcess`` starts it
(stdout/stderr to files), finds its Flink job, and stops both: the process by
its pid, the job through the Flink REST API (the job server's cancel leaves a
streaming job running; see ``runners.flink.cancel_job``). Used by the fault
suite and the benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runners.flink import _rest, cancel_job, flink_jobs

ROOT = Path(__file__).resolve().parents[1]


class PipelineProcess:
    """A ``pipelines.<pipeline>_features`` process and its Flink job.

    Args:
        rest_port: the Flink JobManager's REST port.
        pipeline: ``user`` or ``ride``.
        args: every flag of the process (runner flags and the pipeline's own).
        workdir: where ``<name>.stdout`` and ``<name>.stderr`` go.
        name: a label for the output files.
        root: the source tree to run (another version of it: ``git archive``).
    """

    def __init__(self, rest_port: int, pipeline: str, args: list[str], workdir: Path,
                 name: str, root: Path = ROOT) -> None:
        self.rest_port = rest_port
        self.stdout = workdir / f"{name}.stdout"
        self.stderr = workdir / f"{name}.stderr"
        self.before = {j["jid"] for j in flink_jobs(rest_port)}
        cmd = [sys.executable, "-m", f"pipelines.{pipeline}_features", *args]
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)
        self.jid: str | None = None

    def wait_running(self, timeout: float = 300) -> str:
        """The jid of this process's Flink job once it is RUNNING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pipeline exited ({self.proc.returncode}) before "
                                   f"its job ran:\n{self.stderr.read_text()[-4000:]}")
            for j in flink_jobs(self.rest_port):
                if j["state"] == "RUNNING" and j["jid"] not in self.before:
                    self.jid = str(j["jid"])
                    return self.jid
            time.sleep(0.5)
        raise RuntimeError("no RUNNING Flink job for the pipeline")

    def job_state(self) -> str:
        if self.jid is None:
            raise RuntimeError("the job is not running yet (wait_running)")
        return str(_rest(self.rest_port, f"/jobs/{self.jid}").get("state"))

    def job_state_safe(self) -> str | None:
        try:
            return self.job_state()
        except Exception:  # noqa: BLE001 (the cluster may be gone during teardown)
            return None

    def finish(self, timeout: float = 900) -> dict[str, Any]:
        """Waits for the process (a ``--max_records`` run); returns its summary line."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        if self.proc.returncode != 0:
            raise RuntimeError(f"pipeline exited {self.proc.returncode}:\n"
                               f"{self.stderr.read_text()[-4000:]}")
        return dict(json.loads(self.stdout.read_text().strip().splitlines()[-1]))

    def kill(self) -> None:
        """Stops the process and cancels its job if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.jid and self.job_state_safe() in ("RUNNING", "RESTARTING", "CREATED"):
            cancel_job(self.rest_port, self.jid)
