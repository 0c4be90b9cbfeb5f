"""Property: any declaration (aggregation x window x filter), compiled by the engine,
gives what a plain-Python evaluation of the same declaration gives, on random
out-of-order streams, with either engine.

The evaluation below reads only the declaration's attributes and the events;
it shares no code with ``transforms/``. It lists, per entity and feature, every
``as_of`` the feature publishes a final value for, and that value.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from tests.helpers import _capture_into, _timestamped, batch_options
from transforms.declarations import (
    Aggregation,
    DeclarationError,
    Feature,
    FixedWindows,
    GlobalWindows,
    Sessions,
    Sliding,
    Where,
)
from transforms.engine import EngineSettings, FeatureEngine

WHERES = st.sampled_from([None, Where("eventType", "END"), Where("cityId", "ams")])
NUMERIC_OPS = st.sampled_from(["sum", "min", "max", "last"])
ANY_OPS = st.sampled_from(["count", "count_by", "count_distinct"])


@st.composite
def aggregation(draw: Any) -> Aggregation:
    if draw(st.booleans()):
        return Aggregation(draw(NUMERIC_OPS), "amount")
    op = draw(ANY_OPS)
    if op == "count":
        return Aggregation("count")
    field = draw(st.sampled_from(["cityId", "eventType"]))
    return Aggregation(op, field, draw(st.sampled_from([2, 10])) if op == "count_distinct"
                       else None)


@st.composite
def declaration(draw: Any, name: str) -> Feature:
    kind = draw(st.sampled_from(["tumbling", "sliding", "session", "lifetime"]))
    where = draw(WHERES)
    if kind == "session":
        agg = draw(st.sampled_from([Aggregation("count"), Aggregation("span_s",
                                                                      "eventTimestamp")]))
        return Feature(name, entity="userId", source=schemas.RIDE_EVENT, aggregation=agg,
                       window=Sessions(draw(st.sampled_from([60, 300]))),
                       where=where if agg.op == "count" else None)
    agg = draw(aggregation())
    if kind == "tumbling":
        window: Any = FixedWindows(draw(st.sampled_from([60, 300])))
    elif kind == "sliding":
        tile = draw(st.sampled_from([10, 30, 60]))
        window = Sliding(size_s=tile * draw(st.sampled_from([1, 2, 4])), tile_s=tile)
    else:
        window = GlobalWindows()
    return Feature(name, entity="userId", source=schemas.RIDE_EVENT, aggregation=agg,
                   window=window, where=where)


@st.composite
def catalogue(draw: Any) -> list[Feature]:
    n = draw(st.integers(1, 5))
    return [draw(declaration(f"f{i}")) for i in range(n)]


TIMES = st.one_of(st.integers(0, 900_000), st.sampled_from([0, 59_999, 60_000, 300_000]))
ride = st.fixed_dictionaries({
    "rideId": st.just("r"), "userId": st.sampled_from(["a", "b"]),
    "eventType": st.sampled_from(["START", "END"]), "eventTimestamp": TIMES,
    "cityId": st.sampled_from(["ams", "lis", "rom"]),
    "amount": st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.1, 0.2]))})


# --- the plain-Python evaluation -------------------------------------------------

def aggregate(op: str, field: str | None, events: list[dict[str, Any]], bound: int | None,
              default: Any) -> Any:
    if not events:
        return default
    values = [e[field] for e in events] if field else []
    if op == "sum":
        return math.fsum(values)
    if op == "count":
        return len(events)
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    if op == "last":
        return max((e["eventTimestamp"], e[field]) for e in events)[1]
    if op == "count_by":
        return dict(Counter(str(v) for v in values))
    if op == "count_distinct":
        distinct = set(values)
        assert bound is not None
        # Past the bound the count saturates at it.
        return min(len(distinct), bound)
    raise AssertionError(op)


def sessions_of(events: list[dict[str, Any]], gap_ms: int) -> list[list[dict[str, Any]]]:
    ordered = sorted(events, key=lambda e: e["eventTimestamp"])
    out = [[ordered[0]]]
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        if cur["eventTimestamp"] - prev["eventTimestamp"] >= gap_ms:
            out.append([])
        out[-1].append(cur)
    return out


def evaluate(f: Feature, events: list[dict[str, Any]]) -> dict[int, Any]:
    """as_of -> the final value ``f`` publishes for one entity's ``events``."""
    agg = f.aggregation
    picked = [e for e in events if f.where is None or e[f.where.field] == f.where.equals]
    op, field, bound, default = agg.op, agg.field, agg.max_distinct, f.default
    if isinstance(f.window, Sessions):
        out = {}
        for s in sessions_of(events, f.window_ms):
            as_of = s[-1]["eventTimestamp"]
            if op == "span_s":
                out[as_of] = (as_of - s[0]["eventTimestamp"]) // 1000
            else:
                out[as_of] = sum(1 for e in s if f.where is None
                                 or e[f.where.field] == f.where.equals)
        return out
    if not picked:
        return {}
    if isinstance(f.window, GlobalWindows):
        return {max(e["eventTimestamp"] for e in picked):
                aggregate(op, field, picked, bound, default)}
    if isinstance(f.window, Sliding):
        size, tile = f.window_ms, round(f.window.tile_s * 1000)
        points = set()
        for e in picked:
            k = e["eventTimestamp"] // tile
            points.update({k * tile + tile - 1, (k + size // tile) * tile + tile - 1})
        return {p: aggregate(op, field, [e for e in picked
                                          if p - size < e["eventTimestamp"] <= p],
                             bound, default) for p in points}
    size = f.window_ms
    starts = {e["eventTimestamp"] // size * size for e in picked}
    return {s + size: aggregate(op, field, [e for e in picked
                                             if s <= e["eventTimestamp"] < s + size],
                                bound, default) for s in starts}


def run_engine(features: list[Feature], events: list[dict[str, Any]], engine: str
               ) -> list[Any]:
    """``engine``: ``fused`` or ``stages``, or ``fused/<speculative policy>[/<timer grid ms>]``."""
    engine, speculative, grid = (*engine.split("/"), "", "")[:3]
    settings = EngineSettings(engine=engine, speculative=speculative or "every_element",
                              timer_grid_ms=int(grid or 0))
    results: dict[str, list[Any]] = {"updates": []}
    with TestPipeline(options=batch_options()) as p:
        timestamped = p | beam.Create(events) | beam.Map(_timestamped)
        updates, _ = FeatureEngine(features, settings, "test").expand(timestamped)
        assert_that(updates | beam.Flatten(), _capture_into(results, "updates"))
    return results["updates"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogue(), st.lists(ride, min_size=1, max_size=30),
       st.sampled_from(["fused", "stages", "fused/per_bundle", "fused/per_bundle/7000"]))
def test_compiled_declarations_match_a_plain_evaluation(features, events, engine):
    updates = run_engine(features, events, engine)
    got: dict[tuple[str, str], dict[int, Any]] = {}
    for u in updates:
        if u.final:
            finals = got.setdefault((u.entity_id, u.feature), {})
            # A bounded replay is on time: each as_of has one final value.
            assert finals.setdefault(u.as_of_ms, u.value) == u.value, u
    want = {}
    for user in sorted({e["userId"] for e in events}):
        mine = [e for e in events if e["userId"] == user]
        for f in features:
            values = evaluate(f, mine)
            if values:
                want[(user, f.name)] = values
    assert got == want, [f.describe() for f in features]



def test_stages_of_one_kind_keep_their_timers_apart():
    """Two tumbling counts as two stages: each publishes its final value (the
    DirectRunner buffers timers by family name; the engine renames the second's)."""
    features = [Feature(f"f{i}", entity="userId", source=schemas.RIDE_EVENT,
                        aggregation=Aggregation("count"), window=FixedWindows(60))
                for i in range(2)]
    event = {"rideId": "r", "userId": "a", "eventType": "START", "eventTimestamp": 0,
             "cityId": "ams", "amount": 0.0}
    finals = sorted((u.feature, u.as_of_ms, u.value) for u in run_engine(features, [event],
                                                                          "stages") if u.final)
    assert finals == [("f0", 60_000, 1), ("f1", 60_000, 1)]


def test_hot_key_salting_is_refused_by_the_stateful_engine():
    salted = Feature("f", entity="userId", source=schemas.RIDE_EVENT, aggregation=Aggregation(
        "count"), window=FixedWindows(60), hot_key_fanout=8)
    with pytest.raises(DeclarationError, match=r"features \['f'\]: hot_key_fanout"):
        FeatureEngine([salted], EngineSettings(), "test")


def test_speculative_updates_per_bundle_need_the_fused_engine():
    feature = Feature("f", entity="userId", source=schemas.RIDE_EVENT,
                      aggregation=Aggregation("count"), window=FixedWindows(60))
    with pytest.raises(ValueError, match="speculative 'per_bundle' needs engine 'fused'"):
        FeatureEngine([feature], EngineSettings(engine="stages", speculative="per_bundle"),
                      "test")
