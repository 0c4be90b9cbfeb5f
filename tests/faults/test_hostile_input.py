"""Hostile input on the wire, and secrets that must not leak, in one Flink run.

Hypothesis generates bad Kafka values (random bytes, truncated Avro, unknown
schema ids, wrong magic bytes, strings beyond ``Limits``, non-finite doubles,
timestamps outside Beam's range), sent with empty or missing keys among a live
stream of valid events. The user pipeline writes to a ``redis-server
--requirepass`` the test starts, with the password in ``--redis_url``, and
carries a Kafka password in ``--kafka_config``. One run, several checks: the
job never fails, every bad record is a dead letter with a reason, the features
equal the reference of the valid events, and no secret appears anywhere the
run wrote (process output, service logs, feature log, dead letters, the Flink
job's configuration as the REST API shows it).

A second, slow run sends 10,000 values from the decoder fuzzer of
tests/unit/test_decode.py (bit flips, truncations, extensions, other schemas'
bodies, huge varint lengths, tombstones, ...) among valid events, and counts
the dead letters one by one against the decoder's own reasons.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import schemas
from pipelines.generate import StreamSpec
from runtime.flink import _rest
from tests.faults import harness as h
from tests.integration.test_pipelines import redis_features
from tests.unit.test_decode import hostile_wire_records
from transforms.decode import (
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    EventSchema,
    InvalidEvent,
    Limits,
    SchemaCatalogue,
    decode_confluent,
    encode_confluent,
)

SPEC = StreamSpec(events=600, users=25, rate_per_s=100, disorder_ms=3_000,
                  late_fraction=0.0, seed=63)
HOSTILE = 300
SCHEMA = EventSchema(schemas.USER_EVENT_V2)
CATALOGUE = SchemaCatalogue()


def _wire(schema_id: int, body: bytes, magic: int = 0) -> bytes:
    return struct.pack(">BI", magic, schema_id) + body


_event = st.fixed_dictionaries({
    "userId": st.text(min_size=1, max_size=12), "eventType": st.sampled_from(["click", "purchase"]),
    "eventValue": st.floats(0, 1e6), "eventTimestamp": st.integers(0, 2**41),
    "deviceType": st.none() | st.text(max_size=8)})


def _raw(e: dict[str, Any]) -> bytes:
    return encode_confluent(e, schemas.USER_EVENT_V2)


_bad = st.one_of(
    st.tuples(st.just("random_bytes"), st.binary(max_size=300)),
    st.builds(lambda e, cut: ("truncated_avro", _raw(e)[:max(5, int(cut * len(_raw(e))))]),
              _event, st.floats(0, 0.999)),
    st.builds(lambda e, sid: ("unknown_schema_id", _wire(sid, _raw(e)[5:])),
              _event, st.integers(4, 2**32 - 1)),
    st.builds(lambda e, m: ("wrong_magic", bytes([m]) + _raw(e)[1:]), _event,
              st.integers(1, 255)),
    st.builds(lambda e, n: ("huge_string", _raw({**e, "userId": "x" * n})), _event,
              st.integers(Limits.max_string_chars + 1, Limits.max_string_chars + 4096)),
    st.builds(lambda e, v: ("non_finite_double", _raw({**e, "eventValue": v})), _event,
              st.sampled_from([math.nan, math.inf, -math.inf])),
    st.builds(lambda e, t: ("timestamp_out_of_range", _raw({**e, "eventTimestamp": t})), _event,
              st.integers(-(2**63), MIN_EVENT_MS - 1) | st.integers(MAX_EVENT_MS + 1, 2**63 - 1)),
    st.builds(lambda e: ("trailing_bytes", _raw(e) + b"\x00"), _event),
    st.builds(lambda e: ("ride_schema_for_user", _wire(3, _raw(e)[5:])), _event),
    st.tuples(st.just("empty_value"), st.just(b"")),
)


def hostile_records(n: int) -> list[tuple[str, bytes]]:
    """``n`` (or fewer, if hypothesis runs out) bad records, each checked to be rejected
    by the decoder with ``InvalidEvent``, never with another exception."""
    found: list[tuple[str, bytes]] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_bad)
    def collect(case: tuple[str, bytes]) -> None:
        try:
            decode_confluent(case[1], SCHEMA, CATALOGUE)
        except InvalidEvent:
            found.append(case)
            return
        assume(False)  # a random case that is valid after all: not hostile

    collect()
    return found


def test_decoder_rejects_hostile_values_with_a_reason(figures):
    """Locally, thousands of generated bad values: each raises InvalidEvent (a dead letter
    with a reason), none raises anything else (which would fail the Flink job)."""
    cases = hostile_records(3_000)
    assert len(cases) >= 2_500
    kinds = Counter(k for k, _ in cases)
    assert len(kinds) >= 10, kinds
    figures.update(fuzz_cases=len(cases), kinds=len(kinds))


REDIS_PASSWORD = "rp-" + secrets.token_hex(12)
KAFKA_PASSWORD = "kp-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def hostile_run(svc, tmp_path_factory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("hostile")
    topic, dead_topic = "faults-hostile", "faults-hostile-dead"
    svc.create_topic(topic, partitions=2)
    svc.create_topic(dead_topic, partitions=1)
    bad = hostile_records(HOSTILE)
    events = h.live_events("user", SPEC, lead_ms=5_000)
    # Bad records spread through the stream, keys empty ("") or missing (None).
    items: list[Any] = list(events)
    step = max(1, len(items) // len(bad))
    for i, (_, value) in enumerate(bad):
        items.insert(i * (step + 1), (value, "" if i % 2 else None))
    kafka_config = json.dumps({"sasl.mechanism": "PLAIN", "sasl.username": "faults",
                                   "sasl.password": KAFKA_PASSWORD})
    with h.RedisProcess(workdir, persist=False, password=REDIS_PASSWORD) as auth_redis:
        flags = h.pipeline_flags(
            topic, auth_redis.url(0), len(items),
            max(e["eventTimestamp"] for e in events) + 20_000, workdir,
            f"--dead_letter_topic={dead_topic}", f"--kafka_config={kafka_config}")
        run = h.PipelineRun(svc, "user", flags, workdir, "hostile")
        jid = run.wait_running()
        sender = h.send_in_background(svc, topic, "user", items, SPEC.rate_per_s * 1.5)
        states = []
        while sender.is_alive():
            states.append(run.job_state())
            time.sleep(1)
        h.join_sender(sender)
        job_config = json.dumps(_rest(svc.ports.flink_rest, f"/jobs/{jid}/config"))
        exceptions = _rest(svc.ports.flink_rest, f"/jobs/{jid}/exceptions")
        summary = run.finish()
        features = redis_features(auth_redis.client())
        redis_log = auth_redis.log
    letters = [json.loads(v) for v in h.consume_all(svc.ports.bootstrap_servers, dead_topic)]
    return {"workdir": workdir, "events": events, "bad": bad, "summary": summary,
            "features": features, "letters": letters, "states": states,
            "exceptions": exceptions, "job_config": job_config, "redis_log": redis_log,
            "jid": jid}


def test_hostile_records_become_dead_letters_and_job_never_fails(hostile_run, figures):
    """Every bad record on the wire is one dead letter on the dead-letter topic, with a
    reason and its exact bytes; the job never failed or restarted; features equal the
    reference of the valid events."""
    run = hostile_run
    letters, bad = run["letters"], run["bad"]
    figures.update(fuzz_cases=len(bad), dead_letters_counted=len(letters),
                   valid_records=len(run["events"]),
                   kinds=len({k for k, _ in bad}), run_s=run["summary"]["seconds"])
    assert set(run["states"]) == {"RUNNING"}, run["states"]
    assert not run["exceptions"].get("exceptionHistory", {}).get("entries"), run["exceptions"]
    assert run["summary"]["kafka.records_committed"] == len(run["events"]) + len(bad)
    assert len(letters) == len(bad)
    assert all(d["reason"] for d in letters)
    sent = Counter(base64.b64encode(v).decode() for _, v in bad)
    assert Counter(d["payload"] for d in letters) == sent
    assert run["features"] == h.reference_for("user")(run["events"])


def _places(run: dict[str, Any], svc) -> dict[str, str]:
    """Every text the run left behind, by where it is."""
    places = {str(p): p.read_text(errors="replace") for p in h.iter_files(run["workdir"])
              if not p.name.startswith("redis-") and p.suffix != ".aof"
              and "appendonly" not in p.parts[-2]}
    places.update({str(p): p.read_text(errors="replace") for p in h.iter_files(svc.log_dir)})
    places["dead letters"] = json.dumps(run["letters"])
    places["flink job config (REST)"] = run["job_config"]
    places["flink job exceptions (REST)"] = json.dumps(run["exceptions"])
    places[str(run["redis_log"])] = Path(run["redis_log"]).read_text(errors="replace")
    return places


def _leaks(places: dict[str, str], secret: str) -> dict[str, str]:
    """Where ``secret`` appears, with the text around it (the secret itself masked)."""
    out = {}
    for where, text in places.items():
        at = text.find(secret)
        if at >= 0:
            around = text[max(0, at - 120):at + len(secret) + 40]
            out[where] = around.replace(secret, "<SECRET>")
    return out


def test_redis_password_passes_through_and_never_leaks(hostile_run, svc, figures):
    """With AUTH on, --redis_url=redis://:PASSWORD@... works on Flink (features written), and
    the password is in no output, log, feature log, dead letter or REST job config."""
    assert hostile_run["features"], "nothing written with AUTH"
    places = _places(hostile_run, svc)
    leaks = _leaks(places, REDIS_PASSWORD)
    figures.update(places_scanned=len(places), redis_password_leaks=len(leaks))
    assert not leaks, leaks


def test_kafka_password_never_leaks(hostile_run, svc, figures):
    """A password in --kafka_config (JSON) reaches the Kafka clients and no log or output."""
    places = _places(hostile_run, svc)
    leaks = _leaks(places, KAFKA_PASSWORD)
    figures.update(places_scanned=len(places), kafka_password_leaks=len(leaks))
    assert not leaks, leaks


FUZZ_SPEC = StreamSpec(events=1_500, users=40, rate_per_s=100, disorder_ms=3_000,
                       late_fraction=0.0, seed=64)
FUZZ_HOSTILE = 10_000
FUZZ_SEED = 64


def spread(events: list[dict[str, Any]], values: list[bytes | None]) -> list[Any]:
    """The events with ``values`` spread evenly between them as raw records, keys
    alternately missing (None) and empty ("")."""
    items: list[Any] = []
    done = 0
    for n, event in enumerate(events, 1):
        upto = n * len(values) // len(events)
        items += [(values[i], "" if i % 2 else None) for i in range(done, upto)]
        items.append(event)
        done = upto
    return items


def expected_letter(value: bytes | None) -> tuple[str | None, str]:
    """(payload as the dead-letter topic shows it, reason) the decoder gives ``value``."""
    try:
        decode_confluent(value, SCHEMA, CATALOGUE)
    except InvalidEvent as e:
        payload = None if value is None else base64.b64encode(value).decode()
        return payload, str(e)
    raise AssertionError(f"not hostile: {value!r}")


@pytest.mark.slow
def test_ten_thousand_fuzzed_records_on_the_wire_are_dead_letters(svc, tmp_path, figures):
    """10,000 fuzzed Kafka values (mutated records, other schemas, huge varint lengths,
    tombstones, ...) among a live stream of valid events on Flink: the job never fails or
    restarts, each bad value is exactly one dead letter with the decoder's reason, and the
    features equal the reference of the valid events."""
    bad = hostile_wire_records(FUZZ_HOSTILE, seed=FUZZ_SEED)
    expected = Counter(expected_letter(v) for _, v in bad)
    topic, dead_topic = "faults-fuzz", "faults-fuzz-dead"
    svc.create_topic(topic, partitions=2)
    svc.create_topic(dead_topic, partitions=1)
    events = h.live_events("user", FUZZ_SPEC)
    items = spread(events, [v for _, v in bad])
    # The valid events go out at their event-time rate, as in a live stream.
    rate = FUZZ_SPEC.rate_per_s * len(items) / len(events)
    with h.RedisProcess(tmp_path, persist=False) as store:
        flags = h.pipeline_flags(topic, store.url(0), len(items),
                                 max(e["eventTimestamp"] for e in events) + 20_000, tmp_path,
                                 f"--dead_letter_topic={dead_topic}")
        run = h.PipelineRun(svc, "user", flags, tmp_path, "fuzz")
        jid = run.wait_running()
        sender = h.send_in_background(svc, topic, "user", items, rate)
        states = []
        while sender.is_alive():
            states.append(run.job_state())
            time.sleep(1)
        h.join_sender(sender)
        summary = run.finish()
        exceptions = _rest(svc.ports.flink_rest, f"/jobs/{jid}/exceptions")
        features = redis_features(store.client())
    letters = [json.loads(v) for v in h.consume_all(svc.ports.bootstrap_servers, dead_topic,
                                                    timeout_s=300)]
    got = Counter((d["payload"], d["reason"]) for d in letters)
    kinds = Counter(k for k, _ in bad)
    figures.update(fuzz_cases=len(bad), dead_letters_counted=len(letters),
                   valid_records=len(events), kinds=len(kinds),
                   tombstones=kinds["wire_null_value"], run_s=summary["seconds"])
    print(f"\nfuzz on the wire: {len(bad)} hostile records ({len(kinds)} kinds, "
          f"{kinds['wire_null_value']} tombstones) among {len(events)} events at "
          f"{rate:.0f} records/s; {len(letters)} dead letters; run {summary['seconds']} s, "
          f"{summary['flink.checkpoints_completed']} checkpoints; job states {set(states)}")
    assert set(states) == {"RUNNING"}, states
    assert not exceptions.get("exceptionHistory", {}).get("entries"), exceptions
    assert summary["kafka.records_committed"] == len(items)
    assert len(letters) == len(bad)
    assert all(d["reason"] for d in letters)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (list(missing.items())[:5], list(extra.items())[:5])
    assert features == h.reference_for("user")(events)
