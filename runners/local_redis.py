"""A throwaway local redis-server for demos and tests (no persistence)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from types import TracebackType

import redis

from runtime.ports import free_port


class LocalRedis:
    """Starts ``redis-server`` on ``port`` (a free one if 0) and stops it on exit.

    Args:
        port: TCP port; 0 picks a free one.
        password: ``--requirepass`` value, or ``None``.
    """

    def __init__(self, port: int = 0, password: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="rtf-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> LocalRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make install`")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir.name]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited (port {self.port} in use?)")
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.AuthenticationError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server not ready on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        self._dir.cleanup()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
