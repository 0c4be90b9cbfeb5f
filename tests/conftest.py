"""Shared fixtures: a real redis-server per test session, on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runners.local_redis import LocalRedis


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
