"""Training sets end to end on the DirectRunner, checked against an independent
point-in-time reference, and skew measured against online runs of the same events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from pipelines.catalogue import PIPELINES
from pipelines.generate import MALFORMED, StreamSpec, generate, write_jsonl
from tests import point_in_time_reference as reference
from tests.helpers import run_stream, stream_of
from tests.training import (
    ORDERED,
    assert_matches_reference,
    iso,
    label_rows,
    run_module,
    write_csv,
)
from transforms.engine import EngineSettings, FeatureEngine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pipeline in ("user", "ride"):
        path = tmp_path_factory.mktemp(pipeline) / "events.jsonl"
        events = generate(pipeline, ORDERED)
        write_jsonl(str(path), events, malformed=len(MALFORMED))
        out[pipeline] = (path, events)
    return out


def test_user_training_set_from_csv_labels_matches_reference(streams, tmp_path):
    path, events = streams["user"]
    labels = label_rows(events, 400, seed=1)
    write_csv(tmp_path / "labels.csv", labels)
    summary = run_module("pipelines.training_set", "--pipeline=user", f"--events={path}",
                         f"--labels={tmp_path / 'labels.csv'}",
                         f"--output={tmp_path / 'train.parquet'}")
    table = pq.read_table(tmp_path / "train.parquet")
    # Label columns come back unchanged (CSV text), in label-file order.
    assert table.column_names[:4] == ["entity_id", "timestamp", "label", "weight"]
    assert table.column("timestamp").to_pylist() == [str(r["timestamp"]) for r in labels]
    assert table.column("weight").to_pylist() == [str(r["weight"]) for r in labels]
    assert_matches_reference("user", table, labels, events)
    assert summary["training_set.rows"] == 400
    assert summary["training_set.label_dead_letters"] == 2
    dead = [json.loads(line) for line in
            (tmp_path / "train.parquet.dead_letters.jsonl").read_text().splitlines()]
    reasons = sorted(d["reason"] for d in dead if d["source"].endswith(("#401", "#402")))
    assert reasons == ["label row 401: no entity_id",
                       "label row 402: timestamp 'last tuesday' is neither epoch "
                       "milliseconds nor ISO-8601"]
    assert len(dead) == 2 + len(MALFORMED)  # and every malformed event line
    # Some rows must exercise each case: served values, closed windows, cold starts.
    flags = table.column("txn_total_5m__is_default").to_pylist()
    assert 0 < sum(flags) < len(flags)


def test_ride_training_set_from_parquet_iso_labels_matches_reference(streams, tmp_path):
    path, events = streams["ride"]
    labels = label_rows(events, 300, seed=2)
    rows = [{**r, "timestamp": iso(r["timestamp"])} for r in labels]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
        [("entity_id", pa.string()), ("timestamp", pa.string()), ("label", pa.int64()),
         ("weight", pa.float64())])), tmp_path / "labels.parquet")
    run_module("pipelines.training_set", "--pipeline=ride", f"--events={path}",
               f"--labels={tmp_path / 'labels.parquet'}", "--max_out_of_orderness_ms=3000",
               f"--output={tmp_path / 'train.parquet'}")
    table = pq.read_table(tmp_path / "train.parquet")
    # Parquet label columns keep their types.
    assert table.schema.field("label").type == pa.int64()
    assert table.column("weight").to_pylist() == [r["weight"] for r in labels]
    assert_matches_reference("ride", table, labels, events, delay_ms=3000)
    expired = [r for r in table.to_pylist()
               if not r["amount_sum_60s__is_default"] and r["amount_sum_60s"] == 0.0]
    assert expired, "no label saw a sliding window empty after its events expired"


def test_avro_event_globs_and_a_feature_subset(streams, tmp_path):
    _, events = streams["user"]
    schema = fastavro.parse_schema(schemas.load_schema(schemas.USER_EVENT_V2))
    half = len(events) // 2
    for i, part in enumerate((events[:half], events[half:])):
        with (tmp_path / f"part-{i}.avro").open("wb") as f:
            fastavro.writer(f, schema, part)
    labels = label_rows(events, 150, seed=3)
    write_csv(tmp_path / "labels.csv", labels, bad=False)
    run_module("pipelines.training_set", "--pipeline=user",
               f"--events={tmp_path / 'part-*.avro'}", f"--labels={tmp_path / 'labels.csv'}",
               "--features=last_purchase_value,txn_total_5m",
               f"--output={tmp_path / 'train.parquet'}")
    table = pq.read_table(tmp_path / "train.parquet")
    assert [c for c in table.column_names if "__" not in c][4:] == [
        "last_purchase_value", "txn_total_5m"]
    rows = table.to_pylist()
    for label, row in zip(labels, rows, strict=True):
        expected = reference.user_at(events, label["entity_id"], label["timestamp"])
        for feature in ("last_purchase_value", "txn_total_5m"):
            assert row[feature] == expected[feature][0], (label, feature)


def test_unknown_feature_is_refused_by_name(streams, tmp_path):
    path, events = streams["user"]
    write_csv(tmp_path / "labels.csv", label_rows(events, 5, seed=4))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.training_set", "--pipeline=user",
         f"--events={path}", f"--labels={tmp_path / 'labels.csv'}",
         "--features=txn_total_5m,rides_per_city", f"--output={tmp_path / 'out.parquet'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "['rides_per_city'] are not features of the user pipeline" in done.stderr


@pytest.mark.parametrize("pipeline", ["user", "ride"])
def test_no_skew_against_an_online_replay_of_the_same_events(streams, tmp_path, pipeline):
    path, events = streams[pipeline]
    write_csv(tmp_path / "labels.csv", label_rows(events, 300, seed=5))
    run_module(f"pipelines.{pipeline}_features", "--runner=DirectRunner", f"--input={path}",
               f"--feature_log={tmp_path / 'log.jsonl'}")
    run_module("pipelines.training_set", f"--pipeline={pipeline}", f"--events={path}",
               f"--labels={tmp_path / 'labels.csv'}", f"--output={tmp_path / 'train.parquet'}")
    summary = run_module("pipelines.skew", f"--pipeline={pipeline}",
                         f"--feature_log={tmp_path / 'log.jsonl'}",
                         f"--labels={tmp_path / 'labels.csv'}",
                         f"--training_set={tmp_path / 'train.parquet'}", "--fail_on_skew")
    assert summary["rows_compared"] == 300
    assert summary["rows_equal"] == 300 and summary["rows_differing"] == 0
    assert summary["log_updates"] > 1000


def test_every_differing_cell_of_a_disordered_stream_is_explained(tmp_path):
    """The generator's default stream: users' own events out of order within 5 s,
    2% up to 10 minutes late. Rows differ, and each differing cell lacks exactly
    events that arrived after a later event of the same user."""
    events = generate("user", StreamSpec(events=1500, users=40, seed=37))
    path = tmp_path / "events.jsonl"
    write_jsonl(str(path), events, malformed=len(MALFORMED))
    write_csv(tmp_path / "labels.csv", label_rows(events, 300, seed=9), bad=False)
    run_module("pipelines.user_features", "--runner=DirectRunner", f"--input={path}",
               f"--feature_log={tmp_path / 'log.jsonl'}")
    run_module("pipelines.training_set", "--pipeline=user", f"--events={path}",
               f"--labels={tmp_path / 'labels.csv'}", f"--output={tmp_path / 'train.parquet'}")
    summary = run_module("pipelines.skew", "--pipeline=user",
                         f"--feature_log={tmp_path / 'log.jsonl'}",
                         f"--labels={tmp_path / 'labels.csv'}",
                         f"--training_set={tmp_path / 'train.parquet'}", f"--events={path}",
                         f"--out={tmp_path / 'skew.jsonl'}")
    assert summary["rows_differing"] > 0
    assert summary["cells_unexplained"] == 0
    assert summary["cells_explained_by_arrival_order"] == sum(
        summary["cells_differing"].values())
    # What was served is the reference over the user's events that had arrived
    # before its first event later than the label time.
    for line in (tmp_path / "skew.jsonl").read_text().splitlines():
        cell = json.loads(line)
        own = [e for e in events if e["userId"] == cell["entity"]]
        first_later = next((i for i, e in enumerate(own) if e["eventTimestamp"] > cell["at_ms"]),
                           len(own))
        served = reference.user_at(own[:first_later], cell["entity"], cell["at_ms"])
        value, _, is_default = served[cell["feature"]]
        assert (cell["served"]["value"], cell["served"]["is_default"]) == (
            value, is_default), cell
        assert cell["arrived_after_a_later_event"] == [
            e["eventTimestamp"] for e in own[first_later:]
            if e["eventTimestamp"] <= cell["at_ms"]]


class _Features(beam.PTransform):
    """The user pipeline's fused stage, as the online job runs it."""

    def expand(self, keyed: beam.PCollection) -> Any:
        fn = FeatureEngine(PIPELINES["user"], EngineSettings(watermark_delay_ms=10_000),
                           "user").fused_fns()["userId"]
        return keyed | beam.ParDo(fn).with_outputs("late", main="updates")


def test_events_beyond_the_allowed_lateness_show_as_skew(tmp_path):
    """An online stream whose watermark follows the newest event: a few purchases
    arrive 20 minutes late, beyond the 60-s lateness of the 5-minute totals, which
    drop them (the lifetime "last purchase" takes them late). Only labels of
    their users at or after their event times differ."""
    events = generate("user", StreamSpec(events=500, users=12, seed=31, rate_per_s=0.2,
                                         late_fraction=0.0, entity_order=True))
    late = [e for e in events if e["eventType"] == "purchase"][5::6]
    arrival = [e for e in events if e not in late]
    for e in late:  # each one 20 minutes of event time after its own time
        at = next((i for i, o in enumerate(arrival)
                   if o["eventTimestamp"] > e["eventTimestamp"] + 1_200_000), len(arrival))
        arrival.insert(at, e)
    steps: list[Any] = []
    newest = 0
    for e in arrival:
        steps.append(e)
        if e["eventTimestamp"] > newest:
            newest = e["eventTimestamp"]
            steps.append(newest)
    out = run_stream(_Features(), stream_of(*steps))
    dropped = [le.event for le in out["late"]]
    assert dropped, "the late events were not too late"
    (tmp_path / "log.jsonl").write_text("".join(u.to_json() + "\n" for u in out["updates"]))
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    labels = label_rows(events, 200, seed=6)
    write_csv(tmp_path / "labels.csv", labels, bad=False)
    run_module("pipelines.training_set", "--pipeline=user",
               f"--events={tmp_path / 'events.jsonl'}", f"--labels={tmp_path / 'labels.csv'}",
               f"--output={tmp_path / 'train.parquet'}")
    summary = run_module("pipelines.skew", "--pipeline=user",
                         f"--feature_log={tmp_path / 'log.jsonl'}",
                         f"--labels={tmp_path / 'labels.csv'}",
                         f"--training_set={tmp_path / 'train.parquet'}",
                         f"--out={tmp_path / 'skew.jsonl'}")
    differing = [json.loads(line) for line in (tmp_path / "skew.jsonl").read_text().splitlines()]
    assert summary["rows_differing"] > 0 and len(differing) >= summary["rows_differing"]
    # Every differing row is a label of a user with a late event at or before its time,
    for cell in differing:
        assert any(e["userId"] == cell["entity"] and e["eventTimestamp"] <= cell["at_ms"]
                   for e in late), cell
    # and some are rows a dropped event would have changed.
    assert any(d["userId"] == cell["entity"] and d["eventTimestamp"] <= cell["at_ms"]
               for cell in differing for d in dropped)
