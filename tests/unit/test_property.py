"""Property: random out-of-order streams give the plain-Python reference's features."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines.options import FeatureOptions
from pipelines.ride_features import ride_features
from pipelines.user_features import user_features
from tests import reference
from tests.helpers import _capture_into, batch_options

USERS = st.sampled_from(["a", "b", "c"])
# Times cluster so that windows, sessions and equal timestamps all happen.
TIMES = st.one_of(st.integers(0, 3 * 3_600_000), st.sampled_from([0, 299_999, 300_000, 900_000]),
                  st.integers(-120_000, 120_000).map(lambda d: 600_000 + d))
AMOUNTS = st.one_of(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                    st.sampled_from([0.1, 0.2, 0.3, 1e-9]))

user_event = st.fixed_dictionaries({
    "userId": USERS, "eventType": st.sampled_from(["click", "purchase", "view"]),
    "eventValue": AMOUNTS, "eventTimestamp": TIMES})
ride_event = st.fixed_dictionaries({
    "rideId": st.just("r"), "userId": USERS,
    "eventType": st.sampled_from(["START", "END", "CANCEL"]),
    "eventTimestamp": TIMES, "cityId": st.sampled_from(["ams", "lis"]), "amount": AMOUNTS})

PROPERTY = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def run_graph(graph, events):
    results = {"updates": []}
    options = PipelineOptions([])
    with TestPipeline(options=batch_options()) as p:
        timestamped = (p | beam.Create(events) | beam.Map(
            lambda e: TimestampedValue(e, Timestamp(micros=e["eventTimestamp"] * 1000))))
        updates, _late = graph(timestamped, options.view_as(FeatureOptions))
        assert_that(updates | beam.Flatten(), _capture_into(results, "updates"))
    return results["updates"]


def last_written(updates):
    """What a guarded store keeps: per (user, feature) the greatest (as_of, final)."""
    best = {}
    for u in updates:
        key = (u.entity_id, u.feature)
        if key not in best or (u.as_of_ms, u.final) > (best[key].as_of_ms, best[key].final):
            best[key] = u
    out = {}
    for (user, feature), u in best.items():
        out.setdefault(user, {})[feature] = u.value
    return out


def _click(ts, user="a"):
    return {"userId": user, "eventType": "click", "eventValue": 0.0, "eventTimestamp": ts}


@PROPERTY
@given(st.lists(user_event, min_size=1, max_size=40))
@example([_click(900_000), _click(0)])  # a gap of exactly 15 min splits sessions
def test_user_features_match_reference(events):
    assert last_written(run_graph(user_features, events)) == reference.user_features(events)


@PROPERTY
@given(st.lists(ride_event, min_size=1, max_size=40))
def test_ride_features_match_reference(events):
    updates = run_graph(ride_features, events)
    assert last_written(updates) == reference.ride_features(events)
    for u in updates:
        if u.feature == "amount_sum_60s" and u.final:
            assert u.value == reference.amount_sum_60s(events, u.entity_id, u.as_of_ms)
