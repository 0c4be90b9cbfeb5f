"""A small model service: ``predict_for_user`` over the online features.

    python -m serving.model_service --redis_url=redis://127.0.0.1:6379/0 u0001 u0002

The "model" is a fixed logistic score over a few features (``toy_model.json``:
its inputs are named there, and must be features of the catalogue): enough to
show the read path (one round trip for many users, typed values, cold-start
defaults, feature age) without pretending to be a real fraud model.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from pipelines.catalogue import FEATURES
from serving.lookup import FeatureClient, FeatureVectorView

MODEL_FILE = Path(__file__).with_name("toy_model.json")


def load_model(path: Path = MODEL_FILE) -> tuple[dict[str, float], float]:
    """(weights by feature, bias); a weight on a feature the catalogue lacks is an error."""
    model = json.loads(path.read_text())
    weights = {str(k): float(v) for k, v in model["weights"].items()}
    unknown = [f for f in weights if f not in FEATURES]
    if unknown:
        raise ValueError(f"{path.name}: {unknown} not in the feature catalogue")
    not_numbers = [f for f in weights if FEATURES[f].value_type not in ("float", "int")]
    if not_numbers:
        raise ValueError(f"{path.name}: {not_numbers} are not numeric features")
    return weights, float(model["bias"])


WEIGHTS, BIAS = load_model()


def preprocess(view: FeatureVectorView) -> list[float]:
    """The model input: the weighted features as floats, in a fixed order."""
    return [float(view.values[name]) for name in WEIGHTS]  # type: ignore[arg-type]


def score(inputs: list[float]) -> float:
    """A logistic score in [0, 1]."""
    z = BIAS + sum(w * x for w, x in zip(WEIGHTS.values(), inputs, strict=True))
    return 1.0 / (1.0 + math.exp(-z))


def predict_for_users(client: FeatureClient, user_ids: Sequence[str]) -> list[dict[str, object]]:
    """Scores users from their current features (one Redis round trip)."""
    now_ms = int(time.time() * 1000)
    out = []
    for view in client.get_many(user_ids):
        newest = max(view.as_of_ms.values(), default=None)
        out.append({"user": view.entity_id, "score": round(score(preprocess(view)), 4),
                    "cold_start": view.cold, "defaulted": sorted(view.defaulted),
                    "feature_age_ms": None if newest is None else now_ms - newest})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="score users from their online features")
    parser.add_argument("--redis_url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="features")
    parser.add_argument("users", nargs="+")
    args = parser.parse_args(argv)
    client = FeatureClient(redis.Redis.from_url(args.redis_url), prefix=args.prefix)
    for row in predict_for_users(client, args.users):
        print(row)


if __name__ == "__main__":
    main()
