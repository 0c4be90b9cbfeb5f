"""The lookup client and the example model service against a real Redis."""

from __future__ import annotations

from serving.lookup import COLD_START_DEFAULTS, FeatureClient
from serving.model_service import predict_for_users
from transforms.model import FeatureUpdate, FeatureVector
from transforms.redis_sink import RedisSinkConfig, RedisWriter


def seed(server):
    w = RedisWriter(RedisSinkConfig(url=server.url))
    w.write([FeatureVector("user", "u1", (
        FeatureUpdate("user", "u1", "txn_total_5m", 12.5, 600_000, True),
        FeatureUpdate("user", "u1", "rides_per_city", {"ams": 2}, 500, False),
        FeatureUpdate("user", "u1", "lifetime_rides", 2, 500, False)))])


def test_typed_values_as_of_and_defaults(redis_db):
    seed(redis_db)
    client = FeatureClient(redis_db.client())
    view = client.get("u1")
    assert view.values["txn_total_5m"] == 12.5 and isinstance(view.values["lifetime_rides"], int)
    assert view.values["rides_per_city"] == {"ams": 2}
    assert view.as_of_ms == {"txn_total_5m": 600_000, "rides_per_city": 500, "lifetime_rides": 500}
    assert view.final == {"txn_total_5m": True, "rides_per_city": False, "lifetime_rides": False}
    assert view.values["amount_sum_60s"] == 0.0 and "amount_sum_60s" in view.defaulted
    assert not view.cold


def test_many_in_one_round_trip_with_cold_start(redis_db):
    seed(redis_db)
    views = FeatureClient(redis_db.client()).get_many(["u1", "nobody"])
    assert [v.entity_id for v in views] == ["u1", "nobody"]
    assert views[1].cold and views[1].values == COLD_START_DEFAULTS


def test_model_service_scores_and_flags_cold_users(redis_db):
    seed(redis_db)
    rows = predict_for_users(FeatureClient(redis_db.client()), ["u1", "nobody"])
    assert rows[0]["cold_start"] is False and rows[1]["cold_start"] is True
    assert 0.0 < rows[1]["score"] < rows[0]["score"] < 1.0
