"""Decoding and validation: JSON lines, Confluent wire format, Avro files."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from transforms.decode import (
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    EventSchema,
    InvalidEvent,
    Limits,
    SchemaCatalogue,
    decode_confluent,
    encode_confluent,
    parse_json_line,
)

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
    (lambda b: b[:1] + struct.pack(">I", 999) + b[5:], "unknown schema id 999"),
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
