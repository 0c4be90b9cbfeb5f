"""Feature declarations: validation, the catalogue listing, serving's names and defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.transforms.window import SlidingWindows

from pipelines.catalogue import FEATURES
from serving.lookup import COLD_START_DEFAULTS, FeatureClient
from serving.model_service import load_model
from transforms.declarations import (
    Aggregation,
    DeclarationError,
    Feature,
    FixedWindows,
    GlobalWindows,
    Sessions,
    Sliding,
    Where,
    check_catalogue,
    count,
    count_by,
    count_distinct,
    last,
    session_span_s,
    sum_of,
)

ROOT = Path(__file__).resolve().parents[2]
RIDE = {"entity": "userId", "source": "ride_event.avsc"}


def ride(name: str = "f", **kw) -> Feature:
    return Feature(name, **{**RIDE, "aggregation": count(), "window": GlobalWindows(), **kw})


@pytest.mark.parametrize("kwargs, message", [
    ({"aggregation": sum_of("amout")}, "feature 'f': field 'amout' is not a field of ride_event"),
    ({"aggregation": sum_of("cityId")}, "feature 'f': sum needs a numeric field; 'cityId'"),
    ({"aggregation": Aggregation("count", "amount")}, "feature 'f': count takes no field"),
    ({"aggregation": Aggregation("median", "amount")}, "feature 'f': aggregation 'median'"),
    ({"aggregation": Aggregation("max")}, "feature 'f': aggregation max needs a field"),
    ({"aggregation": count_distinct("cityId", max_distinct=0)},
     "feature 'f': count_distinct needs max_distinct > 0"),
    ({"aggregation": session_span_s()}, "feature 'f': span_s is defined for Sessions"),
    ({"where": Where("kind", "END")}, "feature 'f': where field 'kind' is not a field"),
    ({"entity": "amount"}, "feature 'f': entity 'amount' must be a string field"),
    ({"entity": "user"}, "feature 'f': entity 'user' is not a field"),
    ({"source": "rides.avsc"}, "feature 'f': source 'rides.avsc' is not a schema"),
    ({"window": Sliding(60, 7)}, "feature 'f': Sliding tile_s 7 must divide size_s 60"),
    ({"window": Sliding(0, 1)}, "feature 'f': Sliding size_s and tile_s must be > 0"),
    ({"window": SlidingWindows(60, 10)}, "feature 'f': window SlidingWindows is not"),
    ({"window": FixedWindows(60, offset=5)}, "feature 'f': FixedWindows with an offset"),
    ({"allowed_lateness_s": -1}, "feature 'f': allowed_lateness_s must be >= 0"),
    ({"state_ttl_s": 0}, "feature 'f': state_ttl_s must be > 0"),
    ({"early_firing": "sometimes"}, "feature 'f': early_firing must be one of"),
    ({"hot_key_fanout": -2}, "feature 'f': hot_key_fanout must be >= 0"),
])
def test_an_invalid_declaration_names_the_feature_and_the_field(kwargs, message):
    with pytest.raises(DeclarationError) as err:
        ride(**kwargs)
    assert str(err.value).startswith(message), str(err.value)


def test_a_bad_name_and_a_name_declared_twice_are_refused():
    with pytest.raises(DeclarationError, match="'Rides-1': name must be a lowercase"):
        ride("Rides-1")
    with pytest.raises(DeclarationError, match="feature 'n': declared twice"):
        check_catalogue([ride("n"), ride("n", where=Where("eventType", "END"))])


@pytest.mark.parametrize("aggregation, window, value_type, default", [
    (sum_of("amount"), FixedWindows(300), "float", 0.0),
    (count(), Sessions(900), "int", 0),
    (count_by("cityId"), GlobalWindows(), "map", {}),
    (count_distinct("cityId"), Sliding(86_400, 60), "int", 0),
    (last("amount"), GlobalWindows(), "float", 0.0),
    (last("cityId"), GlobalWindows(), "string", ""),
    (session_span_s(), Sessions(900), "int", 0),
])
def test_value_type_and_cold_start_default_follow_from_the_declaration(
        aggregation, window, value_type, default):
    f = ride(aggregation=aggregation, window=window)
    assert (f.value_type, f.default) == (value_type, default)


def test_a_where_filter_picks_events_by_one_field():
    where = Where("eventType", "END")
    assert where({"eventType": "END"}) and not where({"eventType": "START"})
    assert not where({})


def test_the_catalogue_cli_lists_every_feature_of_both_pipelines():
    out = subprocess.run([sys.executable, "-m", "pipelines.catalogue"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    # The README's feature table, written out by hand.
    want = {
        "txn_total_5m": ("user", "sum", "tumbling", 300, 60, "float", 0.0),
        "clicks_in_session": ("user", "count", "session", 900, 60, "int", 0),
        "session_duration_s": ("user", "span_s", "session", 900, 60, "int", 0),
        "lifetime_rides": ("ride", "count", "lifetime", None, None, "int", 0),
        "rides_per_city": ("ride", "count_by", "lifetime", None, None, "map", {}),
        "amount_sum_60s": ("ride", "sum", "sliding", 60, 60, "float", 0.0),
        "last_purchase_value": ("user", "last", "lifetime", None, None, "float", 0.0),
        "distinct_cities_24h": ("ride", "count_distinct", "sliding", 86400, 60, "int", 0),
    }
    assert sorted(rows) == sorted(want)
    for name, (pipeline, op, kind, size, lateness, value_type, default) in want.items():
        r = rows[name]
        window_size = r["window"].get("size_s", r["window"].get("gap_s"))
        assert (r["pipeline"], r["aggregation"]["op"], r["window"]["kind"], window_size,
                r["allowed_lateness_s"], r["type"], r["default"], r["entity"]) == (
            pipeline, op, kind, size, lateness, value_type, default, "userId"), name
    assert rows["txn_total_5m"]["where"] == "eventType == 'purchase'"
    assert rows["rides_per_city"]["aggregation"]["field"] == "cityId"
    assert rows["amount_sum_60s"]["window"]["tile_s"] == 1
    assert rows["last_purchase_value"]["where"] == "eventType == 'purchase'"
    assert rows["distinct_cities_24h"]["aggregation"] == {
        "op": "count_distinct", "field": "cityId", "max_distinct": 10_000}


def test_serving_defaults_and_names_come_from_the_catalogue():
    assert COLD_START_DEFAULTS == {"txn_total_5m": 0.0, "clicks_in_session": 0,
                                   "session_duration_s": 0, "lifetime_rides": 0,
                                   "rides_per_city": {}, "amount_sum_60s": 0.0,
                                   "last_purchase_value": 0.0, "distinct_cities_24h": 0}
    with pytest.raises(ValueError, match="unknown features: \\['txn_total_1h'\\]"):
        FeatureClient(redis_client=None, features=["txn_total_1h"])
    assert FeatureClient(redis_client=None).key("u1") == "features:user:u1"


def test_the_model_only_takes_numeric_features_of_the_catalogue(tmp_path):
    weights, bias = load_model()
    assert set(weights) <= set(FEATURES) and bias == -2.0
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps({"bias": 0, "weights": {"txn_total_1h": 1.0}}))
    with pytest.raises(ValueError, match="\\['txn_total_1h'\\] not in the feature catalogue"):
        load_model(bad)
    bad.write_text(json.dumps({"bias": 0, "weights": {"rides_per_city": 1.0}}))
    with pytest.raises(ValueError, match="\\['rides_per_city'\\] are not numeric"):
        load_model(bad)
