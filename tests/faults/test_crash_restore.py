"""Crash and restore: TaskManager kills and job cancellations at random points of a stream.

The TaskManager running the job is SIGKILLed with the Python worker pool beside
it (a lost machine) and both are started again (the job restarts from its
latest checkpoint under its own restart strategy, ``--number_of_execution_retries``);
the job is also cancelled through the REST API and resubmitted by a new
pipeline process with ``--savepoint_path=<latest retained checkpoint>``. The
final Redis features must equal the reference exactly: open sliding windows,
pending timers and lifetime counts all come back from the checkpoint, and
the records read again after a restore change nothing (the as_of guard).
"""

from __future__ import annotations

import random
import time

import pytest

from pipelines.generate import StreamSpec
from runners import services as rs
from runtime.flink import cancel_job, checkpoint_stats
from tests.faults import harness as h
from tests.faults.conftest import restart_taskmanager
from tests.integration.test_pipelines import redis_features

SPEC = StreamSpec(events=6_000, users=30, rate_per_s=20, disorder_ms=3_000,
                  late_fraction=0.0, seed=99)
PLAN = ("kill_taskmanager", "cancel_and_resubmit", "kill_taskmanager", "cancel_and_resubmit",
        "kill_taskmanager")


def _restored(svc: rs.LocalServices, jid: str) -> dict | None:
    """The checkpoint or savepoint job ``jid`` last restored from (None: never)."""
    return checkpoint_stats(svc.ports.flink_rest, jid).get("latest", {}).get("restored")


def kill_taskmanager(svc: rs.LocalServices, jid: str) -> None:
    """SIGKILL the process groups of the TaskManager running job ``jid`` and of the worker
    pool beside it (a lost machine), then start both again with the same config."""
    (index,) = h.taskmanagers_of(svc, jid)
    restart_taskmanager(svc, index)


@pytest.mark.slow
def test_kills_and_cancellations_restore_exactly(svc, tmp_path, figures):
    """Five disruptions at random points (3 TaskManager kills, 2 cancel + resubmit from the
    latest retained checkpoint) while a live stream is consumed: the final features equal
    the reference, no event lost, none counted twice."""
    rng = random.Random(4)
    topic, group, db = "faults-crash", "faults-crash-group", 5
    svc.create_topic(topic, partitions=2)
    events = h.live_events("ride", SPEC, lead_ms=20_000)
    flags = h.pipeline_flags(topic, f"redis://127.0.0.1:{svc.ports.redis}/{db}", len(events),
                             h.settle_ms(events), tmp_path, f"--consumer_group={group}")
    run = h.PipelineRun(svc, "ride", flags, tmp_path, "crash-0")
    jid = run.wait_running()
    sender = h.send_in_background(svc, topic, "ride", events, SPEC.rate_per_s)
    survived: dict[str, int] = {"kill_taskmanager": 0, "cancel_and_resubmit": 0}
    restore_s: list[float] = []
    try:
        for n, action in enumerate(PLAN, 1):
            time.sleep(rng.uniform(5, 20))
            # A disruption restores from a checkpoint: the job has one first.
            h.wait_checkpointed(svc, jid)
            assert sender.is_alive(), "the stream ended before every disruption happened"
            before = _restored(svc, jid)
            t0 = time.monotonic()
            if action == "kill_taskmanager":
                kill_taskmanager(svc, jid)
                h.wait_restored_and_checkpointed(svc, jid, before)
            else:
                latest = checkpoint_stats(svc.ports.flink_rest, jid)["latest"]["completed"]
                assert latest, "no checkpoint to resubmit from"
                path = latest["external_path"]
                cancel_job(svc.ports.flink_rest, jid)
                run.kill()  # its driver saw the job cancelled
                run = h.PipelineRun(svc, "ride", [*flags, f"--savepoint_path={path}"],
                                    tmp_path, f"crash-{n}")
                jid = run.wait_running()
                restored = h.wait_restored_and_checkpointed(svc, jid, None)
                assert restored["external_path"].rstrip("/") == path.rstrip("/"), restored
            restore_s.append(round(time.monotonic() - t0, 1))
            survived[action] += 1
            print(f"  disruption {n}: {action} survived in {restore_s[-1]}s", flush=True)
        h.join_sender(sender)
        summary = run.finish()
    finally:
        run.kill()
    import redis

    got = redis_features(redis.Redis(port=svc.ports.redis, db=db, decode_responses=True))
    figures.update(kills_survived=sum(survived.values()),
                   taskmanager_kills=survived["kill_taskmanager"],
                   cancel_resubmits=survived["cancel_and_resubmit"],
                   max_restore_s=max(restore_s), valid_records=len(events))
    assert summary["kafka.records_committed"] == len(events)
    assert got == h.reference_for("ride")(events)
