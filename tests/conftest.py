"""Shared fixtures: a real redis-server and a GCS emulator per test session, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pipelines.storage import EMULATOR_ENV
from runners.local_redis import LocalRedis
from runtime.ports import free_port


class RedisServer(LocalRedis):
    """A LocalRedis whose client decodes responses (handier in assertions)."""

    def client(self):  # type: ignore[override]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture()
def redis_db(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, emptied before each test."""
    redis_server.client().flushall()
    yield redis_server


class GcsEmulator:
    """``gcp-storage-emulator`` (in memory) on a free port, with one bucket."""

    bucket = "rtf-test"

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
             f"--port={self.port}", "--in-memory", f"--default-bucket={self.bucket}", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.host}/storage/v1/b/{self.bucket}",
                                            timeout=2):
                    return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self._process.kill()
                    _, err = self._process.communicate()
                    raise RuntimeError("the GCS emulator did not start: "
                                       + err.decode()[-2000:]) from None
                time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"gs://{self.bucket}/{path}"

    def env(self) -> dict[str, str]:
        """The environment of a process that reads and writes this emulator."""
        return {**os.environ, EMULATOR_ENV: self.host}

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stderr.close()


@pytest.fixture(scope="session")
def gcs() -> Iterator[GcsEmulator]:
    emulator = GcsEmulator()
    try:
        yield emulator
    finally:
        emulator.stop()
