"""Section 5: lookup latency of ``serving.lookup.FeatureClient`` against local Redis.

A throwaway ``redis-server`` is filled through ``RedisWriter`` (the sink's
guarded writes, hash layout) with all six features of ``users`` users. Then,
one call at a time, random existing users are read with ``get`` (one entity,
one ``HMGET``) and ``get_many`` (100 entities, one pipelined round trip).
Beside each, the same reads with raw redis-py (no decoding, no defaults):
the floor the client's own work sits on. Latencies are per call, client side,
after a warm-up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks.measure import latency_summary
from runners.local_redis import LocalRedis
from serving.lookup import FeatureClient
from transforms.model import FeatureUpdate, FeatureVector
from transforms.redis_sink import RedisSinkConfig, RedisWriter

NAME = "serving"
TITLE = "Serving: lookup latency for 1 and 100 entities"

SIZES = {
    "quick": {"users": 10_000, "calls_1": 3_000, "calls_100": 500, "warmup": 200},
    "full": {"users": 100_000, "calls_1": 20_000, "calls_100": 3_000, "warmup": 500},
}
MANY = 100
AS_OF_MS = 1_767_225_900_000


def _vector(i: int) -> FeatureVector:
    user = f"u{i:07d}"
    values: dict[str, Any] = {
        "txn_total_5m": 10.0 + i % 89 * 0.5, "clicks_in_session": i % 23,
        "session_duration_s": i % 1500, "lifetime_rides": i % 300,
        "rides_per_city": {"ams": i % 7, "ber": i % 5 + 1}, "amount_sum_60s": i % 61 * 1.25,
    }
    return FeatureVector("user", user, tuple(
        FeatureUpdate("user", user, f, v, AS_OF_MS, True) for f, v in values.items()))


def _latencies(calls: int, warmup: int, fn: Callable[[], Any]) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(mode: str) -> dict[str, Any]:
    size = SIZES[mode]
    users = [f"u{i:07d}" for i in range(size["users"])]
    rng = random.Random(5)
    rows = []
    with LocalRedis() as server:
        redis_client = server.client()
        writer = RedisWriter(RedisSinkConfig(url=server.url, batch_size=1000), redis_client)
        for start in range(0, len(users), 1000):
            writer.write([_vector(i) for i in range(start, min(start + 1000, len(users)))])
        client = FeatureClient(redis_client)
        probe = client.get(users[-1])
        if probe.defaulted or probe.cold:
            raise RuntimeError(f"lookup of a written user came back defaulted: {probe}")
        keys_fields = client._fields

        def one() -> Any:
            return client.get(rng.choice(users))

        def many() -> Any:
            return client.get_many(rng.sample(users, MANY))

        def raw_one() -> Any:
            return redis_client.hmget(client.key(rng.choice(users)), keys_fields)

        def raw_many() -> Any:
            pipe = redis_client.pipeline(transaction=False)
            for user in rng.sample(users, MANY):
                pipe.hmget(client.key(user), keys_fields)
            return pipe.execute()

        for name, entities, calls, fn in (
                ("get", 1, size["calls_1"], one), ("raw_hmget", 1, size["calls_1"], raw_one),
                ("get_many", MANY, size["calls_100"], many),
                ("raw_pipelined_hmget", MANY, size["calls_100"], raw_many)):
            summary = latency_summary(_latencies(calls, size["warmup"], fn))
            rows.append({"variant": name, "entities": entities, **summary})
        dbsize = redis_client.dbsize()
        redis_client.close()
    return {"parameters": {**size, "features": len(client._features),
                           "fields_per_entity": len(keys_fields), "keys_in_redis": dbsize},
            "rows": rows}


def headline(data: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in data["rows"]:
        if r["variant"] in ("get", "get_many"):
            out[f"{r['variant']} p50 us"] = r["p50_us"]
            out[f"{r['variant']} p99 us"] = r["p99_us"]
    return out


def print_summary(data: dict[str, Any]) -> None:
    for r in data["rows"]:
        print(f"  {r['variant']:<22} {r['entities']:>3} entities: p50 {r['p50_us']:,.0f} us, "
              f"p99 {r['p99_us']:,.0f} us, max {r['max_us']:,.0f} us ({r['n']} calls)")
