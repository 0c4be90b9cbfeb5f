"""A batching, guarded, retrying Redis sink for feature vectors.

Writes are pipelined (one round trip per batch) and each entity's write runs a
Lua script that applies the ``as_of`` guard inside Redis: the check and the
write are one atomic step, so retries, replays, late firings and two racing
writers can never put an older value over a newer one. A batch is flushed when
it reaches ``batch_size``, when its oldest entry is ``flush_ms`` old, and at the
end of every bundle: the runner does not see a bundle as done (and Flink does
not complete a checkpoint) before Redis accepted its writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.model import FeatureVector, encode_value

_LOG = logging.getLogger(__name__)
_LUA_DIR = Path(__file__).resolve().parent / "lua"
_COMMON_LUA = (_LUA_DIR / "common.lua").read_text()
GUARDED_HSET = _COMMON_LUA + (_LUA_DIR / "guarded_hset.lua").read_text()
GUARDED_SEED = _COMMON_LUA + (_LUA_DIR / "guarded_seed.lua").read_text()

LAYOUTS = ("hash", "seed", "both")


def redact_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://host:6379/0`` (for logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class RedisSinkConfig:
    """Settings of the Redis sink.

    Attributes:
        url: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS. The
            password never reaches logs (``repr`` redacts it).
        layout: ``hash`` (one hash per entity), ``seed`` (the compatibility layout:
            ``HSET user_features <id> <json>``, one JSON vector per user) or ``both``.
        prefix: key prefix of the hash layout: ``{prefix}:{entity_type}:{id}``.
        seed_key: the hash of the compatibility layout.
        key_ttl_s: expire an entity's hash this long after its last write
            (hash layout only); ``None`` keeps it.
        batch_size: entities per pipelined batch.
        flush_ms: flush a batch whose oldest entry is this old.
        max_retry_s: keep retrying connection errors this long, with
            exponential backoff, before failing the bundle.
        password: a password kept out of the URL (optional).
        socket_timeout_s: per-command socket timeout.
    """

    url: str
    layout: str = "hash"
    prefix: str = "features"
    seed_key: str = "user_features"
    key_ttl_s: float | None = None
    batch_size: int = 100
    flush_ms: int = 1000
    max_retry_s: float = 120.0
    password: str | None = None
    socket_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.batch_size < 1 or self.flush_ms < 0 or self.max_retry_s < 0:
            raise ValueError("batch_size >= 1, flush_ms >= 0 and max_retry_s >= 0")
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")

    def __repr__(self) -> str:
        return (f"RedisSinkConfig(url={redact_url(self.url)!r}, layout={self.layout!r}, "
                f"prefix={self.prefix!r}, batch_size={self.batch_size})")

    def key(self, entity_type: str, entity_id: str) -> str:
        """The hash of one entity in the hash layout."""
        return f"{self.prefix}:{entity_type}:{entity_id}"

    def client(self) -> Any:
        """A new redis-py client (callers own and close it)."""
        import redis

        kwargs: dict[str, Any] = {"socket_timeout": self.socket_timeout_s,
                                  "socket_connect_timeout": self.socket_timeout_s}
        if self.password is not None:
            kwargs["password"] = self.password
        return redis.Redis.from_url(self.url, **kwargs)


def _vector_args(vector: FeatureVector) -> list[str]:
    args: list[str] = []
    for u in vector.updates:
        args += [u.feature, encode_value(u.value), str(u.as_of_ms), "1" if u.final else "0"]
    return args


class RedisWriter:
    """Writes batches of vectors with the guard scripts; retries connection errors.

    Used by the sink DoFn and usable on its own (tests, backfills).
    """

    def __init__(self, config: RedisSinkConfig, client: Any | None = None) -> None:
        import redis

        self.config = config
        self._client = client or config.client()
        self._retryable = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        # redis-py makes a wrong password a ConnectionError; retrying cannot fix it.
        self._fatal = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
        self._noscript = redis.exceptions.NoScriptError
        self._sha: dict[str, str] = {}
        self.retries = 0

    def close(self) -> None:
        self._client.close()

    def _load_scripts(self) -> None:
        self._sha = {name: self._client.script_load(text)
                     for name, text in (("hash", GUARDED_HSET), ("seed", GUARDED_SEED))}

    def write(self, vectors: list[FeatureVector]) -> int:
        """Writes ``vectors``; returns the number of fields the guard left alone
        (counted per layout written)."""
        deadline = time.monotonic() + self.config.max_retry_s
        delay = 0.05
        while True:
            try:
                if not self._sha:
                    self._load_scripts()
                return self._write_once(vectors)
            except self._fatal:
                raise
            except self._noscript:
                # Redis restarted and lost its script cache: load and resend.
                self._sha = {}
            except self._retryable as e:
                if time.monotonic() + delay > deadline:
                    raise
                self.retries += 1
                _LOG.warning("redis %s unavailable (%s: %s); retry in %.2fs",
                             redact_url(self.config.url), type(e).__name__, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._sha = {}

    def _write_once(self, vectors: list[FeatureVector]) -> int:
        cfg = self.config
        ttl_ms = str(int(cfg.key_ttl_s * 1000)) if cfg.key_ttl_s else "0"
        pipe = self._client.pipeline(transaction=False)
        for vector in vectors:
            args = _vector_args(vector)
            if cfg.layout in ("hash", "both"):
                pipe.evalsha(self._sha["hash"], 1, cfg.key(vector.entity_type, vector.entity_id),
                             ttl_ms, *args)
            if cfg.layout in ("seed", "both"):
                pipe.evalsha(self._sha["seed"], 1, cfg.seed_key, vector.entity_id, *args)
        return sum(int(r) for r in pipe.execute())


# Upper bounds (ms) of the freshness histogram's buckets: cumulative counters
# ``freshness_ms_le_<bound>``, plus ``freshness_ms_count`` and ``freshness_ms_sum``, as
# a Prometheus histogram has them (Flink's reporter exports Beam counters, not
# Beam distributions).
FRESHNESS_BUCKETS_MS: tuple[int, ...] = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000)


class _RedisSinkFn(beam.DoFn):
    def __init__(self, config: RedisSinkConfig) -> None:
        self._config = config
        self._batches = Metrics.counter("redis_sink", "batches")
        self._writes = Metrics.counter("redis_sink", "entity_writes")
        self._fields = Metrics.counter("redis_sink", "fields_written")
        self._retries = Metrics.counter("redis_sink", "retries")
        self._rejections = Metrics.counter("redis_sink", "guard_rejections")
        self._batch_size = Metrics.distribution("redis_sink", "batch_size")
        self._lag = Metrics.distribution("redis_sink", "as_of_to_write_ms")
        self._fresh_le = [Metrics.counter("redis_sink", f"freshness_ms_le_{b}")
                          for b in FRESHNESS_BUCKETS_MS]
        self._fresh_count = Metrics.counter("redis_sink", "freshness_ms_count")
        self._fresh_sum = Metrics.counter("redis_sink", "freshness_ms_sum")

    def setup(self) -> None:
        self._writer = RedisWriter(self._config)
        _LOG.info("redis sink: %r", self._config)

    def start_bundle(self) -> None:
        self._buffer: list[FeatureVector] = []
        self._oldest = 0.0

    def process(self, vector: FeatureVector) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(vector)
        if (len(self._buffer) >= self._config.batch_size
                or (time.monotonic() - self._oldest) * 1000 >= self._config.flush_ms):
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        retries_before = self._writer.retries
        rejected = self._writer.write(self._buffer)
        now_ms = time.time() * 1000
        self._batches.inc()
        self._batch_size.update(len(self._buffer))
        self._writes.inc(len(self._buffer))
        layouts = 2 if self._config.layout == "both" else 1
        fields = layouts * sum(len(v.updates) for v in self._buffer)
        self._fields.inc(fields - rejected)
        self._rejections.inc(rejected)
        self._retries.inc(self._writer.retries - retries_before)
        fresh = [0] * len(FRESHNESS_BUCKETS_MS)
        lag_sum = 0
        for vector in self._buffer:
            lag = max(0, int(now_ms - max(u.as_of_ms for u in vector.updates)))
            self._lag.update(lag)
            lag_sum += lag
            for i, bound in enumerate(FRESHNESS_BUCKETS_MS):
                if lag <= bound:
                    fresh[i] += 1
        # Every bucket is incremented, by 0 too: each series exists from the first flush,
        # as a Prometheus histogram's buckets do (a dashboard ratio never lacks its term).
        for counter, n in zip(self._fresh_le, fresh, strict=True):
            counter.inc(n)
        self._fresh_count.inc(len(self._buffer))
        self._fresh_sum.inc(lag_sum)
        self._buffer = []

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()


class WriteToRedis(beam.PTransform):
    """Writes ``FeatureVector``s to Redis (see the module docstring).

    Args:
        config: the sink settings.
    """

    def __init__(self, config: RedisSinkConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, vectors: beam.PCollection) -> beam.pvalue.PDone:
        vectors | "GuardedWrite" >> beam.ParDo(_RedisSinkFn(self._config))
        return beam.pvalue.PDone(vectors.pipeline)

