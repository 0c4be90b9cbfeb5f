"""The CLI contract end to end: bounded replays on the DirectRunner into a real Redis."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

import schemas
from pipelines.generate import MALFORMED, StreamSpec, generate, write_jsonl
from tests import reference

ROOT = Path(__file__).resolve().parents[2]
SPEC = StreamSpec(events=1500, users=40, seed=11)
TYPES = {"txn_total_5m": float, "amount_sum_60s": float, "clicks_in_session": int,
         "session_duration_s": int, "lifetime_rides": int, "rides_per_city": json.loads,
         "last_purchase_value": float, "distinct_cities_24h": int}


def run_pipeline(module: str, tmp_path: Path, events: Path, redis_url: str | None,
                 *extra: str) -> dict[str, Any]:
    args = [sys.executable, "-m", module, "--runner=DirectRunner", f"--input={events}",
            f"--feature_log={tmp_path / 'updates.jsonl'}", *extra]
    if redis_url:
        args.append(f"--redis_url={redis_url}")
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def redis_features(client: Any) -> dict[str, dict[str, Any]]:
    """userId -> typed feature fields (meta fields like f:as_of left out)."""
    out: dict[str, dict[str, Any]] = {}
    for key in client.scan_iter("features:user:*"):
        fields = client.hgetall(key)
        out[key.split(":", 2)[2]] = {f: TYPES[f](v) for f, v in fields.items() if ":" not in f}
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def user_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("user") / "events.jsonl"
    events = generate("user", SPEC)
    write_jsonl(str(path), events, malformed=len(MALFORMED))
    return path, events


@pytest.fixture(scope="module")
def ride_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("ride") / "events.jsonl"
    events = generate("ride", SPEC)
    write_jsonl(str(path), events, malformed=len(MALFORMED))
    return path, events


def test_user_pipeline_matches_reference(redis_db, user_stream, tmp_path):
    path, events = user_stream
    dead = tmp_path / "dead.jsonl"
    summary = run_pipeline("pipelines.user_features", tmp_path, path, redis_db.url,
                           f"--dead_letter={dead}")
    assert redis_features(redis_db.client()) == reference.user_features(events)
    letters = read_jsonl(dead)
    assert len(letters) == len(MALFORMED) == summary["decode.dead_letters"]
    assert summary["decode.events_valid"] == len(events)
    assert all(d["reason"] and "payload" in d for d in letters)
    assert sorted(d["payload"] for d in letters) == sorted(MALFORMED)


def test_user_pipeline_is_order_independent(redis_db, user_stream, tmp_path):
    path, events = user_stream
    lines = path.read_text().splitlines()
    random.Random(3).shuffle(lines)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")
    run_pipeline("pipelines.user_features", tmp_path, shuffled, redis_db.url)
    assert redis_features(redis_db.client()) == reference.user_features(events)


def test_ride_pipeline_matches_reference(redis_db, ride_stream, tmp_path):
    path, events = ride_stream
    dead = tmp_path / "dead.jsonl"
    summary = run_pipeline("pipelines.ride_features", tmp_path, path, redis_db.url,
                           f"--dead_letter={dead}")
    assert redis_features(redis_db.client()) == reference.ride_features(events)
    assert len(read_jsonl(dead)) == len(MALFORMED) == summary["decode.dead_letters"]

    finals = [u for u in read_jsonl(tmp_path / "updates.jsonl")
              if u["feature"] == "amount_sum_60s" and u["final"]]
    for u in finals:
        assert u["value"] == reference.amount_sum_60s(events, u["entity_id"], u["as_of_ms"]), u
    # A final value at the end of every event's second and when it leaves the window.
    points = {(u["entity_id"], u["as_of_ms"]) for u in finals}
    for e in events:
        tile_end = e["eventTimestamp"] // 1000 * 1000 + 999
        assert (e["userId"], tile_end) in points
        assert (e["userId"], tile_end + 60_000) in points
    assert len(points) == len(finals), "each as_of is final exactly once in a replay"


def test_avro_input_resolves_writer_schema(redis_db, tmp_path):
    events = generate("user", StreamSpec(events=300, users=10, seed=5))
    path = tmp_path / "events.avro"
    with open(path, "wb") as f:  # written with v1, read with the v2 reader schema
        fastavro.writer(f, schemas.load_schema(schemas.USER_EVENT_V1), events)
    summary = run_pipeline("pipelines.user_features", tmp_path, path, redis_db.url)
    assert summary["decode.events_valid"] == len(events)
    assert redis_features(redis_db.client()) == reference.user_features(events)


def test_dead_letters_counted_without_dead_letter_file(tmp_path):
    path = tmp_path / "events.jsonl"
    events = generate("ride", StreamSpec(events=50, users=5, seed=2))
    write_jsonl(str(path), events, malformed=4)
    summary = run_pipeline("pipelines.ride_features", tmp_path, path, None)
    assert summary["decode.dead_letters"] == 4
    assert summary["decode.events_valid"] == 50


def test_replaying_into_a_filled_redis_changes_nothing(redis_db, ride_stream, tmp_path):
    path, _ = ride_stream
    run_pipeline("pipelines.ride_features", tmp_path, path, redis_db.url)
    client = redis_db.client()
    before = {k: client.hgetall(k) for k in client.scan_iter("features:user:*")}
    again = run_pipeline("pipelines.ride_features", tmp_path, path, redis_db.url)
    after = {k: client.hgetall(k) for k in client.scan_iter("features:user:*")}
    assert after == before  # updated_at included: not one field rewritten
    assert again["redis_sink.fields_written"] == 0
    assert again["redis_sink.guard_rejections"] > 0


@pytest.mark.parametrize("pipeline", ["user", "ride"])
def test_fused_engine_gives_every_update_the_stages_give(redis_db, user_stream, ride_stream,
                                                         tmp_path, pipeline):
    path, events = user_stream if pipeline == "user" else ride_stream
    logs = {}
    for engine in ("stages", "fused"):
        out = tmp_path / engine
        out.mkdir()
        redis_db.client().flushall()
        run_pipeline(f"pipelines.{pipeline}_features", out, path, redis_db.url,
                     f"--engine={engine}")
        logs[engine] = [json.loads(line) for line in
                        (out / "updates.jsonl").read_text().splitlines()]
    assert len(logs["stages"]) > len(events)
    # The fused stage also stamps when each update became visible (the stages do not).
    assert all("visible_ms" in u and "seq" in u for u in logs["fused"])
    stamped = ("visible_ms", "seq")
    updates = {engine: sorted(json.dumps({k: v for k, v in u.items() if k not in stamped},
                                         sort_keys=True) for u in lines)
               for engine, lines in logs.items()}
    assert updates["fused"] == updates["stages"]
    want = (reference.user_features if pipeline == "user" else reference.ride_features)(events)
    assert redis_features(redis_db.client()) == want
