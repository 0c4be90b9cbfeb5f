"""gs:// for real: the pipelines read events from and write training sets to a GCS
emulator (``gcp-storage-emulator``) through Beam's own GCS filesystem."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest

import schemas
from pipelines.generate import MALFORMED, generate, write_jsonl
from tests import reference
from tests.integration.test_pipelines import redis_features
from tests.training import ORDERED, assert_matches_reference, label_rows, run_module, write_csv


@pytest.fixture()
def bucket(gcs, monkeypatch) -> Any:
    """The emulator's bucket through the real google-cloud-storage client."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
    return storage.Client(project="test").bucket(gcs.bucket)


def test_training_set_from_gs_events_and_labels_to_gs_parquet(gcs, bucket, tmp_path):
    events = generate("user", ORDERED)
    write_jsonl(str(tmp_path / "events.jsonl"), events, malformed=len(MALFORMED))
    lines = (tmp_path / "events.jsonl").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    bucket.blob("ts/events/part-0.jsonl").upload_from_string("".join(lines[:half]))
    bucket.blob("ts/events/part-1.jsonl").upload_from_string("".join(lines[half:]))
    labels = label_rows(events, 200, seed=7)
    write_csv(tmp_path / "labels.csv", labels)
    bucket.blob("ts/labels.csv").upload_from_filename(str(tmp_path / "labels.csv"))

    summary = run_module("pipelines.training_set", "--pipeline=user",
                         f"--events={gcs.url('ts/events/*.jsonl')}",
                         f"--labels={gcs.url('ts/labels.csv')}",
                         f"--output={gcs.url('ts/out/train.parquet')}", env=gcs.env())
    assert summary["decode.events_valid"] == len(events)
    table = pq.read_table(io.BytesIO(bucket.blob("ts/out/train.parquet").download_as_bytes()))
    assert_matches_reference("user", table, labels, events)
    dead = bucket.blob("ts/out/train.parquet.dead_letters.jsonl").download_as_text()
    assert len(dead.splitlines()) == 2 + len(MALFORMED)
    # Only the outputs are left beside the inputs: no temporary files.
    assert sorted(b.name for b in bucket.list_blobs(prefix="ts/out/")) == [
        "ts/out/train.parquet", "ts/out/train.parquet.dead_letters.jsonl"]


def test_feature_pipelines_replay_gs_inputs(gcs, bucket, redis_db, tmp_path):
    user_events = generate("user", ORDERED)
    write_jsonl(str(tmp_path / "user.jsonl"), user_events, malformed=len(MALFORMED))
    bucket.blob("replay/user.jsonl").upload_from_filename(str(tmp_path / "user.jsonl"))
    summary = run_module("pipelines.user_features", "--runner=DirectRunner",
                         f"--input={gcs.url('replay/user.jsonl')}",
                         f"--feature_log={gcs.url('replay/user-updates.jsonl')}",
                         f"--redis_url={redis_db.url}", env=gcs.env())
    assert summary["decode.dead_letters"] == len(MALFORMED)
    assert redis_features(redis_db.client()) == reference.user_features(user_events)
    log = bucket.blob("replay/user-updates.jsonl").download_as_text().splitlines()
    assert len(log) > len(user_events) and all(json.loads(line)["visible_ms"] for line in log)

    redis_db.client().flushall()
    ride_events = generate("ride", ORDERED)
    out = io.BytesIO()
    fastavro.writer(out, schemas.load_schema(schemas.RIDE_EVENT), ride_events)
    bucket.blob("replay/ride.avro").upload_from_string(out.getvalue())
    summary = run_module("pipelines.ride_features", "--runner=DirectRunner",
                         f"--input={gcs.url('replay/*.avro')}",
                         f"--redis_url={redis_db.url}", env=gcs.env())
    assert summary["decode.events_valid"] == len(ride_events)
    assert redis_features(redis_db.client()) == reference.ride_features(ride_events)
