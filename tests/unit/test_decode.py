"""Decoding and validation: JSON lines, Confluent wire format, Avro files."""

from __future__ import annotations

import functools
import io
import json
import math
import random
import re
import string
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import fastavro
import pytest
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from fastavro.validation import validate as avro_validate
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from transforms.decode import (
    DEAD,
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    EventSchema,
    InvalidEvent,
    Limits,
    SchemaCatalogue,
    _DecodeFn,
    decode_confluent,
    encode_confluent,
    parse_json_line,
)
from transforms.model import DeadLetter

USER_V1 = EventSchema(schemas.USER_EVENT_V1)
USER_V2 = EventSchema(schemas.USER_EVENT_V2)
RIDE = EventSchema(schemas.RIDE_EVENT)
GOOD = {"userId": "u1", "eventType": "click", "eventValue": 1.5, "eventTimestamp": 1_000}


def line(**changes):
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def test_valid_line_keeps_reader_fields_and_applies_defaults():
    event = parse_json_line(line(extra="ignored"), USER_V2)
    assert event == {**GOOD, "deviceType": None}


def test_int_is_a_valid_double_and_becomes_float():
    assert parse_json_line(line(eventValue=3), USER_V1)["eventValue"] == 3.0


@pytest.mark.parametrize("device, expected", [
    ("ios", "ios"), (None, None), ({"string": "ios"}, "ios"), ({"null": None}, None)])
def test_union_values_plain_or_avro_json_wrapped(device, expected):
    assert parse_json_line(line(deviceType=device), USER_V2)["deviceType"] == expected


@pytest.mark.parametrize("bad, reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ("42", "not an object"),
    ("", "empty line"),
    (line(eventType=...), "missing required field 'eventType'"),
    (line(eventValue="1.5"), "must be double, got string"),
    (line(eventValue=True), "must be double, got boolean"),
    (line(eventValue=None), "must be double, got null"),
    (line(userId=5), "must be string, got number"),
    (line(eventTimestamp=1.5), "must be long"),
    (line(eventTimestamp="1000"), "must be long, got string"),
    (line(eventTimestamp=2**63), "must be long"),
    (line(eventTimestamp=MAX_EVENT_MS + 1), "outside Beam's timestamp range"),
    (line(eventTimestamp=MIN_EVENT_MS - 1), "outside Beam's timestamp range"),
    ('{"userId": "u", "eventType": "c", "eventValue": NaN, "eventTimestamp": 1}', "finite"),
    ('{"userId": "u", "eventType": "c", "eventValue": -Infinity, "eventTimestamp": 1}',
     "finite"),
    ('{"userId": "u", "eventType": "c", "eventValue": 1e999, "eventTimestamp": 1}', "finite"),
    (line(deviceType=3), "must be null or string"),
    (line(userId=""), "'userId' is empty"),
    (line(userId=" \t"), "'userId' is empty"),
])
def test_bad_lines_are_invalid_with_a_reason(bad, reason):
    with pytest.raises(InvalidEvent, match=reason.replace("(", r"\(")):
        parse_json_line(bad, USER_V2)


def test_extremes_of_beams_range_are_valid():
    for ts in (MIN_EVENT_MS, MAX_EVENT_MS, -1, 0):
        assert parse_json_line(line(eventTimestamp=ts), USER_V1)["eventTimestamp"] == ts


def test_size_limits():
    small = EventSchema(schemas.USER_EVENT_V1, limits=Limits(max_record_bytes=100,
                                                             max_string_chars=10))
    with pytest.raises(InvalidEvent, match="larger than"):
        parse_json_line(line(userId="x" * 200), small)
    with pytest.raises(InvalidEvent, match="too long"):
        parse_json_line(line(userId="x" * 11), small)


def test_confluent_round_trip_and_v1_v2_resolution():
    catalogue = SchemaCatalogue()
    v2_bytes = encode_confluent({**GOOD, "deviceType": "ios"}, schemas.USER_EVENT_V2)
    assert v2_bytes[0] == 0 and struct.unpack(">I", v2_bytes[1:5])[0] == 2
    assert decode_confluent(v2_bytes, USER_V1, catalogue) == GOOD
    v1_bytes = encode_confluent(GOOD, schemas.USER_EVENT_V1)
    assert decode_confluent(v1_bytes, USER_V2, catalogue) == {**GOOD, "deviceType": None}


@pytest.mark.parametrize("mangle, reason", [
    (lambda b: b[:3], "truncated"),
    (lambda b: b"\x01" + b[1:], "wrong magic byte"),
    (lambda b: b[:1] + struct.pack(">I", 999) + b[5:],
     r"unknown schema id 999 \(not in schemas/catalogue.json\)"),
    (lambda b: b[:-3], "corrupt Avro body"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:1] + struct.pack(">I", 3) + b[5:], "corrupt|cannot be read"),
])
def test_bad_wire_records(mangle, reason):
    good = encode_confluent(GOOD, schemas.USER_EVENT_V1)
    with pytest.raises(InvalidEvent, match=reason):
        decode_confluent(mangle(good), USER_V1, SchemaCatalogue())


def test_ride_record_cannot_be_read_as_user_event():
    ride = {"rideId": "r", "userId": "u", "eventType": "END", "eventTimestamp": 1,
            "cityId": "ams", "amount": 2.0}
    with pytest.raises(InvalidEvent, match="cannot be read as UserInteractionEvent"):
        decode_confluent(encode_confluent(ride, schemas.RIDE_EVENT), USER_V1, SchemaCatalogue())


def test_non_finite_doubles_on_the_wire_are_invalid():
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 1))
    fastavro.schemaless_writer(buf, schemas.load_schema(schemas.USER_EVENT_V1),
                               {**GOOD, "eventValue": float("nan")})
    with pytest.raises(InvalidEvent, match="finite"):
        decode_confluent(buf.getvalue(), USER_V1, SchemaCatalogue())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(raw):
    try:
        decode_confluent(raw, RIDE, SchemaCatalogue())
    except InvalidEvent:
        pass


# --- Fuzzing the decode step -------------------------------------------------------
#
# A seeded generator mutates valid records of both dialects (Confluent wire format and
# JSON lines) and hands every case to the DoFn the pipeline runs (``_DecodeFn``), so a
# case that raised, hung or produced no output fails here exactly where it would hurt
# the job. ``hostile_wire_records`` reuses the generator for the on-the-wire fault test
# (tests/faults/test_hostile_input.py).

FUZZ_SEED = 20_261_121
FUZZ_CASES = 120_000
# Tight limits, so size-limit cases are cheap to build.
SMALL = EventSchema(schemas.USER_EVENT_V2,
                    limits=Limits(max_record_bytes=160, max_string_chars=24))
FUZZ_READERS = (USER_V1, USER_V2, RIDE, SMALL)
WRITERS = {1: schemas.USER_EVENT_V1, 2: schemas.USER_EVENT_V2, 3: schemas.RIDE_EVENT}
# Letters, digits, punctuation, whitespace, multi-byte UTF-8 (2, 3 and 4 bytes) and
# control characters; no lone surrogates (see test_lone_surrogate_in_json_is_a_dead_letter).
ALPHABET = (string.ascii_letters + string.digits + " -_.:/@\"\\{}[],"
            + "éßüçøñ" + "中文字" + "😀🚗" + "\x00\t\n\x7f" + "\u200b\u00a0\u2028")
WRONG_JSON: dict[str, tuple[Any, ...]] = {  # per Avro type: JSON values it must refuse
    "string": (0, -7, 1.5, True, False, None, [], ["u1"], {}, {"a": 1, "b": 2}),
    "double": ("1.5", "NaN", True, False, None, [], [1.0], {"double": 1.0}, {}),
    "long": ("1000", 1.5, 1000.0, True, None, [], [1], {"long": 1}, 2**63, -(2**63) - 1),
    "null|string": (3, 1.5, True, [], ["ios"], {"int": 3}, {"string": 5},
                    {"string": "a", "null": None}),
}


class FuzzCase(NamedTuple):
    """One generated input.

    Attributes:
        kind: the generator that made it (a mutation, or ``*_valid``).
        dialect: ``wire`` (Confluent Avro) or ``json`` (a JSON line).
        payload: what the decoder gets.
        reader: the reader schema it is decoded with.
        must_fail: provably not a valid event (it has to become a dead letter).
    """

    kind: str
    dialect: str
    payload: bytes | str | None
    reader: EventSchema
    must_fail: bool


def avro_long(n: int) -> bytes:
    """Avro's zig-zag varint of ``n`` (any size: larger than 64 bits makes an over-long
    varint)."""
    u = 2 * n if n >= 0 else -2 * n - 1
    out = bytearray()
    while u > 0x7F:
        out.append(u & 0x7F | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def avro_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return avro_long(len(raw)) + raw


def wire_header(schema_id: int, magic: int = 0) -> bytes:
    return struct.pack(">BI", magic, schema_id & 0xFFFFFFFF)


def field_types(reader: EventSchema) -> dict[str, str]:
    """Field name -> its Avro type(s), ``|``-joined (``null|string``)."""
    return {f["name"]: "|".join(f["type"]) if isinstance(f["type"], list) else f["type"]
            for f in schemas.raw_schema(reader.schema_file)["fields"]}


class DecoderFuzzer:
    """Seeded generator of decoder inputs: valid records and mutations of them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        # Every method named wire_* or json_* makes one kind of case, chosen uniformly.
        self.kinds = sorted(n for n in dir(type(self)) if n.startswith(("wire_", "json_")))
        self._makers: list[Callable[[], FuzzCase]] = [getattr(self, n) for n in self.kinds]

    # -- building blocks --------------------------------------------------------------

    def text(self, lo: int, hi: int) -> str:
        return "".join(self.rng.choices(ALPHABET, k=self.rng.randint(lo, hi)))

    def entity(self) -> str:
        return self.rng.choice(("u", "user-", "ü", "中")) + self.text(0, 10)

    def finite(self) -> float:
        r = self.rng
        pick = r.randrange(9)
        if pick < 3:
            return r.uniform(-1e6, 1e6)
        if pick == 3:
            return float(r.randrange(1000))
        return (0.0, -0.0, 5e-324, 1.7976931348623157e308, -1e308)[pick - 4]

    def timestamp(self) -> int:
        r = self.rng
        pick = r.randrange(8)
        if pick < 3:
            return 1_767_225_600_000 + r.randrange(-10**9, 10**9)
        if pick == 3:
            return r.randint(MIN_EVENT_MS, MAX_EVENT_MS)
        return (MIN_EVENT_MS, MAX_EVENT_MS, 0, -1)[pick - 4]

    def out_of_range_timestamp(self) -> int:
        r = self.rng
        pick = r.randrange(6)
        if pick == 0:
            return r.randint(-(2**63), MIN_EVENT_MS - 1)
        if pick == 1:
            return r.randint(MAX_EVENT_MS + 1, 2**63 - 1)
        return (-(2**63), 2**63 - 1, MIN_EVENT_MS - 1, MAX_EVENT_MS + 1)[pick - 2]

    def event(self, schema_id: int) -> dict[str, Any]:
        """A valid event of the writer schema ``schema_id`` (1, 2: user; 3: ride)."""
        r = self.rng
        if schema_id == 3:
            return {"rideId": "r" + self.text(0, 10), "userId": self.entity(),
                    "eventType": r.choice(("START", "END", "CANCEL")),
                    "eventTimestamp": self.timestamp(), "cityId": r.choice(("ams", "nyc", "")),
                    "amount": self.finite()}
        event = {"userId": self.entity(),
                 "eventType": r.choice(("click", "view", "purchase", self.text(0, 8))),
                 "eventValue": self.finite(), "eventTimestamp": self.timestamp()}
        if schema_id == 2:
            event["deviceType"] = r.choice((None, "ios", "android", self.text(0, 8)))
        return event

    def reader(self) -> EventSchema:
        return self.rng.choice(FUZZ_READERS)

    def valid_wire(self) -> tuple[int, bytes]:
        sid = self.rng.randint(1, 3)
        return sid, encode_confluent(self.event(sid), WRITERS[sid])

    def user_reader(self) -> EventSchema:
        return self.rng.choice((USER_V1, USER_V2, SMALL))

    def wire(self, kind: str, payload: bytes | None, must_fail: bool,
             reader: EventSchema | None = None) -> FuzzCase:
        return FuzzCase("wire_" + kind, "wire", payload, reader or self.reader(), must_fail)

    def json(self, kind: str, payload: bytes | str, must_fail: bool,
             reader: EventSchema | None = None) -> FuzzCase:
        return FuzzCase("json_" + kind, "json", payload, reader or self.reader(), must_fail)

    def flip_bits(self, raw: bytes, start: int = 0) -> bytes:
        out = bytearray(raw)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(start, len(out))
            out[i] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def splice(self, raw: bytes, start: int) -> bytes:
        """Inserts, deletes or overwrites a few bytes at or after ``start``."""
        r = self.rng
        at = r.randint(start, len(raw))
        how = r.randrange(3)
        if how == 0:
            return raw[:at] + r.randbytes(r.randint(1, 8)) + raw[at:]
        if how == 1:
            return raw[:at] + raw[at + r.randint(1, 8):]
        chunk = r.randbytes(r.randint(1, 3))
        return raw[:at] + chunk + raw[at + len(chunk):]

    # -- Confluent wire format ----------------------------------------------------------

    def wire_valid(self) -> FuzzCase:
        return self.wire("valid", self.valid_wire()[1], False)

    def wire_bit_flip(self) -> FuzzCase:
        return self.wire("bit_flip", self.flip_bits(self.valid_wire()[1]), False)

    def wire_body_splice(self) -> FuzzCase:
        return self.wire("body_splice", self.splice(self.valid_wire()[1], 5), False)

    def wire_truncated(self) -> FuzzCase:
        # Avro's binary encoding is prefix-free: no strict prefix is a whole record, not
        # even one cut inside a writer field the reader skips (which fastavro skips by its
        # length without checking that its bytes are there).
        sid = self.rng.randint(1, 3)
        raw = encode_confluent(self.event(sid), WRITERS[sid])
        cut, reader = self.rng.randrange(len(raw)), self.reader()
        return self.wire("truncated", raw[:cut], True, reader)

    def wire_extended(self) -> FuzzCase:
        raw = self.valid_wire()[1]
        return self.wire("extended", raw + self.rng.randbytes(self.rng.randint(1, 32)), True)

    def wire_wrong_magic(self) -> FuzzCase:
        raw = self.valid_wire()[1]
        return self.wire("wrong_magic", bytes([self.rng.randint(1, 255)]) + raw[1:], True)

    def wire_unknown_schema_id(self) -> FuzzCase:
        sid = self.rng.choice((0, 4, self.rng.randint(5, 2**31 - 1)))
        return self.wire("unknown_schema_id", wire_header(sid) + self.valid_wire()[1][5:], True)

    def wire_negative_schema_id(self) -> FuzzCase:
        raw = self.valid_wire()[1]
        sid = self.rng.choice((-1, -(2**31), self.rng.randint(-(2**31), -1)))
        return self.wire("negative_schema_id", raw[:1] + struct.pack(">i", sid) + raw[5:], True)

    def wire_random_bytes(self) -> FuzzCase:
        return self.wire("random_bytes", self.rng.randbytes(self.rng.randint(0, 80)), False)

    def wire_random_body(self) -> FuzzCase:
        body = self.rng.randbytes(self.rng.randint(0, 60))
        return self.wire("random_body", wire_header(self.rng.randint(1, 3)) + body, False)

    def wire_other_schemas_body(self) -> FuzzCase:
        """Valid Avro of one schema behind another schema's id."""
        body_sid, raw = self.valid_wire()
        sid = self.rng.choice([s for s in WRITERS if s != body_sid])
        # A v1 body read as v2 ends before deviceType; a v2 body read as v1 leaves it over.
        return self.wire("other_schemas_body", wire_header(sid) + raw[5:],
                         {body_sid, sid} == {1, 2})

    def wire_unreadable_writer(self) -> FuzzCase:
        """Valid Avro whose writer schema the reader cannot resolve (ride vs user)."""
        if self.rng.random() < 0.5:
            return self.wire("unreadable_writer", encode_confluent(self.event(3), WRITERS[3]),
                             True, self.user_reader())
        sid = self.rng.randint(1, 2)
        return self.wire("unreadable_writer", encode_confluent(self.event(sid), WRITERS[sid]),
                         True, RIDE)

    def user_body(self, event: dict[str, Any]) -> list[bytes]:
        """The fields of a v2 user record, encoded by hand (so each can be broken)."""
        device = event.get("deviceType")
        return [avro_string(event["userId"]), avro_string(event["eventType"]),
                struct.pack("<d", event["eventValue"]), avro_long(event["eventTimestamp"]),
                avro_long(0) if device is None else avro_long(1) + avro_string(device)]

    def wire_huge_length(self) -> FuzzCase:
        """A string whose length varint claims more than the record holds, or is negative."""
        r = self.rng
        event = self.event(2)
        fields = self.user_body(event)
        at = r.randint(0, 1)
        length = r.choice((r.randint(10**3, 2**62), 2**63 - 1, r.randint(-(2**63), -1), -1))
        fields[at] = avro_long(length) + event["userId" if at == 0 else "eventType"].encode()
        return self.wire("huge_length", wire_header(2) + b"".join(fields), True,
                         self.user_reader())

    def wire_bad_union_index(self) -> FuzzCase:
        """deviceType's union branch outside {0, 1}: huge, negative or just past the end
        (fastavro reads -1 as the last branch)."""
        r = self.rng
        fields = self.user_body(self.event(2))
        index = r.choice((2, 3, -1, -2, r.randint(4, 2**62), r.randint(-(2**63), -3)))
        fields[4] = avro_long(index) + (avro_string("ios") if r.random() < 0.5 else b"")
        return self.wire("bad_union_index", wire_header(2) + b"".join(fields), True,
                         self.user_reader())

    def wire_overlong_varint(self) -> FuzzCase:
        """eventTimestamp as a varint of 11 to 20 bytes (Avro allows 10; fastavro wraps the
        value)."""
        fields = self.user_body(self.event(1))[:3]
        body = b"".join(fields) + avro_long(self.rng.randint(2**64, 2**130))
        return self.wire("overlong_varint", wire_header(1) + body, True, self.user_reader())

    def wire_non_finite_double(self) -> FuzzCase:
        sid = self.rng.randint(1, 3)
        e = self.event(sid)
        e["amount" if sid == 3 else "eventValue"] = self.rng.choice(
            (math.nan, math.inf, -math.inf, -math.nan))
        return self.wire("non_finite_double", encode_confluent(e, WRITERS[sid]), True)

    def wire_timestamp_out_of_range(self) -> FuzzCase:
        sid = self.rng.randint(1, 3)
        e = {**self.event(sid), "eventTimestamp": self.out_of_range_timestamp()}
        return self.wire("timestamp_out_of_range", encode_confluent(e, WRITERS[sid]), True)

    def wire_blank_entity(self) -> FuzzCase:
        sid = self.rng.randint(1, 3)
        e = {**self.event(sid), "userId": self.rng.choice(("", " ", "\t\n", "\u00a0 "))}
        return self.wire("blank_entity", encode_confluent(e, WRITERS[sid]), True)

    def wire_string_too_long(self) -> FuzzCase:
        e = self.event(2)
        if self.rng.random() < 0.002:  # beyond the default limit (65536 chars): rare, large
            e["eventType"] = "x" * self.rng.randint(Limits.max_string_chars + 1,
                                                   Limits.max_string_chars + 512)
            return self.wire("string_too_long", encode_confluent(e, WRITERS[2]), True,
                             self.rng.choice((USER_V1, USER_V2)))
        e[self.rng.choice(("userId", "eventType", "deviceType"))] = "y" * self.rng.randint(25, 120)
        return self.wire("string_too_long", encode_confluent(e, WRITERS[2]), True, SMALL)

    def wire_record_too_large(self) -> FuzzCase:
        if self.rng.random() < 0.002:  # beyond the default 1 MiB: rare, large
            raw = self.valid_wire()[1]
            return self.wire("record_too_large", raw + bytes(Limits.max_record_bytes), True,
                             self.rng.choice((USER_V1, USER_V2, RIDE)))
        e = {**self.event(2), "eventType": "t" * 20, "deviceType": "d" * 20,
             "userId": "u" * self.rng.randint(100, 140)}
        return self.wire("record_too_large", encode_confluent(e, WRITERS[2]), True, SMALL)

    def wire_null_value(self) -> FuzzCase:
        return self.wire("null_value", None, True)

    def wire_short_header(self) -> FuzzCase:
        return self.wire("short_header", self.valid_wire()[1][:self.rng.randint(0, 4)], True)

    # -- JSON lines ---------------------------------------------------------------------

    def dump(self, record: Any) -> str:
        return json.dumps(record, ensure_ascii=False)

    def event_for(self, reader: EventSchema) -> dict[str, Any]:
        """A valid event for ``reader`` (ride or user)."""
        if reader is RIDE:
            return self.event(3)
        return self.event(self.rng.randint(1, 2))

    def json_valid(self) -> FuzzCase:
        reader = self.reader()
        return self.json("valid", self.dump(self.event_for(reader)), False, reader)

    def json_other_pipelines_event(self) -> FuzzCase:
        reader = self.reader()
        event = self.event(self.rng.randint(1, 2) if reader is RIDE else 3)
        return self.json("other_pipelines_event", self.dump(event), True, reader)

    def json_wrong_type(self) -> FuzzCase:
        reader = self.reader()
        event = self.event_for(reader)
        name, kind = self.rng.choice(list(field_types(reader).items()))
        event[name] = self.rng.choice(WRONG_JSON[kind])
        return self.json("wrong_type", self.dump(event), True, reader)

    def json_union_wrapped(self) -> FuzzCase:
        """deviceType in Avro's JSON encoding ({"string": ...}), valid or not."""
        reader = self.rng.choice((USER_V2, SMALL))
        event = self.event(2)
        event["deviceType"] = self.rng.choice(({"string": "ios"}, {"null": None},
                                               {"string": None}, {"null": "ios"}, {"long": 1}))
        return self.json("union_wrapped", self.dump(event), False, reader)

    def json_non_finite(self) -> FuzzCase:
        reader = self.reader()
        line = self.dump(self.event_for(reader))
        name = self.rng.choice(("eventTimestamp",) if reader is RIDE
                               else ("eventTimestamp", "eventValue"))
        token = self.rng.choice(("NaN", "Infinity", "-Infinity", "1e999", "-1e400"))
        return self.json("non_finite", self.set_json_token(line, name, token), True, reader)

    def set_json_token(self, line: str, name: str, token: str) -> str:
        """``line`` with the value of ``name`` replaced by a raw JSON token."""
        record = json.loads(line)
        record[name] = "@@TOKEN@@"
        return self.dump(record).replace('"@@TOKEN@@"', token)

    def json_timestamp_out_of_range(self) -> FuzzCase:
        reader = self.reader()
        line = self.dump(self.event_for(reader))
        r = self.rng
        token = r.choice((str(self.out_of_range_timestamp()), str(r.randint(2**64, 2**200)),
                          "1" + "0" * r.randint(19, 4000), "1.5", "1e30", "-0.0", "1000.0"))
        return self.json("timestamp_out_of_range",
                         self.set_json_token(line, "eventTimestamp", token), True, reader)

    def json_huge_number(self) -> FuzzCase:
        """Integers past Python's 4300-digit parsing limit, in any field."""
        reader = self.reader()
        line = self.dump(self.event_for(reader))
        name = self.rng.choice(list(field_types(reader)))
        token = "9" * self.rng.randint(4301, 6000)
        return self.json("huge_number", self.set_json_token(line, name, token), True, reader)

    def json_missing_field(self) -> FuzzCase:
        reader = self.reader()
        event = self.event_for(reader)
        required = [f["name"] for f in schemas.raw_schema(reader.schema_file)["fields"]
                    if "default" not in f]
        del event[self.rng.choice(required)]
        return self.json("missing_field", self.dump(event), True, reader)

    def json_not_an_object(self) -> FuzzCase:
        r = self.rng
        value = r.choice(([self.event(1)], "u1", 42, 1.5, None, True, [], [1, 2]))
        return self.json("not_an_object", json.dumps(value), True)

    def json_deep_nesting(self) -> FuzzCase:
        depth = self.rng.choice((self.rng.randint(2, 50), self.rng.randint(5_000, 100_000)))
        nested = "[" * depth + "]" * depth
        if self.rng.random() < 0.5:
            return self.json("deep_nesting", nested, True)
        reader = self.reader()
        line = self.set_json_token(self.dump(self.event_for(reader)), "userId", nested)
        return self.json("deep_nesting", line, True, reader)

    def json_blank_entity(self) -> FuzzCase:
        reader = self.reader()
        event = {**self.event_for(reader), "userId": self.rng.choice(("", " ", "\t", "\u3000"))}
        return self.json("blank_entity", self.dump(event), True, reader)

    def json_string_too_long(self) -> FuzzCase:
        event = {**self.event(2), "eventType": "z" * self.rng.randint(25, 100)}
        return self.json("string_too_long", self.dump(event), True, SMALL)

    def json_line_too_large(self) -> FuzzCase:
        event = {**self.event(2), "padding": " " * self.rng.randint(160, 400)}
        return self.json("line_too_large", self.dump(event), True, SMALL)

    def json_blank_line(self) -> FuzzCase:
        return self.json("blank_line", self.rng.choice(("", " ", "\n", "\t \r\n", b"", b" ")),
                         True)

    def json_bit_flip(self) -> FuzzCase:
        reader = self.reader()
        raw = self.dump(self.event_for(reader)).encode()
        return self.json("bit_flip", self.flip_bits(raw), False, reader)

    def json_text_splice(self) -> FuzzCase:
        reader = self.reader()
        raw = self.dump(self.event_for(reader)).encode()
        return self.json("text_splice", self.splice(raw, 0), False, reader)

    def json_truncated(self) -> FuzzCase:
        reader = self.reader()
        line = self.dump(self.event_for(reader))
        return self.json("truncated", line[:self.rng.randrange(len(line))], True, reader)

    def json_random_bytes(self) -> FuzzCase:
        return self.json("random_bytes", self.rng.randbytes(self.rng.randint(1, 80)), False)

    # -- the stream ---------------------------------------------------------------------

    def cases(self, n: int) -> Iterator[FuzzCase]:
        for _ in range(n):
            yield self.rng.choice(self._makers)()


CATALOGUE = SchemaCatalogue()


def decode_step(dialect: str, reader: EventSchema) -> _DecodeFn:
    """The DoFn the pipeline runs for ``dialect`` (DecodeConfluentAvro / DecodeJsonLines)."""
    if dialect == "wire":
        parse = functools.partial(decode_confluent, schema=reader, catalogue=CATALOGUE)
    else:
        parse = functools.partial(parse_json_line, schema=reader)
    return _DecodeFn(parse, reader, f"fuzz-{dialect}")


def check_outcome(case: FuzzCase, outputs: list[Any]) -> tuple[str, str | None]:
    """(``event`` or ``dead``, a problem or None) for what the decode step made of ``case``."""
    if len(outputs) != 1:
        return "dropped", f"{len(outputs)} outputs instead of 1"
    (out,) = outputs
    if isinstance(out, pvalue.TaggedOutput):
        letter = out.value
        if out.tag != DEAD or not isinstance(letter, DeadLetter):
            return "dead", f"tagged output {out.tag!r}: {letter!r}"
        if not isinstance(letter.reason, str) or not letter.reason.strip():
            return "dead", f"dead letter without a reason: {letter!r}"
        if letter.payload is not case.payload:
            return "dead", "the dead letter does not carry the raw payload"
        return "dead", None
    if not isinstance(out, TimestampedValue):
        return "event", f"neither an event nor a dead letter: {out!r}"
    event, reader = out.value, case.reader
    if case.must_fail:
        return "event", f"an invalid record became an event: {event!r}"
    if list(event) != list(field_types(reader)):
        return "event", f"fields {list(event)} are not the reader schema's"
    if reader.validate(dict(event)) != event:
        return "event", f"the pipeline's validation changes or refuses it: {event!r}"
    if not avro_validate(event, reader.parsed, raise_errors=False):
        return "event", f"not a valid {reader.name} for Avro: {event!r}"
    if out.timestamp != Timestamp(micros=event[reader.time_field] * 1000):
        return "event", f"timestamped {out.timestamp}, not at its {reader.time_field}"
    for name, value in event.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # Redis keys, the feature log, Kafka
            except UnicodeEncodeError:
                return "event", f"field {name!r} is not encodable as UTF-8: {value!r}"
    return "event", None


def reason_shape(reason: str) -> str:
    """A dead-letter reason with its numbers and details left out (to count kinds)."""
    return re.sub(r"-?\d+", "N", reason.split(":")[0])[:60]


@pytest.mark.timeout(300)
def test_fuzz_decoder_every_case_is_an_event_or_a_dead_letter():
    """Over 100,000 seeded cases (mutated wire records and JSON lines) through the decode
    DoFn: each yields exactly one output, a valid event or a dead letter with a reason;
    none raises, none hangs."""
    fuzzer = DecoderFuzzer(FUZZ_SEED)
    steps = {(d, id(r)): decode_step(d, r) for d in ("wire", "json") for r in FUZZ_READERS}
    outcomes: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    problems: list[str] = []
    slowest = (0.0, "")
    started = time.perf_counter()
    for case in fuzzer.cases(FUZZ_CASES):
        step = steps[(case.dialect, id(case.reader))]
        t0 = time.perf_counter()
        try:
            outputs = list(step.process(case.payload))
        except Exception as e:  # noqa: BLE001 (the failure this test exists to find)
            outputs, raised = [], e
        else:
            raised = None
        took = time.perf_counter() - t0
        slowest = max(slowest, (took, case.kind))
        if raised is not None:
            outcome, problem = "raised", f"raised {type(raised).__name__}: {raised}"
        else:
            outcome, problem = check_outcome(case, outputs)
        outcomes[(case.kind, outcome)] += 1
        if outcome == "dead" and problem is None:
            reasons[reason_shape(outputs[0].value.reason)] += 1
        if problem and len(problems) < 20:
            payload = case.payload if not isinstance(case.payload, (bytes, str)) or len(
                case.payload) < 300 else case.payload[:300]
            problems.append(f"{case.kind} ({case.reader.schema_file}): {problem}; "
                            f"payload {payload!r}")
    seconds = time.perf_counter() - started
    total = sum(outcomes.values())
    dead = sum(n for (_, o), n in outcomes.items() if o == "dead")
    events = sum(n for (_, o), n in outcomes.items() if o == "event")
    print(f"\ndecoder fuzz: {total} cases in {seconds:.1f} s: {dead} dead letters, "
          f"{events} events, {total - dead - events} other; {len(fuzzer.kinds)} kinds; "
          f"slowest case {slowest[0] * 1000:.1f} ms ({slowest[1]})")
    for kind in fuzzer.kinds:
        print(f"  {kind:32s} dead {outcomes[(kind, 'dead')]:5d}  event "
              f"{outcomes[(kind, 'event')]:5d}")
    print(f"  {len(reasons)} kinds of reason, most common: "
          + "; ".join(f"{r} x{n}" for r, n in reasons.most_common(8)))

    assert total >= 100_000
    assert not problems, "\n".join(problems)
    assert dead + events == total
    assert events >= total // 100 and dead >= total // 2, (events, dead)
    assert all(outcomes[(kind, "dead")] + outcomes[(kind, "event")] for kind in fuzzer.kinds)
    assert len(reasons) >= 20, reasons
    assert slowest[0] < 2.0, slowest


def test_fuzzer_is_deterministic():
    first = [c.payload for c in DecoderFuzzer(7).cases(200)]
    assert first == [c.payload for c in DecoderFuzzer(7).cases(200)]


# GOOD's userId, eventType and eventValue, Avro-encoded by hand; eventTimestamp follows.
GOOD_HEAD = avro_string("u1") + avro_string("click") + struct.pack("<d", 1.5)


@pytest.mark.parametrize("raw, reader", [
    # A v2 record cut inside deviceType: fastavro skips the field for a v1 reader
    # without checking that its bytes are there.
    (encode_confluent({**GOOD, "deviceType": "android"}, schemas.USER_EVENT_V2)[:-3],
     USER_V1),
    # An 11-byte varint (Avro longs take at most 10): fastavro wraps it (2**70 -> 32).
    (wire_header(1) + GOOD_HEAD + avro_long(2**70), USER_V1),
    # Union branch -1: fastavro indexes the branch list from the end (-> "string").
    (wire_header(2) + GOOD_HEAD + avro_long(1_000) + avro_long(-1) + avro_string("ios"),
     USER_V2),
], ids=["cut_inside_skipped_field", "overlong_varint", "negative_union_branch"])
def test_malformed_avro_that_fastavro_accepts_is_a_dead_letter(raw, reader):
    writer = SchemaCatalogue().writer_schema(struct.unpack(">I", raw[1:5])[0])
    lenient = fastavro.schemaless_reader(io.BytesIO(raw[5:]), writer, reader.parsed)
    assert reader.validate(lenient)  # fastavro makes a valid event of it
    with pytest.raises(InvalidEvent, match="corrupt Avro body"):
        decode_confluent(raw, reader, SchemaCatalogue())


def test_lone_surrogate_in_json_is_a_dead_letter():
    with pytest.raises(InvalidEvent):
        parse_json_line(line(userId="\ud800x"), USER_V2)


def hostile_wire_records(n: int, seed: int = FUZZ_SEED, reader: EventSchema = USER_V2,
                         max_bytes: int = 100_000) -> list[tuple[str, bytes | None]]:
    """``n`` generated Kafka values (kind, value) that ``reader`` rejects (each is one
    dead letter), at most ``max_bytes`` long; a value of None is a tombstone."""
    fuzzer = DecoderFuzzer(seed)
    found: list[tuple[str, bytes | None]] = []
    while len(found) < n:
        case = fuzzer.rng.choice([m for m in fuzzer.kinds if m.startswith("wire_")])
        value = getattr(fuzzer, case)().payload
        assert value is None or isinstance(value, bytes)
        if value is not None and len(value) > max_bytes:
            continue
        try:
            decode_confluent(value, reader, CATALOGUE)
        except InvalidEvent:
            found.append((case, value))
    return found
