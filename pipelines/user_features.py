"""The user pipeline: ``txn_total_5m``, ``clicks_in_session``, ``session_duration_s``.

    python -m pipelines.user_features --runner=DirectRunner --input=events.jsonl \\
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
from transforms.keys import KeyByEntity
from transforms.late import LATE
from transforms.model import TXN_TOTAL_5M
from transforms.sessions import SessionFeatures
from transforms.tumbling import TumblingSum

WINDOW_MS = 5 * 60 * 1000
SESSION_GAP_MS = 15 * 60 * 1000


def user_features(events: beam.PCollection, options: FeatureOptions
                  ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Wires the user features; returns (feature update streams, late event streams)."""
    keyed = events | "KeyByUser" >> KeyByEntity("userId")
    txn = (keyed
           | "OnlyPurchases" >> beam.Filter(lambda kv: kv[1]["eventType"] == "purchase")
           | "TxnTotal5m" >> TumblingSum(
               TXN_TOTAL_5M, "eventValue", size_ms=WINDOW_MS,
               allowed_lateness_ms=options.allowed_lateness_ms,
               watermark_delay_ms=options.max_out_of_orderness_ms,
               early_firings=not options.no_early_firings))
    sessions = keyed | "Sessions" >> SessionFeatures(
        gap_ms=SESSION_GAP_MS, allowed_lateness_ms=options.allowed_lateness_ms,
        watermark_delay_ms=options.max_out_of_orderness_ms)
    return [txn["updates"], sessions["updates"]], [txn[LATE], sessions[LATE]]


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv, schemas.USER_EVENT_V2, user_features,
        "user_features")


if __name__ == "__main__":
    main()
