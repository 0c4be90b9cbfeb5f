"""The feature catalogue: every feature of both pipelines, declared once.

    python -m pipelines.catalogue        # one JSON object per feature and line

The pipelines wire their transforms from these declarations (names, windows,
filters, fields), and serving takes names, value types and cold-start
defaults from them: no feature name is written anywhere else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import schemas
from transforms.declarations import (
    Feature,
    FixedWindows,
    GlobalWindows,
    Sessions,
    Sliding,
    Where,
    check_catalogue,
    count,
    count_by,
    count_distinct,
    last,
    session_span_s,
    sum_of,
)

USER = dict(entity="userId", source=schemas.USER_EVENT_V2)
RIDE = dict(entity="userId", source=schemas.RIDE_EVENT)

PIPELINES: dict[str, tuple[Feature, ...]] = {
    "user": (
        Feature("txn_total_5m", **USER, aggregation=sum_of("eventValue"),
                window=FixedWindows(5 * 60), where=Where("eventType", "purchase")),
        Feature("clicks_in_session", **USER, aggregation=count(),
                window=Sessions(15 * 60), where=Where("eventType", "click")),
        Feature("session_duration_s", **USER, aggregation=session_span_s(),
                window=Sessions(15 * 60)),
        Feature("last_purchase_value", **USER, aggregation=last("eventValue"),
                window=GlobalWindows(), where=Where("eventType", "purchase")),
    ),
    "ride": (
        Feature("lifetime_rides", **RIDE, aggregation=count(),
                window=GlobalWindows(), where=Where("eventType", "END")),
        Feature("rides_per_city", **RIDE, aggregation=count_by("cityId"),
                window=GlobalWindows(), where=Where("eventType", "END")),
        Feature("amount_sum_60s", **RIDE, aggregation=sum_of("amount"),
                window=Sliding(size_s=60, tile_s=1)),
        Feature("distinct_cities_24h", **RIDE, aggregation=count_distinct("cityId"),
                window=Sliding(size_s=24 * 3600, tile_s=60)),
    ),
}

FEATURES: dict[str, Feature] = check_catalogue(f for fs in PIPELINES.values() for f in fs)


def feature(name: str) -> Feature:
    """The declaration of ``name``; an unknown name is an error that lists the known ones."""
    try:
        return FEATURES[name]
    except KeyError:
        raise KeyError(f"no feature {name!r} in the catalogue "
                       f"(known: {', '.join(FEATURES)})") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Prints every feature of both pipelines, one JSON object per line."""
    del argv
    for pipeline, features in PIPELINES.items():
        for f in features:
            sys.stdout.write(json.dumps({"pipeline": pipeline, **f.describe()}) + "\n")


if __name__ == "__main__":
    main()
