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
from pipelines.catalogue import PIPELINES
from pipelines.common import run
from pipelines.options import FeatureOptions, engine_settings
from transforms.decode import KeyedRecords
from transforms.engine import FeatureEngine


def user_features(events: beam.PCollection | KeyedRecords, options: FeatureOptions
                  ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
    """Computes the user features; returns (feature update streams, late event streams)."""
    settings = engine_settings(options)
    return FeatureEngine(PIPELINES["user"], settings, "user").expand(events)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(sys.argv[1:] if argv is None else argv, schemas.USER_EVENT_V2, user_features,
        "user_features")


if __name__ == "__main__":
    main()
