"""Schema evolution on a live topic, and a state layout change between two job versions.

The producer switches from v1 to v2 mid-stream, through the schema registry of
the local stack: v2 adds the optional ``deviceType``; both are registered under
``<topic>-value`` (BACKWARD), and the records carry the ids the registry gave
(not the local catalogue's). A pipeline reading with the v1 schema and one
reading with v2 resolve those ids through the registry
(``--schema_registry_url``) and consume the same topic, each with its own
consumer group (the v1 reader live through the switch, the v2 reader afterwards
from offset 0): both must produce the reference features of every event, none
a dead letter.

The job itself evolves too: version 1 of the ride job is stopped with a
savepoint mid-stream, and version 2 (one more feature declared ahead of the
others, the state layout bumped and upgraded on read:
transforms/state_layout.py) restores from it and finishes the stream: its
pending timers fire (their steps keep their ids: runtime/transform_ids.py),
and the features equal the reference.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

import schemas
from pipelines.generate import StreamSpec
from pipelines.produce import registry_schema_id
from runtime.flink import stop_with_savepoint
from tests.faults import harness as h
from tests.integration.test_pipelines import redis_features

SPEC = StreamSpec(events=800, users=25, rate_per_s=80, disorder_ms=3_000,
                  late_fraction=0.0, seed=12)


@pytest.mark.slow
def test_v1_and_v2_readers_follow_a_mid_stream_schema_switch(svc, tmp_path, figures):
    """Half the stream written with v1, half with v2 (deviceType set), their ids from the
    registry: the v1 reader and the v2 reader both equal the reference; no dead letters."""
    topic = "faults-schema"
    svc.create_topic(topic, partitions=2)
    # Another subject first: the registry's ids for v1 and v2 are then not the local
    # catalogue's (a reader that fell back to it would make dead letters).
    registry_schema_id(svc.ports.registry_url, "faults-schema-other-value", schemas.RIDE_EVENT)
    ids = [registry_schema_id(svc.ports.registry_url, f"{topic}-value", f)
           for f in (schemas.USER_EVENT_V1, schemas.USER_EVENT_V2)]
    assert ids != [schemas.schema_id_for(schemas.USER_EVENT_V1),
                   schemas.schema_id_for(schemas.USER_EVENT_V2)], ids
    events = h.live_events("user", SPEC, lead_ms=15_000)
    half = len(events) // 2
    v2 = [{**e, "deviceType": ("ios", "android", "web")[i % 3]}
          for i, e in enumerate(events[half:])]
    items = [*[{k: v for k, v in e.items() if k != "deviceType"} for e in events[:half]],
             ("schema", schemas.USER_EVENT_V2), *v2]
    stop_at = max(e["eventTimestamp"] for e in events) + 20_000
    results = {}
    # The v1 reader runs live through the switch; the v2 reader then reads the whole
    # topic (v1 and v2 records) from 0, once it is complete.
    import redis

    for reader, db in (("v1", 6), ("v2", 7)):
        flags = h.pipeline_flags(
            topic, f"redis://127.0.0.1:{svc.ports.redis}/{db}", len(events), stop_at,
            tmp_path, f"--consumer_group=faults-schema-{reader}",
            f"--schema_registry_url={svc.ports.registry_url}",
            f"--reader_schema=user_interaction_event_{reader}.avsc",
            f"--dead_letter={tmp_path / f'dead-{reader}.jsonl'}")
        run = h.PipelineRun(svc, "user", flags, tmp_path, f"schema-{reader}")
        try:
            run.wait_running()
            if reader == "v1":
                h.join_sender(h.send_in_background(svc, topic, "user", items,
                                                   SPEC.rate_per_s,
                                                   schema_file=schemas.USER_EVENT_V1,
                                                   registry=True))
            summary = run.finish()
        finally:
            run.kill()
        got = redis_features(redis.Redis(port=svc.ports.redis, db=db, decode_responses=True))
        dead = tmp_path / f"dead-{reader}.jsonl"
        results[reader] = (summary, got, dead.read_text().splitlines() if dead.exists() else [])
    want = h.reference_for("user")(events)
    figures.update(v1_records=half, v2_records=len(events) - half, valid_records=len(events),
                   registry_ids="/".join(map(str, ids)))
    for reader, (summary, got, dead) in results.items():
        assert summary["kafka.records_committed"] == len(events), reader
        assert dead == [], (reader, dead[:2])
        assert got == want, reader


LAYOUT_SPEC = StreamSpec(events=2_400, users=30, rate_per_s=40, disorder_ms=3_000,
                         late_fraction=0.0, seed=21)
# Version 2 of the ride job, as a user would write it: one feature declared ahead of
# the others (a new part in every key's state cell), and the fused cell's state layout
# bumped (1 -> 2, each cell upgraded when it is first read).
ADDED_FEATURE = "max_amount_5m"
VERSION_2 = {
    Path("pipelines/catalogue.py"): [
        ("    last,\n", "    last,\n    max_of,\n"),
        ('    "ride": (\n',
         '    "ride": (\n'
         f'        Feature("{ADDED_FEATURE}", **RIDE, aggregation=max_of("amount"),\n'
         '                window=FixedWindows(5 * 60)),\n'),
    ],
    Path("transforms/fused.py"): [
        ('StateLayout("FusedFeatures")', 'StateLayout("FusedFeatures", 2, {1: dict})'),
    ],
}


def export_job_version(commit: str, dest: Path,
                       edits: dict[Path, list[tuple[str, str]]] | None = None) -> Path:
    """The source tree of ``commit`` under ``dest``, with ``edits`` (file -> (old, new)
    text replacements, each of which must apply): another version of the job."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(h.ROOT), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for path, replacements in (edits or {}).items():
        text = (dest / path).read_text()
        for old, new in replacements:
            assert text.count(old) == 1, f"{path}: {old!r} does not apply"
            text = text.replace(old, new)
        (dest / path).write_text(text)
    return dest


@pytest.mark.slow
def test_upgrade_adding_a_feature_and_a_state_layout_restores_from_savepoint(
        svc, tmp_path, figures):
    """Version 1 of the ride job (the committed tree) runs mid-stream and is stopped with
    a savepoint; version 2 (a feature declared ahead of the others, the state layout
    bumped) restores from it and finishes without a restart: the old cells are
    upgraded, the pending timers fire, and every feature of version 1 is exact."""
    old = export_job_version("HEAD", tmp_path / "job-v1")
    assert (old / "runtime" / "transform_ids.py").exists(), "version 1 numbers its steps"
    new = export_job_version("HEAD", tmp_path / "job-v2", VERSION_2)
    # Its own Redis db: the session's Redis is shared, and the rescale tests use 8, 11, 12.
    topic, group, db = "faults-upgrade", "faults-upgrade-group", 13
    svc.create_topic(topic, partitions=2)
    events = h.live_events("ride", LAYOUT_SPEC, lead_ms=20_000)
    flags = [*h.pipeline_flags(topic, f"redis://127.0.0.1:{svc.ports.redis}/{db}",
                               len(events), h.settle_ms(events), tmp_path,
                               f"--consumer_group={group}"),
             "--environment_type=LOOPBACK"]
    # LOOPBACK: each version's code exists only in its export, and a worker pool runs
    # the installed version (a pool is deployed with its job's image).
    run = h.PipelineRun(svc, "ride", flags, tmp_path, "upgrade-v1", root=old, pool=False)
    jid = run.wait_running()
    sender = h.send_in_background(svc, topic, "ride", events, LAYOUT_SPEC.rate_per_s)
    try:
        time.sleep(random.Random(8).uniform(25, 40))
        assert sender.is_alive(), "the stream ended before the upgrade"
        savepoint = stop_with_savepoint(svc.ports.flink_rest, jid,
                                        (svc.savepoint_dir / "upgrade").resolve().as_uri())
        stopped_at = time.monotonic()
        run.kill()
        run = h.PipelineRun(svc, "ride", [*flags, f"--savepoint_path={savepoint}"],
                            tmp_path, "upgrade-v2", root=new, pool=False)
        jid = run.wait_running()
        restored = h.wait_restored_and_checkpointed(svc, jid, None)
        assert restored["is_savepoint"], restored
        upgrade_s = round(time.monotonic() - stopped_at, 1)
        h.join_sender(sender)
        restarts = h.job_restarts(svc, jid)
        summary = run.finish()
    finally:
        run.kill()
    import redis

    client = redis.Redis(port=svc.ports.redis, db=db, decode_responses=True)
    # The added feature is not in this tree's catalogue: counted, then set aside.
    keys = list(client.scan_iter("features:user:*"))
    with_added = sum(bool(client.hdel(k, ADDED_FEATURE)) for k in keys)
    got = redis_features(client)
    figures.update(versions="1 -> 2 (+1 feature, layout 1 -> 2)", savepoint_restores=1,
                   upgrade_s=upgrade_s, restarts_after_restore=restarts,
                   users_with_added_feature=with_added, valid_records=len(events))
    assert summary["kafka.records_committed"] == len(events)
    assert restarts == 0
    # The added feature starts with the events after the restore (a new feature needs a
    # replay from offset 0 to cover the past); every other one is exact.
    assert with_added > 0, "version 2 computed nothing new"
    assert got == h.reference_for("ride")(events)
