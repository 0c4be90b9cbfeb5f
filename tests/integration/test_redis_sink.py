"""The guarded, batching Redis sink against a real redis-server."""

from __future__ import annotations

import json
import threading
import time

import apache_beam as beam
import pytest
import redis as redis_lib
from apache_beam.testing.test_pipeline import TestPipeline

from runners.local_redis import LocalRedis
from tests.helpers import batch_options
from transforms.model import FeatureUpdate, FeatureVector
from transforms.redis_sink import RedisSinkConfig, RedisWriter, WriteToRedis, redact_url


def vec(user, *updates):
    return FeatureVector("user", user, tuple(
        FeatureUpdate("user", user, f, v, as_of, final) for f, v, as_of, final in updates))


def writer(server, **kw):
    return RedisWriter(RedisSinkConfig(url=server.url, **kw))


def test_newer_as_of_wins_and_older_is_rejected(redis_db):
    w = writer(redis_db)
    assert w.write([vec("u", ("txn_total_5m", 5.0, 600_000, True))]) == 0
    assert w.write([vec("u", ("txn_total_5m", 9.0, 300_000, True))]) == 1
    h = redis_db.client().hgetall("features:user:u")
    assert (h["txn_total_5m"], h["txn_total_5m:as_of"], h["txn_total_5m:final"]) == (
        "5.0", "600000", "1")
    assert int(h["txn_total_5m:updated_at"]) > 1_600_000_000_000


def test_equal_as_of_final_replaces_speculative_never_the_reverse(redis_db):
    w = writer(redis_db)
    w.write([vec("u", ("clicks_in_session", 2, 1_000, False))])
    assert w.write([vec("u", ("clicks_in_session", 3, 1_000, True))]) == 0
    assert w.write([vec("u", ("clicks_in_session", 1, 1_000, False))]) == 1
    assert w.write([vec("u", ("clicks_in_session", 4, 1_000, True))]) == 0  # a late repair
    assert redis_db.client().hget("features:user:u", "clicks_in_session") == "4"


def test_guard_is_per_feature(redis_db):
    w = writer(redis_db)
    w.write([vec("u", ("session_duration_s", 60, 1_800_000, False))])
    # A window that ended earlier fires later: it must still land.
    assert w.write([vec("u", ("txn_total_5m", 1.5, 300_000, True))]) == 0
    assert redis_db.client().hget("features:user:u", "txn_total_5m") == "1.5"


def test_as_of_compares_as_integers_beyond_double_precision(redis_db):
    w = writer(redis_db)
    big = 9_007_199_254_740_993  # 2**53 + 1: equal to 2**53 as a double
    w.write([vec("u", ("amount_sum_60s", 1.0, big - 1, True))])
    assert w.write([vec("u", ("amount_sum_60s", 2.0, big, True))]) == 0
    assert w.write([vec("u", ("amount_sum_60s", 3.0, -5, True))]) == 1
    assert redis_db.client().hget("features:user:u", "amount_sum_60s") == "2.0"


def test_key_ttl(redis_db):
    writer(redis_db, key_ttl_s=50).write([vec("u", ("lifetime_rides", 1, 1, True))])
    assert 0 < redis_db.client().pttl("features:user:u") <= 50_000


def test_seed_layout_is_json_per_user_with_exact_numbers(redis_db):
    w = writer(redis_db, layout="both")
    w.write([vec("u", ("amount_sum_60s", 0.1, 1_999, True),
                 ("rides_per_city", {"ams": 2}, 1_999, True))])
    assert w.write([vec("u", ("amount_sum_60s", 7.0, 999, True))]) == 2  # both layouts
    doc = json.loads(redis_db.client().hget("user_features", "u"))
    assert doc["amount_sum_60s"] == 0.1 and doc["rides_per_city"] == {"ams": 2}
    assert doc["_meta"]["amount_sum_60s"] == {"as_of": "1999", "final": "1"}


def test_two_writers_racing_never_leave_an_older_value(redis_db):
    """Each writer sends its as_of values in a random-ish order; the newest must win."""
    errors = []

    def run(offset):
        try:
            w = writer(redis_db, batch_size=10)
            for i in range(300):
                as_of = (i * 7919 + offset) % 300
                w.write([vec(f"k{j}", ("txn_total_5m", float(as_of), as_of, True))
                         for j in range(5)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(o,)) for o in (0, 151)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    client = redis_db.client()
    for j in range(5):
        assert client.hget(f"features:user:k{j}", "txn_total_5m") == "299.0"


def test_sink_batches_and_flushes_at_bundle_end(redis_db):
    vectors = [vec(f"u{i}", ("lifetime_rides", i, 10, True)) for i in range(250)]
    config = RedisSinkConfig(url=redis_db.url, batch_size=100)
    with TestPipeline(options=batch_options()) as p:
        p | beam.Create(vectors) | WriteToRedis(config)
    result = p.result.metrics().query()["counters"]
    counts = {c.key.metric.name: c.committed for c in result}
    client = redis_db.client()
    assert len(list(client.scan_iter("features:user:*"))) == 250
    assert client.hget("features:user:u249", "lifetime_rides") == "249"
    assert counts["entity_writes"] == 250 and counts["batches"] >= 3


def test_retries_through_an_outage_and_reloads_scripts():
    with LocalRedis() as server:
        w = RedisWriter(RedisSinkConfig(url=server.url, max_retry_s=30, socket_timeout_s=1))
        w.write([vec("u", ("lifetime_rides", 1, 1, True))])
        port = server.port
        server.stop()  # an empty restart: the script cache is gone too
        restarted = LocalRedis(port)
        timer = threading.Timer(1.5, restarted.start)
        timer.start()
        try:
            started = time.monotonic()
            assert w.write([vec("u", ("lifetime_rides", 2, 2, True))]) == 0
            assert time.monotonic() - started >= 1.0
            assert w.retries >= 1
            assert restarted.client().hget("features:user:u", "lifetime_rides") == b"2"
        finally:
            timer.join()
            restarted.stop()


def test_gives_up_after_max_retry_and_raises():
    server = LocalRedis().start()
    url = server.url
    server.stop()
    w = RedisWriter(RedisSinkConfig(url=url, max_retry_s=0.5, socket_timeout_s=0.2))
    with pytest.raises(redis_lib.ConnectionError):
        w.write([vec("u", ("lifetime_rides", 1, 1, True))])


def test_password_works_and_never_shows(caplog):
    secret = "s3cr3t-pw"
    with LocalRedis(password=secret) as server:
        config = RedisSinkConfig(url=server.url)
        assert secret not in repr(config) and secret not in redact_url(server.url)
        RedisWriter(config).write([vec("u", ("lifetime_rides", 1, 1, True))])
        assert server.client().hget("features:user:u", "lifetime_rides") == b"1"
        with pytest.raises(redis_lib.AuthenticationError) as err:
            RedisWriter(RedisSinkConfig(url=server.url.replace(secret, "wrong"))).write(
                [vec("u", ("lifetime_rides", 1, 1, True))])
        assert secret not in str(err.value)
    assert secret not in caplog.text


def test_identical_rewrite_is_a_no_op(redis_db):
    w = writer(redis_db, layout="both")
    batch = [vec("u", ("txn_total_5m", 2.5, 300_000, True), ("lifetime_rides", 3, 9, False))]
    assert w.write(batch) == 0
    client = redis_db.client()
    before = (client.hgetall("features:user:u"), client.hget("user_features", "u"))
    time.sleep(0.01)
    assert w.write(batch) == 4  # every field of both layouts left alone
    assert (client.hgetall("features:user:u"), client.hget("user_features", "u")) == before
