"""Lifetime counters: a total and per-category counts per entity.

Python Beam has no MapState. The total and the per-category counts live in one
``ReadModifyWriteState`` map (categories per entity are few; a huge-cardinality
category would call for a ``BagState`` of deltas): one state cell per key, so
one read and one write per event. The profile showed that each state cell
written costs more than the counting (the SDK sizes every cell it caches).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.aggregations import Accumulator
from transforms.fused import FeaturePart
from transforms.late import EventClock
from transforms.lifetime import lifetime_dofn
from transforms.model import USER, FeatureUpdate
from transforms.state_layout import StateLayout, StateLayoutError
from transforms.ttl import IdleTtl


def _drop_total(meta: dict[str, Any]) -> dict[str, Any]:
    """Layout 1 -> 2: the total was kept beside the per-category counts."""
    total = meta.pop("n")
    if total != sum(meta["c"].values()):
        raise StateLayoutError(f"LifetimeCounts state is inconsistent: total {total} "
                               f"!= sum of category counts {meta['c']}")
    return meta


# Layout 2: {"c": {category: count}, "max_ts": int, "clock": int | None}; the total
# is the sum of the counts (one number fewer to store, none that can disagree).
LAYOUT = StateLayout("LifetimeCounts", 2, {1: _drop_total})


class _CountsFn(lifetime_dofn(LAYOUT, "c", "meta", "counts_final", "counts_ttl")):
    def __init__(self, total_feature: str, category_feature: str, category_field: str,
                 ttl: IdleTtl, time_field: str, entity_type: str, clock: EventClock) -> None:
        self._clock = clock
        self._total_feature = total_feature
        self._category_feature = category_feature
        self._value_field = category_field
        self._acc = Accumulator("count_by")
        self._ttl = ttl
        self._time_field = time_field
        self._entity_type = entity_type
        self._expired = Metrics.counter("ttl", f"{total_feature}_keys_expired")

    def _updates(self, key: str, meta: dict[str, Any], final: bool) -> Iterator[FeatureUpdate]:
        yield FeatureUpdate(self._entity_type, key, self._total_feature, sum(meta["c"].values()),
                            meta["max_ts"], final)
        yield FeatureUpdate(self._entity_type, key, self._category_feature, dict(meta["c"]),
                            meta["max_ts"], final)


class LifetimeCounts(FeaturePart):
    """A lifetime count and a count per category, per entity.

    Input: ``(entity_id, event)`` of the events to count (filter first).
    Output: ``FeatureUpdate``s for ``total_feature`` (int) and
    ``category_feature`` (category -> int map), ``as_of_ms`` = the newest
    counted event time; speculative while the watermark is behind it, final
    when it passes.

    Args:
        total_feature: name of the total count feature.
        category_feature: name of the per-category map feature.
        category_field: event field holding the category.
        ttl_ms: clear the state of keys idle this long (event time); ``None``
            keeps lifetime state forever.
        watermark_delay_ms: bounded out-of-orderness (see ``late.EventClock``).
    """

    def __init__(self, total_feature: str, category_feature: str, category_field: str,
                 ttl_ms: int | None = None, time_field: str = "eventTimestamp",
                 entity_type: str = USER, watermark_delay_ms: int = 0) -> None:
        super().__init__()
        self._fn = _CountsFn(total_feature, category_feature, category_field,
                             IdleTtl(ttl_ms), time_field, entity_type,
                             EventClock(watermark_delay_ms))

    def expand(self, keyed: beam.PCollection) -> beam.PCollection:
        return keyed | "Count" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate)
