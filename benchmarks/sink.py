"""Section 2: feature writes/s of the Redis sink beside a raw redis-py loop.

One throwaway ``redis-server`` (``runners.local_redis.LocalRedis``), emptied
before every measurement so the guard always sees new keys. The same feature
vectors (distinct users, three features each, as the user pipeline writes
them) are written by, for each batch size:

- ``raw_hset``: a plain redis-py pipelined loop, ``HSET`` of the same fields
  (value, ``:as_of``, ``:final``, ``:updated_at``) per entity; the practical
  limit for Python and the denominator of every ratio;
- ``raw_guarded``: the same loop sending the guard script (``EVALSHA``) instead
  of ``HSET``: raw_hset / raw_guarded is the guard's cost, Python-side wrapping aside;
- ``writer``: ``transforms.redis_sink.RedisWriter.write`` per batch;
- ``dofn``: the sink DoFn (``_RedisSinkFn``) driven directly through
  setup/start_bundle/process/finish_bundle, without a runner;
- ``beam`` (batch sizes 100 and 1000): ``WriteToRedis`` in a DirectRunner
  pipeline fed by ``beam.Create``; its marginal rate discounts an identical
  pipeline whose sink is a no-op.

Rates are the best of the repeats (the run least disturbed by the rest of
the machine); every repeat is kept in the JSON. Batch size 1 writes a quarter
as many entities (one round trip each).

Plus the guard rejecting every field (a replay of older values).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks.measure import best_of
from runners.local_redis import LocalRedis
from runtime.direct import apply_direct_preset
from transforms.model import FeatureUpdate, FeatureVector
from transforms.redis_sink import GUARDED_HSET, RedisSinkConfig, RedisWriter, WriteToRedis
from transforms.redis_sink import _RedisSinkFn as RedisSinkFn

NAME = "sink"
TITLE = "Sink: Redis feature writes/s vs a raw redis-py loop"

BATCH_SIZES = (1, 10, 100, 1000)
BEAM_BATCH_SIZES = (100, 1000)  # the pipeline's default, and the largest
SIZES = {
    "quick": {"writes": 4_000, "repeats": 4, "beam_repeats": 1},
    "full": {"writes": 20_000, "repeats": 7, "beam_repeats": 3},
}
TARGET_RATIO = 0.8  # the target: the sink at >= 80% of the raw loop
AS_OF_MS = 1_767_225_900_000
PREFIX = "features"


def make_vectors(n: int, as_of_ms: int = AS_OF_MS) -> list[FeatureVector]:
    """``n`` users' vectors of the user pipeline's three features."""
    out = []
    for i in range(n):
        user = f"u{i:07d}"
        out.append(FeatureVector("user", user, (
            FeatureUpdate("user", user, "txn_total_5m", 12.5 + i % 97 * 0.25, as_of_ms, True),
            FeatureUpdate("user", user, "clicks_in_session", i % 31, as_of_ms - 7, False),
            FeatureUpdate("user", user, "session_duration_s", i % 1800, as_of_ms - 7, False),
        )))
    return out


def _chunks(vectors: list[FeatureVector], size: int) -> list[list[FeatureVector]]:
    return [vectors[i:i + size] for i in range(0, len(vectors), size)]


def _raw_hset(client: Any, vectors: list[FeatureVector], batch: int) -> None:
    for chunk in _chunks(vectors, batch):
        pipe = client.pipeline(transaction=False)
        now = str(int(time.time() * 1000))
        for v in chunk:
            fields: dict[str, str] = {}
            for u in v.updates:
                fields[u.feature] = repr(u.value) if isinstance(u.value, float) else str(u.value)
                fields[f"{u.feature}:as_of"] = str(u.as_of_ms)
                fields[f"{u.feature}:final"] = "1" if u.final else "0"
                fields[f"{u.feature}:updated_at"] = now
            pipe.hset(f"{PREFIX}:{v.entity_type}:{v.entity_id}", mapping=fields)
        pipe.execute()


def _raw_guarded(client: Any, sha: str, vectors: list[FeatureVector], batch: int) -> None:
    for chunk in _chunks(vectors, batch):
        pipe = client.pipeline(transaction=False)
        for v in chunk:
            args: list[str] = []
            for u in v.updates:
                value = repr(u.value) if isinstance(u.value, float) else str(u.value)
                args += [u.feature, value, str(u.as_of_ms), "1" if u.final else "0"]
            pipe.evalsha(sha, 1, f"{PREFIX}:{v.entity_type}:{v.entity_id}", "0", *args)
        pipe.execute()


def _writer(writer: RedisWriter, vectors: list[FeatureVector], batch: int) -> int:
    return sum(writer.write(chunk) for chunk in _chunks(vectors, batch))


def _dofn(config: RedisSinkConfig, vectors: list[FeatureVector]) -> None:
    fn = RedisSinkFn(config)
    fn.setup()
    try:
        fn.start_bundle()
        for v in vectors:
            fn.process(v)
        fn.finish_bundle()
    finally:
        fn.teardown()


def _drop(_: FeatureVector) -> None:
    return None


def _beam_seconds(vectors: list[FeatureVector], config: RedisSinkConfig | None) -> float:
    """Wall seconds of Create(vectors) | WriteToRedis (or a no-op) on the DirectRunner."""
    options = PipelineOptions(["--runner=DirectRunner"])
    apply_direct_preset(options)
    start = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        created = p | "Vectors" >> beam.Create(vectors)
        if config is None:
            created | "NoSink" >> beam.Map(_drop)
        else:
            created | "Sink" >> WriteToRedis(config)
    return time.perf_counter() - start


def _check(client: Any, n: int) -> None:
    """Every entity written, with all 12 fields (3 features x value/as_of/final/updated_at)."""
    keys = client.dbsize()
    sample = client.hlen(f"{PREFIX}:user:u{n - 1:07d}")
    if keys != n or sample != 12:
        raise RuntimeError(f"sink wrote {keys} keys (expected {n}), {sample} fields (12)")


def _interleaved(variants: dict[str, Callable[[], Any]], repeats: int, client: Any,
                 n: int) -> dict[str, list[float]]:
    """Seconds of each variant, ``repeats`` rounds, variants interleaved within a round.

    Interleaving spreads the machine's drift (the client and redis-server share
    two cores) over all variants instead of loading it onto one.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            client.flushdb()
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            _check(client, n)
    return times


def run(mode: str) -> dict[str, Any]:
    size = SIZES[mode]
    rows: list[dict[str, Any]] = []
    with LocalRedis() as server:
        client = server.client()
        sha = client.script_load(GUARDED_HSET)
        for batch in BATCH_SIZES:
            # One round trip per write at batch size 1: fewer writes say as much.
            n = size["writes"] // 4 if batch == 1 else size["writes"]
            vectors = make_vectors(n)
            config = RedisSinkConfig(url=server.url, batch_size=batch, flush_ms=60_000)
            writer = RedisWriter(config, client)
            variants: dict[str, Callable[[], Any]] = {
                "raw_hset": lambda v=vectors, b=batch: _raw_hset(client, v, b),
                "raw_guarded": lambda v=vectors, b=batch: _raw_guarded(client, sha, v, b),
                "writer": lambda v=vectors, w=writer, b=batch: _writer(w, v, b),
                "dofn": lambda v=vectors, c=config: _dofn(c, v),
            }
            times = _interleaved(variants, size["repeats"], client, n)
            noop: list[float] = []
            if batch in BEAM_BATCH_SIZES:
                times["beam"] = []
                for _ in range(size["beam_repeats"]):
                    client.flushdb()
                    times["beam"].append(_beam_seconds(vectors, config))
                    _check(client, n)
                    noop.append(_beam_seconds(vectors, None))
            for variant, seconds in times.items():
                best = min(seconds)
                row = {"variant": variant, "batch_size": batch, "writes": n,
                       "seconds": best, "all_seconds": seconds, "writes_per_s": n / best,
                       "fields_per_s": 3 * n / best}
                if variant == "beam":
                    row["noop_pipeline_seconds"] = min(noop)
                    row["marginal_writes_per_s"] = (n / (best - min(noop))
                                                    if best > min(noop) else None)
                rows.append(row)

        # The guard turning down a replay of older values: every field rejected.
        n = size["writes"]
        client.flushdb()
        writer = RedisWriter(RedisSinkConfig(url=server.url, batch_size=100), client)
        _writer(writer, make_vectors(n), 100)
        older = make_vectors(n, AS_OF_MS - 60_000)
        best, all_s, rejected = best_of(size["repeats"], lambda: _writer(writer, older, 100))
        if rejected != 3 * n:
            raise RuntimeError(f"guard rejected {rejected} of {3 * n} older fields")
        rows.append({"variant": "writer_all_rejected", "batch_size": 100, "writes": n,
                     "seconds": best, "all_seconds": all_s, "writes_per_s": n / best,
                     "fields_per_s": 3 * n / best})
        client.close()

    raw = {r["batch_size"]: r["writes_per_s"] for r in rows if r["variant"] == "raw_hset"}
    for r in rows:
        r["ratio_to_raw_hset"] = r["writes_per_s"] / raw[r["batch_size"]]
        if r.get("marginal_writes_per_s"):
            r["marginal_ratio_to_raw_hset"] = r["marginal_writes_per_s"] / raw[r["batch_size"]]
    return {"parameters": {**size, "batch_sizes": list(BATCH_SIZES),
                           "beam_batch_sizes": list(BEAM_BATCH_SIZES),
                           "features_per_write": 3, "target_ratio": TARGET_RATIO},
            "rows": rows}


def _row(data: dict[str, Any], variant: str, batch: int) -> dict[str, Any]:
    return next(r for r in data["rows"] if r["variant"] == variant and r["batch_size"] == batch)


def headline(data: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for batch in (100, 1000):
        out[f"raw_hset writes/s @{batch}"] = _row(data, "raw_hset", batch)["writes_per_s"]
        out[f"dofn/raw @{batch}"] = _row(data, "dofn", batch)["ratio_to_raw_hset"]
        out[f"guarded/hset raw @{batch}"] = _row(data, "raw_guarded", batch)["ratio_to_raw_hset"]
    return out


def print_summary(data: dict[str, Any]) -> None:
    print(f"  {'variant':<20}{'batch':>6}{'writes/s':>12}{'vs raw':>8}")
    for r in data["rows"]:
        print(f"  {r['variant']:<20}{r['batch_size']:>6}{r['writes_per_s']:>12,.0f}"
              f"{r['ratio_to_raw_hset']:>8.2f}"
              + (f"   marginal {r['marginal_writes_per_s']:,.0f}/s"
                 if r.get("marginal_writes_per_s") else ""))
