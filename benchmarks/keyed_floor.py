"""The cheapest keyed Python stage there is, as a job the engine section can run.

    python -m benchmarks.keyed_floor --pipeline=user <the flags of pipelines.user_features>

Same source, decoding, dead letters and Redis sink as the feature pipelines
(``pipelines.common.run``), and between them one keyed stateful DoFn that
keeps a single counter per key, sets no timer and publishes the count: what
Beam's portable Flink runner charges for a keyed Python stage at all (the
event crossing to Python, back to Flink, through the key shuffle and to Python
again, a state read and write per key and bundle). No feature engine can be
faster than this on the same cluster, so the engine section reports it beside
the real pipelines. With ``--records_keyed_by_entity`` the counter's stage
takes the raw records keyed by entity and decodes them itself, as the fused
stage then does: the floor of that shape.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipelines.catalogue import PIPELINES
from pipelines.common import run
from pipelines.options import FeatureOptions
from transforms.decode import DEAD, KeyedRecords, RecordDecoder
from transforms.keys import KeyByEntity
from transforms.model import DeadLetter, FeatureUpdate

# The label of the keyed step: the name the engine section samples records at.
STEP = {"user": "UserFeatures", "ride": "RideFeatures"}


class _CountFn(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())

    def __init__(self, entity_type: str, time_field: str,
                 decoder: RecordDecoder | None = None) -> None:
        self._entity_type = entity_type
        self._time_field = time_field
        self._decoder = decoder

    def process(self, kv: tuple[Any, Any], count=beam.DoFn.StateParam(COUNT)) -> Iterator[Any]:
        if self._decoder is not None:
            kv = self._decoder(kv)
            if type(kv) is DeadLetter:
                yield beam.pvalue.TaggedOutput(DEAD, kv)
                return
        key, event = kv
        n = (count.read() or 0) + 1
        count.write(n)
        yield FeatureUpdate(self._entity_type, key, "floor_events", n,
                            event[self._time_field], False)


def floor_graph(pipeline: str) -> Any:
    """The feature graph of the floor job for ``pipeline``'s events and entity."""
    feature = PIPELINES[pipeline][0]

    def graph(events: beam.PCollection | KeyedRecords, options: FeatureOptions
              ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
        if isinstance(events, KeyedRecords):
            out = events.records | STEP[pipeline] >> beam.ParDo(
                _CountFn(feature.entity_type, feature.time_field, events.decoder)
            ).with_output_types(FeatureUpdate).with_outputs(DEAD, main="updates")
            events.dead.append(out[DEAD])
            return [out["updates"]], []
        updates = (events
                   | "KeyByEntity" >> KeyByEntity(feature.entity)
                   | STEP[pipeline] >> beam.ParDo(
                       _CountFn(feature.entity_type, feature.time_field)
                   ).with_output_types(FeatureUpdate))
        return [updates], []

    return graph


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    pipeline = next((a.split("=", 1)[1] for a in args if a.startswith("--pipeline=")), "user")
    args = [a for a in args if not a.startswith("--pipeline=")]
    run(args, PIPELINES[pipeline][0].source, floor_graph(pipeline), f"{pipeline}_floor")


if __name__ == "__main__":
    main()
