"""Replays: the whole topic again into a Redis that already holds the features.

The ride pipeline is used because every one of its values is final once the
watermark has passed the last event by 75 s (the 60 s window, the 10 s
out-of-orderness): the first run leaves nothing for a replay to legitimately
change. (A user pipeline's open 5-minute window or 15-minute session would be
finalized by a later replay, which is a real change, not a duplicate.)
"""

from __future__ import annotations

import random
import threading

from pipelines.generate import StreamSpec
from tests.faults import harness as h
from tests.integration.test_pipelines import redis_features
from transforms.model import FeatureUpdate, FeatureVector
from transforms.redis_sink import RedisSinkConfig, RedisWriter

SPEC = StreamSpec(events=800, users=25, rate_per_s=100, disorder_ms=3_000,
                  late_fraction=0.0, seed=41)


def test_replay_from_offset_zero_changes_nothing(svc, tmp_path, figures):
    """Rewinding the consumer group to offset 0 and replaying the whole topic into a
    filled Redis rewrites no field (values, as_of, final and updated_at identical)."""
    topic, group, db = "faults-replay", "faults-replay-group", 1
    svc.create_topic(topic, partitions=2)
    events = h.live_events("ride", SPEC)
    flags = h.pipeline_flags(topic, f"redis://127.0.0.1:{svc.ports.redis}/{db}", len(events),
                             h.settle_ms(events), tmp_path, f"--consumer_group={group}")
    first = h.PipelineRun(svc, "ride", flags, tmp_path, "first")
    first.wait_running()
    h.join_sender(h.send_in_background(svc, topic, "ride", events, SPEC.rate_per_s))
    summary = first.finish()
    assert summary["kafka.records_committed"] == len(events)

    import redis

    client = redis.Redis(port=svc.ports.redis, db=db, decode_responses=True)
    assert redis_features(client) == h.reference_for("ride")(events)
    before = h.snapshot(client)
    assert before and all(any(f.endswith(":updated_at") for f in v) for v in before.values())

    partitions = h.rewind_group(svc.ports.bootstrap_servers, group, topic)
    replay = h.PipelineRun(svc, "ride", flags, tmp_path, "replay")
    replay.wait_running()
    again = replay.finish()
    after = h.snapshot(client)

    figures.update(records_replayed=again["kafka.records_committed"], partitions=partitions,
                   hashes_compared=len(after),
                   fields_compared=sum(len(v) for v in after.values()),
                   first_run_s=summary["seconds"], replay_s=again["seconds"])
    assert again["kafka.records_committed"] == len(events)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"replay changed {len(changed)} hashes, e.g. {sorted(changed)[:3]}"


def test_guard_is_atomic_under_racing_writers(redis_server, figures):
    """Writers racing on the same keys with shuffled as_of: each field ends at the value of
    its highest as_of, exactly as if the writes had been applied one at a time."""
    client = redis_server.client()
    client.flushall()
    config = RedisSinkConfig(url=redis_server.url, batch_size=50)
    users, per_writer, writers = 20, 400, 6
    rng = random.Random(7)
    # Every writer sends every (user, as_of) in its own order; the value encodes as_of,
    # so a lost race (an older value over a newer one) shows in the end state.
    plans = []
    for w in range(writers):
        plan = [(f"u{u:02d}", as_of) for u in range(users)
                for as_of in range(1_000, 1_000 + per_writer // users * 10, 10)]
        rng.shuffle(plan)
        plans.append((w, plan))
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(plan: list[tuple[str, int]]) -> None:
        writer = RedisWriter(config)
        try:
            start.wait()
            for i in range(0, len(plan), 10):
                writer.write([FeatureVector("user", user, (
                    FeatureUpdate("user", user, "lifetime_rides", as_of, as_of, as_of % 20 == 0),
                )) for user, as_of in plan[i:i + 10]])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            writer.close()

    threads = [threading.Thread(target=write, args=(plan,)) for _, plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    top = 1_000 + per_writer // users * 10 - 10
    for u in range(users):
        stored = client.hgetall(f"features:user:u{u:02d}")
        assert stored["lifetime_rides"] == str(top), (u, stored)
        assert stored["lifetime_rides:as_of"] == str(top)
    figures.update(race_writes=writers * len(plans[0][1]), racing_writers=writers,
                   keys=users)
