"""A feature pipeline as its own process on Flink, as a user starts it.

    python -m pipelines.<user|ride>_features --runner=FlinkRunner --topic=... [...]

The process follows its job (progress, the ``--max_records`` stop) and cancels
it on the way out; the job's Python workers run in the worker pools beside the
TaskManagers. ``PipelineProcess`` starts it
(stdout/stderr to files) with a ``--launch_id`` of its own, finds the Flink job
carrying that id (other jobs may run on the cluster, even of the same name),
and stops both: the process by its pid, the job through the Flink REST API
(the job server's cancel leaves a streaming job running; see
``runtime.flink.cancel_job``). Used by the tests, the fault suite and the
benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.flink import LaunchedJob, new_launch_id

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
        module: the module run, ``pipelines.<pipeline>_features`` unless given
            (it takes the same flags).
    """

    def __init__(self, rest_port: int, pipeline: str, args: list[str], workdir: Path,
                 name: str, root: Path = ROOT, module: str | None = None) -> None:
        self.rest_port = rest_port
        self.stdout = workdir / f"{name}.stdout"
        self.stderr = workdir / f"{name}.stderr"
        self.launch_id = new_launch_id()
        if root == ROOT:
            self.job = LaunchedJob(rest_port, self.launch_id)
            args = [*args, f"--launch_id={self.launch_id}"]
        else:
            # An older version of the code may not know --launch_id (Beam drops
            # options nobody defines): its job is found by a name unique to this launch.
            job_name = f"{name}-{self.launch_id[:12]}"
            self.job = LaunchedJob(rest_port, None, job_name)
            args = [*args, f"--job_name={job_name}"]
        cmd = [sys.executable, "-m", module or f"pipelines.{pipeline}_features", *args]
        # The job's state when the process ended by itself, before kill() cleans up.
        self.state_at_exit: str | None = None
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)

    @property
    def jid(self) -> str | None:
        """The Flink job id, once :meth:`wait_running` found it."""
        return self.job.jid

    def wait_running(self, timeout: float = 300) -> str:
        """The jid of this process's Flink job once it is RUNNING."""
        try:
            return self.job.wait_running(timeout, alive=lambda: self.proc.poll() is None)
        except RuntimeError as e:
            if self.proc.poll() is None:
                raise
            raise RuntimeError(f"pipeline exited ({self.proc.returncode}) before its job "
                               f"ran:\n{self.stderr.read_text()[-4000:]}") from e

    def job_state(self) -> str:
        return self.job.state()

    def job_state_safe(self) -> str | None:
        try:
            return self.job_state()
        except Exception:  # noqa: BLE001 (the cluster may be gone during teardown)
            return None

    def finish(self, timeout: float = 900) -> dict[str, Any]:
        """Waits for the process (a ``--max_records`` run); returns its summary line."""
        try:
            self.proc.wait(timeout=timeout)
            self.state_at_exit = self.job_state_safe()
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
        if self.jid is not None:
            self.job.cancel_if_active()
