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
from pipelines.common import run
from pipelines.options import FeatureOptions
from transforms.counters import LifetimeCounts
from transforms.keys import KeyByEntity
from transforms.late import LATE
from transforms.model import AMOUNT_SUM_60S, LIFETIME_RIDES, RIDES_PER_CITY
from transforms.sliding import SlidingSum

SLIDING_WINDOW_MS = 60 * 1000


def ride_features(events: beam.PCollection, options: FeatureOptions
                  ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Wires the ride features; returns (feature update streams, late event streams)."""
    keyed = events | "KeyByUser" >> KeyByEntity("userId")
    ttl_ms = int(options.state_ttl_s * 1000) if options.state_ttl_s else None
    counts = (keyed
              | "OnlyRideEnds" >> beam.Filter(lambda kv: kv[1]["eventType"] == "END")
              | "RideCounts" >> LifetimeCounts(
                  LIFETIME_RIDES, RIDES_PER_CITY, "cityId", ttl_ms=ttl_ms,
                  watermark_delay_ms=options.max_out_of_orderness_ms))
    amounts = keyed | "AmountSum60s" >> SlidingSum(
        AMOUNT_SUM_60S, "amount", window_ms=SLIDING_WINDOW_MS, tile_ms=options.tile_ms,
        allowed_lateness_ms=options.allowed_lateness_ms,
        watermark_delay_ms=options.max_out_of_orderness_ms)
    return [counts, amounts["updates"]], [amounts[LATE]]


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv, schemas.RIDE_EVENT, ride_features,
        "ride_features")


if __name__ == "__main__":
    main()
