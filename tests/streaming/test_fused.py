"""FusedFeatures: the feature DoFns hosted in one keyed stage give what they give alone.

The same TestStreams (on-time, late within lateness, too late, expiry, TTL)
run through each feature transform as its own stage and through one
``FusedFeatures`` stage hosting it, or hosting all of them at once; the
updates and the late events must be the same multisets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from tests.helpers import FAR_FUTURE_MS, event, finals, run_stream, stream_of
from transforms.counters import LifetimeCounts
from transforms.decode import RecordDecoder
from transforms.fused import FusedFeatures
from transforms.sessions import SessionFeatures
from transforms.sliding import SlidingSum
from transforms.tumbling import TumblingSum

MIN = 60_000


def is_purchase(e: dict[str, Any]) -> bool:
    return e["eventType"] == "purchase"


def is_end(e: dict[str, Any]) -> bool:
    return e["eventType"] == "END"


# label -> (a new feature transform, the events it takes)
PARTS: dict[str, tuple[Callable[[], beam.PTransform], Callable[[dict[str, Any]], bool] | None]] = {
    "Tumbling": (lambda: TumblingSum("t", "eventValue", allowed_lateness_ms=MIN,
                                     watermark_delay_ms=5_000), is_purchase),
    "Sessions": (lambda: SessionFeatures("clicks", "duration", gap_ms=15 * MIN,
                                         allowed_lateness_ms=MIN), None),
    "Counts": (lambda: LifetimeCounts("n", "by_city", "cityId", ttl_ms=10 * MIN), is_end),
    "Sliding": (lambda: SlidingSum("s", "amount", allowed_lateness_ms=10_000), None),
}


def ev(ts: int, kind: str, value: float = 0.0, user: str = "u") -> dict[str, Any]:
    return event(user, ts, kind, value, cityId=("ams", "lis")[ts % 2], amount=value)


# On time, late within lateness, too late, expiry, a bridged session, an idle key
# past its TTL, two keys.
STREAM = (
    ev(1_000, "purchase", 1.0), ev(2_000, "click"), ev(3_001, "END", 2.5),
    ev(20 * MIN, "click", user="v"), ev(4_000, "END", 4.0, user="v"),
    5 * MIN + 6_000,
    ev(30_000, "purchase", 4.0), ev(5 * MIN + 1_000, "purchase", 0.5),
    ev(61_001, "END", 1.25),
    7 * MIN,
    ev(40_000, "purchase", 8.0), ev(5 * MIN + 2_000, "click"),
    17 * MIN,
    ev(10 * MIN, "click"), ev(16 * MIN + 1, "END", 3.0),
    40 * MIN,
    ev(41 * MIN, "END", 1.0), ev(39 * MIN, "purchase", 2.0),
)


def normalized(out: dict[str, list[Any]]) -> tuple[list[Any], list[Any]]:
    updates = sorted((u.entity_id, u.feature, repr(u.value), u.as_of_ms, u.final)
                     for u in out["updates"])
    late = sorted((e.feature, e.event["userId"], e.event["eventTimestamp"])
                  for e in out.get("late", []))
    return updates, late


def alone(label: str) -> tuple[list[Any], list[Any]]:
    make, where = PARTS[label]

    class Stage(beam.PTransform):
        def expand(self, keyed: beam.PCollection) -> Any:
            if where is not None:
                keyed = keyed | beam.Filter(lambda kv: where(kv[1]))
            return keyed | make()

    tags = ("updates",) if label == "Counts" else ("updates", "late")
    out = run_stream(Stage(), stream_of(*STREAM), tags=tags)
    return normalized(out)


def fused(labels: list[str]) -> tuple[list[Any], list[Any]]:
    parts = [(label, PARTS[label][0]().fn, PARTS[label][1]) for label in labels]
    return normalized(run_stream(FusedFeatures(parts), stream_of(*STREAM)))


@pytest.mark.parametrize("label", list(PARTS))
def test_one_hosted_part_gives_what_its_own_stage_gives(label):
    want = alone(label)
    assert want[0], "the stream must give this part something to do"
    assert fused([label]) == want


def test_all_parts_in_one_stage_give_the_union_of_their_stages():
    updates: list[Any] = []
    late: list[Any] = []
    for label in PARTS:
        u, lt = alone(label)
        updates += u
        late += lt
    assert late, "the stream must have too-late events"
    assert fused(list(PARTS)) == (sorted(updates), sorted(late))


def test_part_labels_must_be_distinct():
    fn = PARTS["Sliding"][0]().fn
    with pytest.raises(ValueError, match="distinct"):
        FusedFeatures([("a", fn, None), ("a", fn, None)])


def _parse(value: bytes | None) -> dict[str, Any]:
    return json.loads(value)


def test_records_decoded_in_the_stage_give_what_decoded_events_give():
    """With a ``RecordDecoder`` the stage takes raw ``(record key, value)`` pairs and
    decodes them itself: the same updates (``visible_ms`` and ``seq`` included) and
    late events as from decoded events; a record without its user as key is a dead
    letter, and its user gets nothing."""
    def parts() -> list[Any]:
        return [(label, PARTS[label][0]().fn, PARTS[label][1]) for label in PARTS]

    want = run_stream(FusedFeatures(parts()), stream_of(*STREAM))
    raw = test_stream.TestStream()
    for step in STREAM:
        if isinstance(step, int):
            raw = raw.advance_watermark_to(Timestamp(micros=step * 1000))
        else:
            record = (step["userId"].encode(), json.dumps(step).encode())
            # The record's own time (Kafka's CreateTime) need not be the event time:
            # the stage takes the payload's.
            raw = raw.add_elements([TimestampedValue(
                record, Timestamp(micros=(step["eventTimestamp"] + 7) * 1000))])
        if step == 7 * MIN:
            ghost = json.dumps(ev(7 * MIN + 1, "purchase", 9.0, user="ghost")).encode()
            at = Timestamp(micros=7 * MIN * 1000)
            raw = raw.add_elements([TimestampedValue((b"u", ghost), at),
                                    TimestampedValue((None, ghost), at)])
    raw = raw.advance_watermark_to(Timestamp(micros=FAR_FUTURE_MS * 1000)
                                   ).advance_watermark_to_infinity()
    decoder = RecordDecoder(_parse, "userId", "eventTimestamp", "test-topic")
    got = run_stream(FusedFeatures(parts(), decoder), raw, tags=("updates", "late", "dead"),
                     keyed=False)
    assert sorted(map(repr, got["updates"])) == sorted(map(repr, want["updates"]))
    assert normalized(got) == normalized(want)
    assert sorted(d.reason for d in got["dead"]) == [
        "record has no key (the topic's records must be keyed by userId)",
        "record key b'u' is not the event's userId 'ghost'"]
    assert {d.source for d in got["dead"]} == {"test-topic"}


def test_records_go_only_to_a_fused_stage_keyed_by_their_key_field():
    from pipelines.catalogue import PIPELINES
    from transforms.decode import KeyedRecords
    from transforms.engine import EngineSettings, FeatureEngine

    records = beam.Pipeline() | beam.Create([(b"u", b"{}")])  # built, never run
    for engine, key_field in (("stages", "userId"), ("fused", "rideId")):
        decoder = RecordDecoder(_parse, key_field, "eventTimestamp", "test-topic")
        with pytest.raises(ValueError, match=f"records keyed by {key_field} .* engine "
                                             f"'{engine}', entities \\['userId'\\]"):
            FeatureEngine(PIPELINES["ride"], EngineSettings(engine=engine), "ride").expand(
                KeyedRecords(records, decoder))


def _kept(updates: list[Any]) -> dict[tuple[str, str], Any]:
    """Per entity and feature, the update the sink's guard keeps of ``updates``."""
    kept: dict[tuple[str, str], Any] = {}
    for u in sorted(updates, key=lambda u: (u.visible_ms, u.seq)):
        key = (u.entity_id, u.feature)
        if key not in kept or u.newer_than(kept[key]):
            kept[key] = u
    return kept


def test_speculative_updates_per_bundle_keep_the_finals_and_what_the_store_keeps():
    """Several events per bundle: per entity and feature, a bundle's speculative
    updates leave once. The finals and the late events are the same as with
    every_element, every update that leaves is one every_element emits, and the
    store keeps the same value of each feature."""
    def bundled() -> test_stream.TestStream:
        stream = test_stream.TestStream()
        bundle: list[Any] = []
        for step in (*STREAM, FAR_FUTURE_MS):
            if isinstance(step, int):  # the events between two watermarks: one bundle
                if bundle:
                    stream = stream.add_elements(bundle)
                    bundle = []
                stream = stream.advance_watermark_to(Timestamp(micros=step * 1000))
            else:
                bundle.append(TimestampedValue(step, step["eventTimestamp"] / 1000))
        return stream.advance_watermark_to_infinity()

    def run(speculative: str) -> dict[str, list[Any]]:
        parts = [(label, make().fn, where) for label, (make, where) in PARTS.items()]
        return run_stream(FusedFeatures(parts, speculative=speculative), bundled())

    every, per_bundle = run("every_element"), run("per_bundle")
    assert sorted(map(repr, finals(per_bundle["updates"]))) == sorted(
        map(repr, finals(every["updates"])))
    assert normalized(per_bundle)[1] == normalized(every)[1]
    emitted = set(map(repr, every["updates"]))
    assert all(repr(u) in emitted for u in per_bundle["updates"])
    speculative = [u for u in per_bundle["updates"] if not u.final]
    assert 0 < len(speculative) < sum(not u.final for u in every["updates"])
    assert _kept(per_bundle["updates"]) == _kept(every["updates"])


def test_speculative_updates_take_a_known_policy():
    fn = PARTS["Sliding"][0]().fn
    with pytest.raises(ValueError, match="every_element, per_bundle: 'sometimes'"):
        FusedFeatures([("s", fn, None)], speculative="sometimes")


def test_a_timer_grid_gives_what_a_watermark_moving_on_the_grid_gives():
    """On a timer grid the stage fires, per key, one runner timer per grid step,
    which calls back every time its parts wait for in the step, in order: the
    updates and late events are those of a runner whose watermark moves only
    to grid points (each advance rounded down to the grid)."""
    grid = MIN

    def run(timer_grid_ms: int, steps: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
        parts = [(label, make().fn, where) for label, (make, where) in PARTS.items()]
        return normalized(run_stream(FusedFeatures(parts, timer_grid_ms=timer_grid_ms),
                                     stream_of(*steps)))

    on_grid = tuple(s - s % grid if isinstance(s, int) else s for s in STREAM)
    assert on_grid != STREAM
    want = run(0, on_grid)
    assert want != run(0, STREAM), "the stream must tell the two watermarks apart"
    assert run(grid, STREAM) == want
