"""The user pipeline: the features ``pipelines.catalogue`` declares for it.

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
from pipelines.catalogue import feature
from pipelines.common import run
from pipelines.options import FeatureOptions, early_firings, lateness_ms
from transforms.fused import FusedFeatures
from transforms.keys import KeyByEntity
from transforms.late import LATE
from transforms.sessions import SessionFeatures
from transforms.tumbling import TumblingSum

TXN = feature("txn_total_5m")
CLICKS = feature("clicks_in_session")
DURATION = feature("session_duration_s")


def user_features(events: beam.PCollection, options: FeatureOptions
                  ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Wires the user features; returns (feature update streams, late event streams)."""
    keyed = events | "KeyByUser" >> KeyByEntity(TXN.entity)
    assert TXN.where is not None and CLICKS.where is not None
    txn = TumblingSum(
        TXN.name, TXN.aggregation.field, size_ms=TXN.window_ms,
        allowed_lateness_ms=lateness_ms(TXN, options),
        watermark_delay_ms=options.max_out_of_orderness_ms,
        early_firings=early_firings(TXN, options))
    # One session state gives both features: the session is made of all the user's
    # events; the clicks feature counts those its filter picks.
    sessions = SessionFeatures(
        CLICKS.name, DURATION.name, gap_ms=CLICKS.window_ms,
        allowed_lateness_ms=lateness_ms(CLICKS, options),
        click_type=CLICKS.where.equals, type_field=CLICKS.where.field,
        time_field=DURATION.aggregation.field,
        watermark_delay_ms=options.max_out_of_orderness_ms)
    if options.engine == "fused":
        out = keyed | "UserFeatures" >> FusedFeatures([
            ("TxnTotal5m", txn.fn, TXN.where), ("Sessions", sessions.fn, None)])
        return [out["updates"]], [out[LATE]]
    txn_out = (keyed
               | "OnlyPurchases" >> beam.Filter(lambda kv, where=TXN.where: where(kv[1]))
               | "TxnTotal5m" >> txn)
    sessions_out = keyed | "Sessions" >> sessions
    return [txn_out["updates"], sessions_out["updates"]], [txn_out[LATE], sessions_out[LATE]]


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv, schemas.USER_EVENT_V2, user_features,
        "user_features")


if __name__ == "__main__":
    main()
