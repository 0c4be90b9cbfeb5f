"""The compiled Avro reader against fastavro: the same records wherever a body is
well formed, and never a record where fastavro reads something else."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.avro import AvroError, compile_reader

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "string", "bytes")
# writer type -> reader types it may be read as (Avro's promotions)
PROMOTIONS = {"int": ("long", "float", "double"), "long": ("float", "double"),
              "float": ("double",), "string": ("bytes",), "bytes": ("string",)}


def values(kind: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(), "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False), "double": st.floats(allow_nan=False),
        "string": st.text(max_size=20), "bytes": st.binary(max_size=20),
    }[kind]


@st.composite
def schemas_and_record(draw: st.DrawFn) -> tuple[dict, dict, dict]:
    """A writer schema, a record of it, and a reader schema it resolves to: some of the
    writer's fields (any order; the same type, a promotion, or a union holding either),
    and fields the writer lacks, with defaults."""
    n = draw(st.integers(1, 6))
    writer_fields, record = [], {}
    for i in range(n):
        if draw(st.booleans()):
            kind: Any = draw(st.sampled_from(PRIMITIVES))
            record[f"f{i}"] = draw(values(kind))
        else:
            # Not both string and bytes: reading one as the union, fastavro takes the first
            # of them when it resolves a writer against a reader, the written one when not.
            kind = draw(st.lists(st.sampled_from(PRIMITIVES), min_size=2, max_size=3,
                                 unique=True).filter(lambda k: not {"string", "bytes"} <= {*k}))
            record[f"f{i}"] = draw(values(draw(st.sampled_from(kind))))
        writer_fields.append({"name": f"f{i}", "type": kind})
    reader_fields = []
    for field in draw(st.permutations(writer_fields)):
        if draw(st.integers(0, 3)) == 0:
            continue  # the reader does not have it: skipped
        kind = field["type"]
        if isinstance(kind, str):
            value = record[field["name"]]
            promoted = [k for k in PROMOTIONS.get(kind, ()) if k != "string" or utf8(value)]
            kind = draw(st.sampled_from((kind, *promoted)))
            if draw(st.booleans()) and kind != "null":
                kind = ["null", kind]
        reader_fields.append({"name": field["name"], "type": kind})
    for j in range(draw(st.integers(0, 2))):
        reader_fields.append({"name": f"new{j}", "type": "long", "default": j})
    return ({"type": "record", "name": "E", "fields": writer_fields},
            {"type": "record", "name": "E", "fields": reader_fields}, record)


def utf8(value: bytes | str) -> bool:
    try:
        value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return False
    return True


def encoded(schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def fastavro_read(body: bytes, writer: dict, reader: dict) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(writer),
                                      fastavro.parse_schema(reader))


@settings(max_examples=400, deadline=None)
@given(schemas_and_record())
def test_well_formed_bodies_read_as_fastavro_reads_them(case):
    writer, reader, record = case
    body = encoded(writer, record)
    read = compile_reader(writer, reader)
    assert read is not None
    assert read(body, 0) == (fastavro_read(body, writer, reader), len(body))


@settings(max_examples=400, deadline=None)
@given(schemas_and_record(), st.data())
def test_a_mangled_body_is_refused_or_read_as_fastavro_reads_it(case, data):
    writer, reader, record = case
    body = bytearray(encoded(writer, record))
    if not body:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, len(body)))
    body = bytes(body[:cut])
    try:
        record, end = compile_reader(writer, reader)(body, 0)
    except AvroError:
        return
    if end == len(body):  # else a caller refuses the trailing bytes
        assert same(record, fastavro_read(body, writer, reader))


def same(a: dict, b: dict) -> bool:
    """Equal records, NaN equal to NaN (a flipped bit can make one)."""
    return repr(sorted(a.items())) == repr(sorted(b.items()))


USER = {"type": "record", "name": "U", "fields": [
    {"name": "id", "type": "string"}, {"name": "ts", "type": "long"},
    {"name": "tag", "type": ["null", "string"]}]}


@pytest.mark.parametrize("body, problem", [
    (b"\x02a" + b"\xff" * 10 + b"\x01\x00", "a varint of more than 10 bytes"),
    (b"\x02a\x02\x01", "union branch -1 of 2"),
    (b"\x02a\x02\x04", "union branch 2 of 2"),
    (b"\x02a\x02\x02\x08ab", "a string of 4 bytes at 5 runs past the end"),
    (b"\x03a\x02\x00", "a string of -2 bytes"),
    (b"\x04\xff\xfe\x02\x00", "not UTF-8"),
    (b"\x02a", "a varint runs past the end"),
])
def test_what_fastavro_lets_through_or_misreads_is_refused(body, problem):
    with pytest.raises(AvroError, match=problem):
        compile_reader(USER, USER)(body, 0)


def test_a_skipped_field_is_read_through_not_skipped_by_its_length():
    reader = {"type": "record", "name": "U", "fields": USER["fields"][:2]}
    body = encoded(USER, {"id": "a", "ts": 5, "tag": "android"})
    assert compile_reader(USER, reader)(body, 0) == ({"id": "a", "ts": 5}, len(body))
    with pytest.raises(AvroError, match="runs past the end"):
        compile_reader(USER, reader)(body[:-3], 0)
    assert fastavro_read(body[:-3], USER, reader) == {"id": "a", "ts": 5}  # fastavro: no error


def test_a_boolean_byte_other_than_0_or_1_is_refused():
    schema = {"type": "record", "name": "B", "fields": [{"name": "b", "type": "boolean"}]}
    assert compile_reader(schema, schema)(b"\x01", 0) == ({"b": True}, 1)
    with pytest.raises(AvroError, match="neither 0 nor 1"):
        compile_reader(schema, schema)(b"\x02", 0)


def test_an_int_is_at_most_32_bits_and_a_double_needs_8_bytes():
    schema = {"type": "record", "name": "N", "fields": [
        {"name": "i", "type": "int"}, {"name": "d", "type": "double"}]}
    with pytest.raises(AvroError, match="outside 32 bits"):
        compile_reader(schema, schema)(b"\x80\x80\x80\x80\x10" + struct.pack("<d", 1.0), 0)
    with pytest.raises(AvroError, match="8 bytes at 1 run past the end"):
        compile_reader(schema, schema)(b"\x02" + b"\x00" * 7, 0)


@pytest.mark.parametrize("writer, reader, why", [
    (USER, {**USER, "name": "Other"}, "another record name"),
    ({**USER, "fields": [{"name": "id", "type": {"type": "array", "items": "long"}}]},
     {**USER, "fields": [{"name": "id", "type": {"type": "array", "items": "long"}}]},
     "a nested type"),
    ({**USER, "fields": [{"name": "ts", "type": {"type": "long",
                                                 "logicalType": "timestamp-millis"}}]},
     {**USER, "fields": [{"name": "ts", "type": "long"}]}, "a logical type"),
    (USER, {**USER, "fields": [*USER["fields"], {"name": "x", "type": "long"}]},
     "a reader field without a default the writer lacks"),
    (USER, {**USER, "fields": [{"name": "id", "type": "long"}]}, "a string read as long"),
    (USER, {**USER, "fields": [{"name": "id", "type": "string", "aliases": ["key"]}]},
     "aliases"),
])
def test_what_it_does_not_handle_is_left_to_fastavro(writer, reader, why):
    assert compile_reader(writer, reader) is None, why
