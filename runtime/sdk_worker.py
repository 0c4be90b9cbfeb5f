"""An SDK worker started by the worker pool, in the SDK container's contract.

The pool runs ``rtf-sdk-worker --id=... --provision_endpoint=... --control_endpoint=...
--logging_endpoint=... --artifact_endpoint=...``. Like Beam's container boot,
this asks the runner's provision service for the job's pipeline options and
starts Beam's SDK harness (``sdk_worker_main``) with them, so the options the
job was submitted with hold in the worker: ``--max_cache_memory_usage_mb`` (the
state cache), ``--state_cache_sizer``, the log level. Artifacts are not staged:
the pool's environment has this package and its dependencies installed (the
same image or virtualenv the job was submitted from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from google.protobuf import json_format

from runtime import state_cache, state_commit


def _descriptor(url: str) -> str:
    """An ApiServiceDescriptor in text format, as sdk_worker_main reads it."""
    return f'url: "{url}"'


def provision_info(endpoint: str, worker_id: str,
                   timeout_s: float = 60.0) -> beam_provision_api_pb2.ProvisionInfo:
    """The job's provision info (pipeline options, endpoints) from the runner."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", worker_id)],
                                         timeout=timeout_s)
    return response.info


def worker_environment(args: argparse.Namespace,
                       info: beam_provision_api_pb2.ProvisionInfo) -> dict[str, str]:
    """The environment ``sdk_worker_main`` expects, from the pool's flags and the provision info."""
    options = json_format.MessageToDict(info.pipeline_options)
    env = {
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json.dumps(options),
        "CONTROL_API_SERVICE_DESCRIPTOR": _descriptor(info.control_endpoint.url
                                                      or args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": _descriptor(info.logging_endpoint.url
                                                      or args.logging_endpoint),
        # The pool points TMPDIR at a directory of its own, removed when the pool stops.
        "SEMI_PERSISTENT_DIRECTORY": (args.semi_persistent_directory
                                      or tempfile.mkdtemp(prefix="rtf-sdk-worker-")),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = _descriptor(info.status_endpoint.url)
    return env


def _option(options: dict[str, object], name: str, default: str) -> str:
    """The value of the launch option ``name`` the job was submitted with."""
    inner = options.get("options", options)
    assert isinstance(inner, dict)
    for key in (name, f"beam:option:{name}:v1"):
        if key in inner:
            return str(inner[key])
    return default


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--provision_endpoint", required=True)
    parser.add_argument("--control_endpoint", default="")
    parser.add_argument("--logging_endpoint", default="")
    parser.add_argument("--artifact_endpoint", default="")
    parser.add_argument("--semi_persistent_directory", default="")
    args, _ = parser.parse_known_args(argv)
    os.dup2(2, 1)  # the pool pipes stdout and never reads it: print() would fill the pipe
    info = provision_info(args.provision_endpoint, args.id)
    env = worker_environment(args, info)
    os.environ.update(env)
    options = json.loads(env["PIPELINE_OPTIONS"])
    if _option(options, "state_cache_sizer", "estimate") == "estimate":
        state_cache.install()
    state_commit.install(_option(options, "state_commit", "pipelined"))
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
