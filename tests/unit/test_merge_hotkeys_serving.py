"""Merging updates into vectors, the salted combine, and the lookup client's typing."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from tests.helpers import batch_options
from transforms.hot_keys import ExactSumFn, SaltedCombinePerKey
from transforms.merge import MergeFeatureVectors, _CoalesceFn, merge_updates
from transforms.model import FeatureUpdate, decode_value, encode_value


def upd(user, feature, value, as_of, final=True):
    return FeatureUpdate("user", user, feature, value, as_of, final)


def test_merge_keeps_what_the_guard_keeps_per_feature():
    vectors = merge_updates([
        upd("a", "f", 1.0, 10, True), upd("a", "f", 2.0, 10, False), upd("a", "g", 5, 3),
        upd("a", "f", 0.5, 9, True), upd("b", "f", 7.0, 1)])
    by_user = {v.entity_id: {u.feature: u.value for u in v.updates} for v in vectors}
    assert by_user == {"a": {"f": 1.0, "g": 5}, "b": {"f": 7.0}}


def test_merge_transform_one_vector_per_entity():
    with TestPipeline(options=batch_options()) as p:
        left = p | "L" >> beam.Create([upd("a", "f", 1.0, 1), upd("b", "f", 2.0, 1)])
        right = p | "R" >> beam.Create([upd("a", "g", 3, 2)])
        vectors = (left, right) | MergeFeatureVectors()
        assert_that(vectors | beam.Map(lambda v: (v.entity_id, len(v.updates))),
                    equal_to([("a", 2), ("b", 1)]))


def _coalesced(fn, updates):
    """The vectors ``fn`` emits for one bundle: from ``process``, then ``finish_bundle``."""
    fn.start_bundle()
    out = [v for i, u in enumerate(updates) for v in fn.process(u, timestamp=Timestamp(i))]
    return out, [wv.value for wv in fn.finish_bundle()]


def test_coalesce_writes_one_vector_per_entity_per_bundle_however_many_updates():
    # 30,000 updates of three users: one vector each, at the bundle's end.
    updates = [upd(f"u{i % 3}", "f" if i % 2 else "g", float(i), i // 10, i % 7 == 0)
               for i in range(30_000)]
    early, at_end = _coalesced(_CoalesceFn(max_entities=10_000), updates)
    assert early == []
    assert sorted(v.entity_id for v in at_end) == ["u0", "u1", "u2"]
    assert ({(v.entity_id, u.feature): u for v in at_end for u in v.updates}
            == {(v.entity_id, u.feature): u for v in merge_updates(updates) for u in v.updates})


def test_coalesce_flushes_when_a_new_entity_would_pass_the_bound():
    updates = [upd("a", "f", 1.0, 1), upd("b", "f", 2.0, 1), upd("a", "f", 3.0, 2),
               upd("c", "f", 4.0, 1), upd("a", "f", 5.0, 3)]
    early, at_end = _coalesced(_CoalesceFn(max_entities=2), updates)
    assert [(v.entity_id, [u.value for u in v.updates]) for v in early] == [
        ("a", [3.0]), ("b", [2.0])]
    assert [(v.entity_id, [u.value for u in v.updates]) for v in at_end] == [
        ("c", [4.0]), ("a", [5.0])]


def test_salted_combine_equals_plain_combine_per_window():
    values = [(k, v, t) for t in range(0, 600, 7) for k, v in (("hot", t * 0.1), ("cold", 1.0))]
    with TestPipeline(options=batch_options()) as p:
        kvs = (p | beam.Create(values)
               | beam.Map(lambda x: TimestampedValue((x[0], x[1]), x[2]))
               | beam.WindowInto(FixedWindows(300)))
        salted = kvs | "Salted" >> SaltedCombinePerKey(ExactSumFn(), fanout=4)
        plain = kvs | "Plain" >> beam.CombinePerKey(ExactSumFn())
        expected = {}
        for k, v, t in values:
            expected.setdefault((k, t // 300), []).append(v)
        import math
        want = [(k, math.fsum(vs)) for (k, _), vs in expected.items()]
        assert_that(salted, equal_to(want), label="salted")
        assert_that(plain, equal_to(want), label="plain")


def test_values_encode_and_decode_exactly():
    for value_type, value in (("float", 0.1 + 0.2), ("int", 12), ("map", {"b": 1, "a": 2})):
        assert decode_value(value_type, encode_value(value)) == value
    assert encode_value({"b": 1, "a": 2}) == '{"a":2,"b":1}'
