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
        _keep_newest(by_entity.setdefault((update.entity_type, update.entity_id), {}), update)
    return _vectors(by_entity)


def _keep_newest(features: dict[str, FeatureUpdate], update: FeatureUpdate) -> None:
    current = features.get(update.feature)
    if current is None or update.newer_than(current):
        features[update.feature] = update


def _vectors(by_entity: dict[tuple[str, str], dict[str, FeatureUpdate]]
             ) -> list[FeatureVector]:
    return [FeatureVector(entity_type, entity_id, tuple(features.values()))
            for (entity_type, entity_id), features in by_entity.items()]


class _CoalesceFn(beam.DoFn):
    """Merges a bundle's updates per entity as they come; emits one vector per entity
    at the bundle's end, or earlier when ``max_entities`` entities are held."""

    def __init__(self, max_entities: int) -> None:
        self._max = max_entities
        self._vectors = Metrics.counter("merge", "vectors")
        self._updates = Metrics.counter("merge", "updates")
        self._per_feature: dict[tuple[str, bool], Any] = {}

    def start_bundle(self) -> None:
        self._by_entity: dict[tuple[str, str], dict[str, FeatureUpdate]] = {}
        self._emitted: dict[tuple[str, bool], int] = {}
        self._timestamp = MIN_TIMESTAMP

    def process(self, update: FeatureUpdate,
                timestamp=beam.DoFn.TimestampParam) -> Iterator[FeatureVector]:
        entity = (update.entity_type, update.entity_id)
        features = self._by_entity.get(entity)
        if features is None:
            if len(self._by_entity) >= self._max:
                yield from self._drain()
            features = self._by_entity[entity] = {}
        _keep_newest(features, update)
        counted = (update.feature, update.final)
        self._emitted[counted] = self._emitted.get(counted, 0) + 1
        if timestamp > self._timestamp:
            self._timestamp = timestamp

    def _drain(self) -> list[FeatureVector]:
        vectors = _vectors(self._by_entity)
        self._updates.inc(sum(self._emitted.values()))
        for key, n in self._emitted.items():
            self._feature_counter(*key).inc(n)
        self._vectors.inc(len(vectors))
        self._by_entity, self._emitted = {}, {}
        return vectors

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

    Within a bundle, the updates of one entity become one vector, holding per
    feature only the update the sink's ``as_of`` guard would keep: one Redis
    write per entity and bundle instead of one per update, and never an older
    value after a newer one. Updates are merged as they arrive, so memory
    grows with the entities a bundle touches, not with its updates; a bundle
    touching more than ``max_entities`` entities writes them in batches of
    that many.

    Input: a PCollection of ``FeatureUpdate`` or a tuple/list of them.
    """

    def __init__(self, max_entities: int = 10_000) -> None:
        super().__init__()
        self._max = max_entities

    def expand(self, updates: Any) -> beam.PCollection:
        if isinstance(updates, (tuple, list)):
            updates = updates | "FlattenUpdates" >> beam.Flatten()
        return (updates
                | "Coalesce" >> beam.ParDo(_CoalesceFn(self._max)).with_output_types(
                    FeatureVector))
