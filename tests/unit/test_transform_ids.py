"""Transform ids are labels: a stateful step keeps its id when steps are added before it."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)

from runtime import transform_ids


class _Count(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    FIRE = TimerSpec("fire", TimeDomain.WATERMARK)

    def process(self, kv, count=beam.DoFn.StateParam(COUNT),
                fire=beam.DoFn.TimerParam(FIRE)):
        count.write((count.read() or 0) + 1)
        fire.set(10)
        yield kv

    @on_timer(FIRE)
    def _fire(self, count=beam.DoFn.StateParam(COUNT)):
        yield count.read()


def _stateful_ids(extra_before: bool) -> dict[str, str]:
    """Id -> timer families of every stateful ParDo in a small job; ``extra_before``
    applies one more stateful step (and a map) ahead of the ``Counter`` step."""
    pipeline = beam.Pipeline()
    keyed = pipeline | beam.Create([("a", 1), ("b", 2)])
    if extra_before:
        keyed = (keyed | "Added" >> beam.ParDo(_Count())
                 | "AddedMap" >> beam.Map(lambda kv: kv))
    _ = keyed | "Counter" >> beam.ParDo(_Count())
    proto = pipeline.to_runner_api()
    out = {}
    for tid, transform in proto.components.transforms.items():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.timer_family_specs:
                out[tid] = ",".join(payload.timer_family_specs)
    return out


def test_a_stateful_step_keeps_its_id_when_steps_are_added_before_it():
    transform_ids.install()
    before, after = _stateful_ids(False), _stateful_ids(True)
    assert before == {"ref_AppliedPTransform_Counter": "ts-fire"}
    assert after == {"ref_AppliedPTransform_Counter": "ts-fire",
                     "ref_AppliedPTransform_Added": "ts-fire"}


def test_labels_that_normalise_alike_get_distinct_ids():
    transform_ids.install()
    pipeline = beam.Pipeline()
    values = pipeline | beam.Create([1])
    _ = values | "a b" >> beam.Map(lambda x: x)
    _ = values | "a-b" >> beam.Map(lambda x: x)
    ids = set(pipeline.to_runner_api().components.transforms)
    assert {"ref_AppliedPTransform_a-b", "ref_AppliedPTransform_a-b_2"} <= ids
