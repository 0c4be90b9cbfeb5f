"""The ride pipeline: ``lifetime_rides``, ``rides_per_city``, ``amount_sum_60s``.

    python -m pipelines.ride_features --runner=DirectRunner --input=rides.jsonl \\
        --redis_url=redis://127.0.0.1:6379/0 --feature_log=updates.jsonl \\
        --dead_letter=dead.jsonl
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import apache_beam as beam

import schemas
from pipelines.catalogue import feature
from pipelines.common import run
from pipelines.options import FeatureOptions, lateness_ms
from transforms.counters import LifetimeCounts
from transforms.fused import FusedFeatures
from transforms.keys import KeyByEntity
from transforms.late import LATE
from transforms.sliding import SlidingSum

RIDES = feature("lifetime_rides")
PER_CITY = feature("rides_per_city")
AMOUNT = feature("amount_sum_60s")


def ride_features(events: beam.PCollection, options: FeatureOptions
                  ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Wires the ride features; returns (feature update streams, late event streams)."""
    keyed = events | "KeyByUser" >> KeyByEntity(RIDES.entity)
    # The two counters share a filter and one state cell per user.
    if RIDES.where != PER_CITY.where:
        raise ValueError(f"{RIDES.name} and {PER_CITY.name} must count the same events")
    ttl_s = options.state_ttl_s or RIDES.state_ttl_s
    counts = LifetimeCounts(
        RIDES.name, PER_CITY.name, PER_CITY.aggregation.field,
        ttl_ms=int(ttl_s * 1000) if ttl_s else None,
        watermark_delay_ms=options.max_out_of_orderness_ms)
    amounts = SlidingSum(
        AMOUNT.name, AMOUNT.aggregation.field, window_ms=AMOUNT.window_ms,
        tile_ms=options.tile_ms or round(AMOUNT.window.tile_s * 1000),
        allowed_lateness_ms=lateness_ms(AMOUNT, options),
        watermark_delay_ms=options.max_out_of_orderness_ms)
    if options.engine == "fused":
        out = keyed | "RideFeatures" >> FusedFeatures([
            ("RideCounts", counts.fn, RIDES.where), ("AmountSum60s", amounts.fn, None)])
        return [out["updates"]], [out[LATE]]
    counts_out = (keyed
                  | "OnlyRideEnds" >> beam.Filter(lambda kv, where=RIDES.where: where(kv[1]))
                  | "RideCounts" >> counts)
    amounts_out = keyed | "AmountSum60s" >> amounts
    return [counts_out, amounts_out["updates"]], [amounts_out[LATE]]


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv, schemas.RIDE_EVENT, ride_features,
        "ride_features")


if __name__ == "__main__":
    main()
