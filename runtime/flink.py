"""FlinkRunner presets: a few high-level settings -> Beam pipeline arguments.

The Python SDK (2.77) talks to the Beam Flink job server started by
``runners.services`` (Beam Java 2.62, Flink 1.19) through ``--job_endpoint``;
the job server submits to the standalone Flink cluster at ``--flink_master``.
Options that only the Java side defines (state backend, checkpointing, ...)
are declared here too (``FlinkJavaOptions``), so the Python SDK parses them
and sends them to the job server by name.

Verified on this machine (docs/RUNTIME.md): --state_backend=rocksdb,
--state_backend_storage_path, --checkpointing_interval, --checkpointing_mode,
--min_pause_between_checkpoints, --checkpoint_timeout_millis,
--num_concurrent_checkpoints, --externalized_checkpoints_enabled,
--retain_externalized_checkpoints_on_cancellation, --parallelism show up in
the Flink job's /checkpoints/config and the JobManager log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from apache_beam.options.pipeline_options import PipelineOptions

from runtime import state_commit
from runtime.endpoints import ServicePorts, default_state_dir


class Cluster(Protocol):
    """A running local cluster (``runners.services.LocalServices``): its ports and state."""

    ports: ServicePorts
    state_dir: Path


@dataclasses.dataclass(frozen=True)
class FlinkPreset:
    """High-level settings for a streaming job on the local Flink cluster.

    Defaults: checkpoint every 60 s, EXACTLY_ONCE, 30 s min pause, 120 s
    timeout, one checkpoint at a time, RocksDB, externalized checkpoints
    retained on cancellation. Tests lower ``checkpoint_interval_ms`` to 2000.
    """

    flink_master: str = "localhost:8081"
    job_endpoint: str | None = "localhost:8099"
    environment_type: str = "LOOPBACK"
    environment_config: str | None = None
    parallelism: int = 1
    max_parallelism: int | None = None
    streaming: bool = True
    state_backend: str = "rocksdb"
    state_dir: Path | None = None  # checkpoints go to <state_dir>/flink/checkpoints
    checkpoint_interval_ms: int | None = 60_000  # None disables checkpointing
    checkpointing_mode: str = "EXACTLY_ONCE"
    min_pause_ms: int = 30_000
    checkpoint_timeout_ms: int = 120_000
    max_concurrent_checkpoints: int = 1
    externalized_checkpoints: bool = True
    savepoint_path: str | None = None  # restore from this savepoint / retained checkpoint
    allow_non_restored_state: bool = False
    job_name: str | None = None
    # Without it, restoring after a TaskManager loss fails in Beam 2.62's
    # DoFnOperator ("Couldn't flush pushed back elements"): tests/faults.
    finish_bundle_before_checkpointing: bool = True
    # A Python step hands its output on when its bundle ends: at low rates the
    # bundle time is the floor of freshness. Beam's Flink default is 1000 ms;
    # 50 ms raised the rate with p99 < 1 s from 100 to 500 events/s (user job,
    # BENCHMARKS.md section 3, the 200 ms vs 50 ms rows).
    max_bundle_time_ms: int | None = 50
    max_bundle_size: int | None = None  # elements; Beam's Flink default is 1,000
    # The Python workers keep state between bundles (runtime/state_cache.py): a key's
    # state is read from Flink once, not once per bundle. 0 turns the cache off.
    state_cache_mb: int = 256

    @classmethod
    def local(
        cls, ports: ServicePorts | None = None, state_dir: Path | None = None, **overrides: Any
    ) -> FlinkPreset:
        """Preset for the services started by ``runners.services`` (env ports by default):
        the job's Python workers run in the worker pools beside the TaskManagers."""
        p = ports or ServicePorts.from_env()
        return cls(
            flink_master=p.flink_master,
            job_endpoint=p.job_endpoint,
            state_dir=state_dir or default_state_dir(),
            **{"environment_type": "EXTERNAL",
               "environment_config": p.worker_pool_address, **overrides},
        )

    def checkpoint_uri(self) -> str:
        base = self.state_dir or default_state_dir()
        return (Path(base) / "flink" / "checkpoints").resolve().as_uri()

    def pipeline_args(self) -> list[str]:
        """The argument list for PipelineOptions (append the pipeline's own flags)."""
        args = [
            "--runner=FlinkRunner",
            f"--flink_master={self.flink_master}",
            f"--environment_type={self.environment_type}",
            f"--parallelism={self.parallelism}",
        ]
        if self.job_endpoint:
            args.append(f"--job_endpoint={self.job_endpoint}")
        if self.environment_config:
            args.append(f"--environment_config={self.environment_config}")
        if self.max_parallelism:
            args.append(f"--max_parallelism={self.max_parallelism}")
        if self.streaming:
            args.append("--streaming")
        if self.job_name:
            args.append(f"--job_name={self.job_name}")
        if self.state_backend:
            args += [
                f"--state_backend={self.state_backend}",
                f"--state_backend_storage_path={self.checkpoint_uri()}",
            ]
        if self.checkpoint_interval_ms:
            args += [
                f"--checkpointing_interval={self.checkpoint_interval_ms}",
                f"--checkpointing_mode={self.checkpointing_mode}",
                f"--min_pause_between_checkpoints={self.min_pause_ms}",
                f"--checkpoint_timeout_millis={self.checkpoint_timeout_ms}",
                f"--num_concurrent_checkpoints={self.max_concurrent_checkpoints}",
            ]
            if self.externalized_checkpoints:
                args += [
                    "--externalized_checkpoints_enabled",
                    "--retain_externalized_checkpoints_on_cancellation",
                ]
        if self.finish_bundle_before_checkpointing:
            args.append("--finish_bundle_before_checkpointing")
        if self.max_bundle_time_ms:
            args.append(f"--max_bundle_time_mills={self.max_bundle_time_ms}")
        if self.max_bundle_size:
            args.append(f"--max_bundle_size={self.max_bundle_size}")
        args.append(f"--max_cache_memory_usage_mb={self.state_cache_mb}")
        if self.savepoint_path:
            args.append(f"--savepoint_path={self.savepoint_path}")
            if self.allow_non_restored_state:
                args.append("--allow_non_restored_state")
        return args


def flink_pipeline_args(
    checkpoint_interval_ms: int | None = 60_000,
    parallelism: int = 1,
    savepoint_path: str | None = None,
    ports: ServicePorts | None = None,
    state_dir: Path | None = None,
    **overrides: Any,
) -> list[str]:
    """Shortcut: ``FlinkPreset.local(...).pipeline_args()``."""
    return FlinkPreset.local(
        ports,
        state_dir,
        checkpoint_interval_ms=checkpoint_interval_ms,
        parallelism=parallelism,
        savepoint_path=savepoint_path,
        **overrides,
    ).pipeline_args()


# --------------------------------------------------------------------------- Flink REST helpers


# Bundle size trades freshness for throughput: a Python step hands its output on
# when its bundle ends, and pays its state round trips once per key and bundle.
BUNDLE_PRESETS: dict[str, dict[str, int | None]] = {
    # Live streams: output every 50 ms at the latest (freshness p99 < 1 s).
    "low_latency": {"max_bundle_time_ms": 50, "max_bundle_size": None},
    # Backlogs (backfills, restarts after downtime): bundles of up to 5 s / 250k.
    # A keyed stage pays its state round trips and timer traffic once per key and
    # bundle: 5-s bundles read a backlog faster than 1-s ones (BENCHMARKS.md,
    # section 6d).
    "catch_up": {"max_bundle_time_ms": 5_000, "max_bundle_size": 250_000},
}


def service_args(svc: Cluster, parallelism: int = 1,
                 checkpoint_interval_ms: int = 2_000, bundles: str = "low_latency"
                 ) -> list[str]:
    """FlinkRunner flags for a job on ``svc``'s services (any ports, its own checkpoint
    directory): the product preset, with checkpoints every ``checkpoint_interval_ms``
    and the ``bundles`` preset. Tests and benchmarks use it for clusters on free ports."""
    preset = FlinkPreset.local(svc.ports, state_dir=svc.state_dir, parallelism=parallelism,
                               checkpoint_interval_ms=checkpoint_interval_ms,
                               min_pause_ms=min(500, checkpoint_interval_ms),
                               **BUNDLE_PRESETS[bundles])
    return [*preset.pipeline_args(), f"--bundle_preset={bundles}",
            f"--expansion_service={svc.ports.expansion_address}",
            f"--bootstrap_servers={svc.ports.bootstrap_servers}"]


def batch_service_args(svc: Cluster, parallelism: int = 1, bundles: str = "catch_up"
                       ) -> list[str]:
    """FlinkRunner flags for a bounded job (batch mode, no checkpoints) on ``svc``'s
    cluster, with the ``bundles`` preset; tests and benchmarks use it."""
    preset = FlinkPreset.local(svc.ports, state_dir=svc.state_dir, parallelism=parallelism,
                               streaming=False, checkpoint_interval_ms=None,
                               externalized_checkpoints=False,
                               finish_bundle_before_checkpointing=False,
                               **BUNDLE_PRESETS[bundles])
    return preset.pipeline_args()


def _rest(
    rest_port: int, path: str, method: str = "GET", body: dict[str, Any] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (localhost only)
        raw = resp.read().decode()
    return json.loads(raw) if raw.strip() else {}


def flink_jobs(rest_port: int) -> list[dict[str, Any]]:
    """[{jid, name, state, ...}] for all jobs the cluster knows."""
    return list(_rest(rest_port, "/jobs/overview").get("jobs", []))


# Flink's JobStatus values: a job in one of these may still use slots and restart.
ACTIVE_STATES = frozenset({"INITIALIZING", "CREATED", "RUNNING", "FAILING", "CANCELLING",
                           "RESTARTING", "RECONCILING"})


# Options the Java side of the Flink runner defines, declared here so that the
# Python SDK parses them (instead of warning "Unparseable argument" and passing
# them through) and sends them to the job server under the same names.
_JAVA_FLINK_OPTIONS: tuple[tuple[str, type | None, str], ...] = (
    ("state_backend", str, "rocksdb or filesystem"),
    ("state_backend_storage_path", str, "checkpoint directory URI"),
    ("checkpointing_interval", int, "ms between checkpoints"),
    ("checkpointing_mode", str, "EXACTLY_ONCE or AT_LEAST_ONCE"),
    ("min_pause_between_checkpoints", int, "ms"),
    ("checkpoint_timeout_millis", int, "ms"),
    ("num_concurrent_checkpoints", int, "checkpoints in flight"),
    ("externalized_checkpoints_enabled", None, "keep checkpoints outside the job"),
    ("retain_externalized_checkpoints_on_cancellation", None, "keep them after a cancel"),
    ("finish_bundle_before_checkpointing", None, "end the open bundle before a barrier"),
    ("max_bundle_time_mills", int, "ms a Python bundle stays open at most"),
    ("max_bundle_size", int, "elements per Python bundle at most"),
    ("savepoint_path", str, "restore from this savepoint or retained checkpoint"),
    ("allow_non_restored_state", None, "restore even if some state has no operator"),
    ("number_of_execution_retries", int, "the job's own restart attempts"),
    ("execution_retry_delay", int, "ms between restarts"),
    ("execution_mode_for_batch", str, "PIPELINED, BATCH or BATCH_FORCED"),
)


class FlinkJavaOptions(PipelineOptions):
    """The Flink runner's Java-side options we set (see ``FlinkPreset.pipeline_args``)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 (Beam's signature)
        for name, kind, help_text in _JAVA_FLINK_OPTIONS:
            if kind is None:
                parser.add_argument(f"--{name}", action="store_true", default=None,
                                    help=help_text)
            else:
                parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)


class LaunchOptions(PipelineOptions):
    """How a launching process recognises the Flink job it submitted.

    The Beam job server does not return Flink's job id, and a cluster may run
    other jobs, even ones of the same name: the launcher stamps its job with a
    fresh ``--launch_id``, which Flink keeps in the job's configuration
    (``/jobs/<jid>/config``, user-config ``launchId``, beside every other
    pipeline option).
    """

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 (Beam's signature)
        parser.add_argument("--launch_id", default=None,
                            help="token stamped on the Flink job to find it among others "
                                 "(default: a fresh one per launch)")
        parser.add_argument("--bundle_preset", default="low_latency",
                            choices=tuple(BUNDLE_PRESETS),
                            help="low_latency: 50-ms bundles, for live streams; catch_up: "
                                 "bundles of up to 5 s / 250,000 elements, for backlogs")
        parser.add_argument("--detached", action="store_true", default=False,
                            help="submit the job, print its Flink job id and return; the job "
                                 "runs on the cluster until cancelled (needs worker pools: "
                                 "--environment_type=EXTERNAL)")
        parser.add_argument("--state_cache_sizer", default="estimate",
                            choices=("estimate", "objsize"),
                            help="how the Python workers' state cache weighs values: a "
                                 "constant-cost estimate, or Beam's full walk (objsize)")
        parser.add_argument("--state_commit", default=state_commit.MODES[0],
                            choices=state_commit.MODES,
                            help="how the Python workers write a bundle's state back: all "
                                 "keys' writes sent before one wait (pipelined), or a round "
                                 "trip per key, as Beam does (per_key)")


def new_launch_id() -> str:
    return uuid.uuid4().hex


def job_user_config(rest_port: int, jid: str) -> dict[str, str]:
    """The job's pipeline options as Flink shows them (camelCase names)."""
    config = _rest(rest_port, f"/jobs/{jid}/config")
    return dict(config.get("execution-config", {}).get("user-config", {}))


class LaunchedJob:
    """The one Flink job a launching process submitted, found by its launch id.

    Create it before submitting (it remembers the jobs that existed), then
    :meth:`find` the job. :meth:`cancel_if_active` cancels it through the REST
    API (the job server's cancel leaves a streaming job running, see
    :func:`cancel_job`); used as a context manager it does that on the way out,
    whatever the way out is, and turns SIGTERM into an exception so that a
    terminated launcher cancels its job instead of leaving it restarting.

    Args:
        rest_port: the JobManager's REST port.
        launch_id: the ``--launch_id`` the job was submitted with; None only for
            job versions that predate launch ids, found by a ``job_name`` made
            unique per launch.
        job_name: the ``--job_name`` it was submitted with (None: any name).
    """

    def __init__(self, rest_port: int, launch_id: str | None,
                 job_name: str | None = None) -> None:
        if launch_id is None and job_name is None:
            raise ValueError("a launch is found by its launch id, or by a unique job name")
        self.rest_port = rest_port
        self.launch_id = launch_id
        self.job_name = job_name
        self.jid: str | None = None
        self._before = {j["jid"] for j in flink_jobs(rest_port)}
        self._not_ours: set[str] = set()
        self._old_sigterm: Any = None

    def _candidates(self) -> list[str]:
        ours = []
        for job in flink_jobs(self.rest_port):
            jid = job["jid"]
            if jid in self._before or jid in self._not_ours:
                continue
            if self.job_name is not None and job["name"] != self.job_name:
                self._not_ours.add(jid)
                continue
            if self.launch_id is None:
                ours.append(jid)
                continue
            options = job_user_config(self.rest_port, jid)
            if options.get("launchId") == self.launch_id:
                ours.append(jid)
            elif options:  # an initializing job shows no options yet: look again later
                self._not_ours.add(jid)
        return ours

    def find(self, timeout: float = 300.0, alive: Callable[[], bool] | None = None) -> str:
        """The jid of the job carrying this launch id (waits until Flink lists it).

        ``alive``: returns False once the job can no longer appear (the submitting
        process exited), to fail at once instead of at the timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                ours = self._candidates()
            except OSError:  # the JobManager is busy (a submission): ask again
                ours = []
            if len(ours) > 1:
                raise RuntimeError(f"{len(ours)} new Flink jobs match launch id "
                                   f"{self.launch_id}, name {self.job_name}: {ours}")
            if ours:
                self.jid = ours[0]
                return self.jid
            if alive is not None and not alive():
                raise RuntimeError("the launching process ended before its Flink job appeared")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Flink job with launch id {self.launch_id}, "
                                   f"name {self.job_name} after {timeout:.0f} s")
            time.sleep(0.5)

    def state(self) -> str:
        if self.jid is None:
            raise RuntimeError("the job is not found yet (find)")
        return str(_rest(self.rest_port, f"/jobs/{self.jid}").get("state"))

    def state_or_none(self) -> str | None:
        """The state, or None when the REST API does not answer in time (a busy
        JobManager answers again a moment later)."""
        try:
            return self.state()
        except OSError:
            return None

    def wait_running(self, timeout: float = 300.0,
                     alive: Callable[[], bool] | None = None) -> str:
        """Finds the job and waits until it is RUNNING; a job that ended first is an error."""
        deadline = time.monotonic() + timeout
        jid = self.jid or self.find(timeout, alive)
        while True:
            state = self.state_or_none() or "INITIALIZING"
            if state == "RUNNING":
                return jid
            if state not in ACTIVE_STATES:
                raise RuntimeError(f"Flink job {jid} is {state} before it ran")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Flink job {jid} still {state} after {timeout:.0f} s")
            time.sleep(0.5)

    def cancel_if_active(self, find_timeout: float = 0.0) -> bool:
        """Cancels the job if it still runs or restarts; True if it did.

        ``find_timeout``: how long to look for a job not found yet (it may have
        been submitted just before an interrupt).
        """
        if self.jid is None:
            try:
                self.find(timeout=find_timeout)
            except (TimeoutError, RuntimeError, OSError):
                return False
        try:
            if self.state() not in ACTIVE_STATES:
                return False
        except OSError:  # the cluster is gone: nothing left to cancel
            return False
        assert self.jid is not None
        try:
            cancel_job(self.rest_port, self.jid)
        except urllib.error.HTTPError:
            # It ended, or began to, between the two calls (Flink refuses to cancel a job
            # that is finishing, e.g. stopped with a savepoint): give it a moment.
            deadline = time.monotonic() + 30
            while self.state() in ACTIVE_STATES:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            return False
        return True

    def __enter__(self) -> LaunchedJob:
        # Signal handlers can only be set from the main thread; elsewhere (a
        # launcher run in a thread) the caller's own cleanup must call cancel.
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc: object) -> None:
        interrupted = exc[0] is not None
        try:
            if self.cancel_if_active(find_timeout=30.0 if interrupted else 0.0) and interrupted:
                print(f"cancelled Flink job {self.jid} on the way out", flush=True)
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so that cleanup (cancelling the job) runs."""


def _raise_terminated(signum: int, frame: Any) -> None:  # noqa: ARG001 (signal API)
    # Cleanup runs once: a second SIGTERM during it must not abort the cancel.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(128 + signum)


def checkpoint_stats(rest_port: int, jid: str) -> dict[str, Any]:
    """/jobs/<jid>/checkpoints: counts, latest completed (with external_path)."""
    return dict(_rest(rest_port, f"/jobs/{jid}/checkpoints"))


def checkpoint_config(rest_port: int, jid: str) -> dict[str, Any]:
    """/jobs/<jid>/checkpoints/config: mode, interval, timeout, min_pause, externalization,
    state_backend, checkpoint_storage."""
    return dict(_rest(rest_port, f"/jobs/{jid}/checkpoints/config"))


def wait_for_checkpoints(
    rest_port: int, jid: str, count: int = 1, timeout: float = 120.0
) -> dict[str, Any]:
    """Block until ``count`` checkpoints of job ``jid`` completed; returns the stats."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = checkpoint_stats(rest_port, jid)
        if stats.get("counts", {}).get("completed", 0) >= count:
            return stats
        time.sleep(0.5)
    raise TimeoutError(f"{count} checkpoints not completed in {timeout}s: {stats.get('counts')}")


def cancel_job(rest_port: int, jid: str, timeout: float = 60.0) -> None:
    """Cancel on the cluster. Needed: the Beam job server's cancel() reports CANCELLED
    but leaves a streaming job RUNNING on a remote Flink cluster (seen with Beam 2.62)."""
    _rest(rest_port, f"/jobs/{jid}", method="PATCH")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _rest(rest_port, f"/jobs/{jid}").get("state")
        if state in ("CANCELED", "FINISHED", "FAILED"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"job {jid} not cancelled after {timeout}s")


def stop_with_savepoint(rest_port: int, jid: str, target_dir: str, timeout: float = 120.0) -> str:
    """Stop a job with a savepoint; returns the savepoint path (use as --savepoint_path)."""
    trig = _rest(
        rest_port,
        f"/jobs/{jid}/stop",
        method="POST",
        body={"targetDirectory": target_dir, "drain": False},
    )
    rid = trig["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _rest(rest_port, f"/jobs/{jid}/savepoints/{rid}")
        if st.get("status", {}).get("id") == "COMPLETED":
            op = st.get("operation", {})
            if "location" in op:
                return str(op["location"])
            raise RuntimeError(f"savepoint failed: {op.get('failure-cause')}")
        time.sleep(0.5)
    raise TimeoutError("savepoint not completed")


def run_until(
    result: Any,
    done: Callable[[str], bool],
    job: LaunchedJob,
    timeout: float = 300.0,
    poll: float = 1.0,
) -> str:
    """Drive a streaming PipelineResult (from ``pipeline.run()``) until ``done(jid)``,
    then cancel its job on the cluster. Returns the Flink jid. ``job``: the
    launch to follow (created before ``pipeline.run()``)."""
    deadline = time.monotonic() + timeout
    try:
        jid = job.wait_running(timeout=timeout)
        while not done(jid):
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met before timeout")
            state = job.state_or_none()
            if state is not None and state not in ACTIVE_STATES:
                raise RuntimeError(f"Flink job {jid} is {state}")
            time.sleep(poll)
    finally:
        try:
            job.cancel_if_active(find_timeout=30.0)
        finally:
            try:
                result.cancel()
            except Exception:  # noqa: BLE001 (job service may already be gone)
                pass
    return jid


if __name__ == "__main__":
    print(
        " ".join(
            flink_pipeline_args(
                checkpoint_interval_ms=int(os.environ.get("CHECKPOINT_INTERVAL_MS", "60000"))
            )
        )
    )


def is_flink(argv: list[str]) -> bool:
    """Whether ``argv`` asks for the FlinkRunner."""
    return any(a in ("--runner=FlinkRunner", "--runner=flink") for a in argv) or (
        "--runner" in argv and argv[argv.index("--runner") + 1] in ("FlinkRunner", "flink"))


def with_flink_defaults(argv: list[str], **preset: Any) -> list[str]:
    """``argv`` with the local preset's flags in front of it, for the ones it lacks.

    So ``--runner=FlinkRunner --topic=...`` alone runs streaming on the local
    cluster with RocksDB and checkpoints every 60 s (exactly once), and any flag the
    user gives wins.
    """
    if not is_flink(argv):
        return argv
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    bundles = _last_value(argv, "--bundle_preset", "low_latency")
    if bundles not in BUNDLE_PRESETS:
        raise SystemExit(f"--bundle_preset={bundles}: one of {', '.join(BUNDLE_PRESETS)}")
    preset = {**BUNDLE_PRESETS[bundles], **preset}
    given_env = _last_value(argv, "--environment_type", "EXTERNAL")
    if given_env != "EXTERNAL":  # LOOPBACK / PROCESS / DOCKER take no pool address
        given.add("--environment_config")
    defaults = [a for a in FlinkPreset.local(**preset).pipeline_args()
                if a.split("=", 1)[0] not in given]
    return defaults + argv


def _last_value(argv: Sequence[str], flag: str, default: str) -> str:
    """The value of ``flag`` as Beam's option parser reads it: the last one given wins."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{flag}=")]
    return values[-1] if values else default


def rest_port_of(flink_master: str) -> int:
    """``localhost:8081`` -> 8081 (the JobManager's REST port)."""
    return int(flink_master.rsplit(":", 1)[1])


def input_watermarks(rest_port: int, jid: str) -> dict[str, int]:
    """Each non-source vertex's lowest current input watermark (epoch ms)."""
    out: dict[str, int] = {}
    for vertex in _rest(rest_port, f"/jobs/{jid}").get("vertices", []):
        if vertex["name"].startswith("Source:"):
            continue
        marks = _rest(rest_port, f"/jobs/{jid}/vertices/{vertex['id']}/watermarks")
        values = [int(m["value"]) for m in marks if m["id"].endswith("currentInputWatermark")]
        if values:
            out[vertex["name"]] = min(values)
    return out
