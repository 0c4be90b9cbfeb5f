"""The online lookup client: typed feature vectors from Redis in one round trip.

>>> import redis  # doctest: +SKIP
>>> client = FeatureClient(redis.Redis(port=6379))  # doctest: +SKIP
>>> client.get("u42").values["txn_total_5m"]  # doctest: +SKIP
12.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.catalogue import FEATURES
from transforms.model import USER, FeatureValue, decode_value

# What a model sees for an entity (or a feature) the pipeline has not written yet:
# each feature's declared cold-start default.
COLD_START_DEFAULTS: dict[str, FeatureValue] = {f.name: f.default for f in FEATURES.values()}


@dataclass(frozen=True)
class FeatureVectorView:
    """What the model gets for one entity.

    Attributes:
        entity_id: the entity.
        values: feature -> typed value (defaults filled in for missing ones).
        as_of_ms: feature -> event time its value is correct for (absent if defaulted).
        final: feature -> whether the value is final (watermark passed as_of).
        defaulted: features that were missing and got the cold-start default.
    """

    entity_id: str
    values: dict[str, FeatureValue]
    as_of_ms: dict[str, int] = field(default_factory=dict)
    final: dict[str, bool] = field(default_factory=dict)
    defaulted: frozenset[str] = frozenset()

    @property
    def cold(self) -> bool:
        """True when nothing at all was stored for the entity."""
        return not self.as_of_ms


class FeatureClient:
    """Reads feature vectors written by the pipelines' hash layout.

    Args:
        redis_client: a ``redis.Redis`` (bytes or decoded responses).
        prefix: the pipelines' ``--redis_prefix``.
        entity_type: the entity kind in the key, ``user`` by default.
        features: the features to read (default: every feature of ``entity_type``
            in the catalogue).
        defaults: cold-start defaults per feature (default: the declared ones).
    """

    def __init__(self, redis_client: Any, prefix: str = "features", entity_type: str = USER,
                 features: Sequence[str] | None = None,
                 defaults: Mapping[str, FeatureValue] | None = None) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._entity_type = entity_type
        self._features = list(features or [f.name for f in FEATURES.values()
                                           if f.entity_type == entity_type])
        unknown = [f for f in self._features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features: {unknown} (the catalogue has "
                             f"{', '.join(FEATURES)})")
        self._types = {f: FEATURES[f].value_type for f in self._features}
        self._defaults = dict(COLD_START_DEFAULTS if defaults is None else defaults)
        self._fields = [f for feat in self._features for f in (feat, f"{feat}:as_of",
                                                                f"{feat}:final")]

    def key(self, entity_id: str) -> str:
        return f"{self._prefix}:{self._entity_type}:{entity_id}"

    def get(self, entity_id: str) -> FeatureVectorView:
        """One entity's vector (one HMGET)."""
        return self._view(entity_id, self._redis.hmget(self.key(entity_id), self._fields))

    def get_many(self, entity_ids: Sequence[str]) -> list[FeatureVectorView]:
        """Many entities' vectors in one round trip (a pipeline of HMGETs)."""
        pipe = self._redis.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hmget(self.key(entity_id), self._fields)
        return [self._view(e, row) for e, row in zip(entity_ids, pipe.execute(), strict=True)]

    def _view(self, entity_id: str, row: Sequence[Any]) -> FeatureVectorView:
        values: dict[str, FeatureValue] = {}
        as_of: dict[str, int] = {}
        final: dict[str, bool] = {}
        defaulted = set()
        for i, feature in enumerate(self._features):
            raw, raw_as_of, raw_final = row[3 * i: 3 * i + 3]
            if raw is None:
                default = self._defaults.get(feature)
                values[feature] = dict(default) if isinstance(default, dict) else default
                defaulted.add(feature)
                continue
            values[feature] = decode_value(self._types[feature], raw)
            as_of[feature] = int(raw_as_of)
            final[feature] = _text(raw_final) == "1"
        return FeatureVectorView(entity_id, values, as_of, final, frozenset(defaulted))


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
