"""A Python worker pool for ``--environment_type=EXTERNAL``: one beside every TaskManager.

The TaskManager asks the pool (``--environment_config=<host>:<port>``) to start
an SDK worker for each job it runs; the pool starts it as a process with
``rtf-sdk-worker`` (:mod:`runtime.sdk_worker`), which reads the job's pipeline
options from the runner and starts Beam's SDK harness with them. Beam's own
``worker_pool_main`` starts its workers with a state cache of 0 and ignores
the options; it also listens on every interface, so two pools on one machine
need two ports. This one binds ``--host`` (a loopback address of its own on a
shared machine, ``127.0.0.1`` in a pod), so every pool serves one port and the
TaskManagers reach the pool beside them under one name (``beam-worker-pool``).

    python -m runtime.worker_pool --host=127.0.0.1 --port=50000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor

WORKER_EXECUTABLE = "rtf-sdk-worker"

_LOGGER = logging.getLogger("runtime.worker_pool")


def worker_pool_command(host: str, port: int, python: str = "python") -> list[str]:
    """The command that runs a pool: the local cluster's and the Kubernetes sidecar's."""
    return [python, "-m", "runtime.worker_pool", f"--host={host}", f"--port={port}"]


def worker_executable() -> str:
    """The SDK worker launcher installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / WORKER_EXECUTABLE
    if beside.exists():
        return str(beside)
    found = shutil.which(WORKER_EXECUTABLE)
    if not found:
        raise FileNotFoundError(f"{WORKER_EXECUTABLE} is not installed (pip install rtfeatures)")
    return found


def serve(host: str, port: int) -> grpc.Server:
    """Starts the pool's gRPC service on ``host:port``; returns the running server."""
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"worker pool: cannot listen on {host}:{port}")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True,
                                            container_executable=worker_executable())
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    _LOGGER.info("worker pool listening on %s:%d, workers: %s", host, bound,
                 worker_executable())
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=50000, help="port to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="rtf-worker-pool-") as scratch:
        # Workers inherit TMPDIR: their scratch space goes when the pool does, even
        # for workers the pool had to SIGKILL.
        os.environ["TMPDIR"] = scratch
        tempfile.tempdir = None
        server = serve(args.host, args.port)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
