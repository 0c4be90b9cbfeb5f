"""Merging the feature streams of one entity into one feature vector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.model import FeatureUpdate, FeatureVector


def merge_updates(updates: list[FeatureUpdate]) -> list[FeatureVector]:
    """Groups updates by entity, keeping per feature the one the sink's guard would keep.

    >>> u = FeatureUpdate("user", "a", "f", 1.0, 10, False)
    >>> [len(v.updates) for v in merge_updates([u, u._replace(value=2.0, final=True)])]
    [1]
    """
    by_entity: dict[tuple[str, str], dict[str, FeatureUpdate]] = {}
    for update in updates:
        features = by_entity.setdefault((update.entity_type, update.entity_id), {})
        current = features.get(update.feature)
        if current is None or update.newer_than(current):
            features[update.feature] = update
    return [FeatureVector(entity_type, entity_id, tuple(features.values()))
            for (entity_type, entity_id), features in by_entity.items()]


class _CoalesceFn(beam.DoFn):
    """Buffers a bundle's updates and emits one vector per entity at its end."""

    def __init__(self, max_buffered: int) -> None:
        self._max = max_buffered
        self._vectors = Metrics.counter("merge", "vectors")
        self._updates = Metrics.counter("merge", "updates")
        self._per_feature: dict[tuple[str, bool], Any] = {}

    def start_bundle(self) -> None:
        self._buffer: list[FeatureUpdate] = []
        self._timestamp = MIN_TIMESTAMP

    def process(self, update: FeatureUpdate,
                timestamp=beam.DoFn.TimestampParam) -> Iterator[FeatureVector]:
        self._buffer.append(update)
        self._timestamp = max(self._timestamp, timestamp)
        if len(self._buffer) >= self._max:
            yield from self._drain()

    def _drain(self) -> Iterator[FeatureVector]:
        vectors = merge_updates(self._buffer)
        self._updates.inc(len(self._buffer))
        emitted: dict[tuple[str, bool], int] = {}
        for u in self._buffer:
            emitted[(u.feature, u.final)] = emitted.get((u.feature, u.final), 0) + 1
        for key, n in emitted.items():
            self._feature_counter(*key).inc(n)
        self._vectors.inc(len(vectors))
        self._buffer = []
        yield from vectors

    def _feature_counter(self, feature: str, final: bool) -> Any:
        """Counter ``features/<feature>_final`` or ``features/<feature>_speculative``: the
        updates each feature emitted, before they are merged into vectors."""
        key = (feature, final)
        if key not in self._per_feature:
            kind = "final" if final else "speculative"
            self._per_feature[key] = Metrics.counter("features", f"{feature}_{kind}")
        return self._per_feature[key]

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for vector in self._drain():
            yield WindowedValue(vector, self._timestamp, [GlobalWindow()])


class MergeFeatureVectors(beam.PTransform):
    """Flattens feature-update streams and merges them per entity into ``FeatureVector``s.

    Within a bundle (at most ``max_buffered`` updates), the updates of one
    entity become one vector, holding per feature only the update the sink's
    ``as_of`` guard would keep: one Redis write per entity instead of one per
    update, and never an older value after a newer one.

    Input: a PCollection of ``FeatureUpdate`` or a tuple/list of them.
    """

    def __init__(self, max_buffered: int = 10_000) -> None:
        super().__init__()
        self._max = max_buffered

    def expand(self, updates: Any) -> beam.PCollection:
        if isinstance(updates, (tuple, list)):
            updates = updates | "FlattenUpdates" >> beam.Flatten()
        return (updates
                | "Coalesce" >> beam.ParDo(_CoalesceFn(self._max)).with_output_types(
                    FeatureVector))
