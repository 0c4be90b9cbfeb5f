"""A strict Avro binary reader for records of primitive fields, resolved writer -> reader.

fastavro's ``schemaless_reader`` costs about 6 microseconds a call for a
four-field record, most of it per call rather than per byte, and it is
lenient where a feature pipeline must not be: a varint of more than ten
bytes wraps around, a union branch of -1 picks the last branch, and a
writer field the reader does not have is skipped by its length without
checking that its bytes are there. ``compile_reader`` resolves a writer
schema against a reader schema once and returns a function that decodes a
body in about half the time and refuses every one of those records.

It handles what event schemas here are made of: a record whose fields are
primitives or unions of primitives, matched by name, with Avro's promotions
(int -> long, float, double; long -> float, double; float -> double;
string <-> bytes) and the reader's defaults for fields the writer lacks.
Anything else (nested types, logical types, aliases, another record name, a
field that cannot be resolved) is not compiled: ``compile_reader`` returns
None and the caller keeps fastavro, which reads or refuses it as before.

>>> import io, fastavro
>>> writer = {"type": "record", "name": "E", "fields": [
...     {"name": "id", "type": "string"}, {"name": "n", "type": "int"},
...     {"name": "tag", "type": ["null", "string"]}]}
>>> reader = {"type": "record", "name": "E", "fields": [
...     {"name": "id", "type": "string"}, {"name": "n", "type": "double"},
...     {"name": "extra", "type": "long", "default": 7}]}
>>> out = io.BytesIO()
>>> fastavro.schemaless_writer(out, writer, {"id": "a", "n": 3, "tag": "x"})
>>> compile_reader(writer, reader)(out.getvalue(), 0)
({'extra': 7, 'id': 'a', 'n': 3.0}, 6)
>>> try:
...     compile_reader(writer, reader)(out.getvalue()[:-1], 0)
... except AvroError as e:
...     print(e)
truncated: a string of 1 bytes at 5 runs past the end (5)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

# A field reader: (buffer, position) -> (value, position after it).
FieldReader = Callable[[bytes, int], tuple[Any, int]]
RecordReader = Callable[[bytes, int], tuple[dict[str, Any], int]]

_LONG_BYTES = 10  # 64 bits, 7 to a byte
_INT_BYTES = 5
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_DOUBLE = struct.Struct("<d").unpack_from
_FLOAT = struct.Struct("<f").unpack_from

# writer type -> reader types it resolves to (Avro's promotions included)
_PROMOTES = {
    "null": ("null",), "boolean": ("boolean",), "int": ("int", "long", "float", "double"),
    "long": ("long", "float", "double"), "float": ("float", "double"), "double": ("double",),
    "string": ("string", "bytes"), "bytes": ("bytes", "string"),
}


class AvroError(ValueError):
    """A body that is not a record of the writer schema."""


def _varint(buf: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    try:
        b = buf[pos]
        if b < 0x80:  # one byte: most lengths, union branches and small numbers
            return (b >> 1) ^ -(b & 1), pos + 1
        n, shift, end = b & 0x7F, 7, pos + max_bytes
        pos += 1
        while b & 0x80:
            if pos == end:
                raise AvroError(f"a varint of more than {max_bytes} bytes at {end - max_bytes}")
            b = buf[pos]
            n |= (b & 0x7F) << shift
            shift += 7
            pos += 1
    except IndexError:
        raise AvroError(f"truncated: a varint runs past the end ({len(buf)})") from None
    return (n >> 1) ^ -(n & 1), pos


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(buf, pos, _LONG_BYTES)
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise AvroError(f"long {value} is outside 64 bits")
    return value, pos


def _read_int(buf: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(buf, pos, _INT_BYTES)
    if not _INT_MIN <= value <= _INT_MAX:
        raise AvroError(f"int {value} is outside 32 bits")
    return value, pos


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, start = _varint(buf, pos, _LONG_BYTES)
    end = start + size
    if size < 0 or end > len(buf):
        raise AvroError(f"truncated: a string of {size} bytes at {start} runs past the end "
                        f"({len(buf)})")
    return buf[start:end], end


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    raw, end = _read_bytes(buf, pos)
    try:
        return raw.decode(), end
    except UnicodeDecodeError as e:
        raise AvroError(f"a string that is not UTF-8 ({e.reason})") from None


def _read_fixed(unpack: Callable[[bytes, int], tuple[float]], size: int) -> FieldReader:
    def read(buf: bytes, pos: int) -> tuple[float, int]:
        if pos + size > len(buf):
            raise AvroError(f"truncated: {size} bytes at {pos} run past the end ({len(buf)})")
        return unpack(buf, pos)[0], pos + size
    return read


def _read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    if pos >= len(buf):
        raise AvroError(f"truncated: a boolean at {pos} is past the end")
    if buf[pos] > 1:
        raise AvroError(f"boolean byte {buf[pos]} is neither 0 nor 1")
    return buf[pos] == 1, pos + 1


def _read_null(buf: bytes, pos: int) -> tuple[None, int]:
    return None, pos


_READERS: dict[str, FieldReader] = {
    "null": _read_null, "boolean": _read_boolean, "int": _read_int, "long": _read_long,
    "float": _read_fixed(_FLOAT, 4), "double": _read_fixed(_DOUBLE, 8),
    "string": _read_string, "bytes": _read_bytes,
}
# (writer type, reader type) -> the conversion of a promoted value
_CONVERT: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("int", "float"): float, ("int", "double"): float, ("long", "float"): float,
    ("long", "double"): float,
}


def _converted(read: FieldReader, convert: Callable[[Any], Any]) -> FieldReader:
    def resolved(buf: bytes, pos: int) -> tuple[Any, int]:
        value, pos = read(buf, pos)
        return convert(value), pos
    return resolved


def _primitive_to(writer: str, reader: str | list[str]) -> FieldReader | None:
    """Reads a writer primitive as the reader type: the reader union's branch of the
    same type, else its first branch the type promotes to (Java's Avro takes the same
    branch; fastavro, resolving, the first it promotes to); None if none."""
    targets = reader if isinstance(reader, list) else [reader]
    target = writer if writer in targets else next(
        (t for t in targets if t in _PROMOTES[writer]), None)
    if target is None:
        return None
    if {writer, target} == {"string", "bytes"}:
        return _READERS[target]  # the same encoding: read as the reader's type
    convert = _CONVERT.get((writer, target))
    return _READERS[writer] if convert is None else _converted(_READERS[writer], convert)


def _union(branches: list[FieldReader | None], names: list[str]) -> FieldReader:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        index, pos = _varint(buf, pos, _LONG_BYTES)
        if not 0 <= index < len(branches):
            raise AvroError(f"union branch {index} of {len(branches)}")
        branch = branches[index]
        if branch is None:
            raise AvroError(f"union branch {names[index]} is not in the reader's schema")
        return branch(buf, pos)
    return read


def _is_primitive(kind: Any) -> bool:
    return isinstance(kind, str) and kind in _READERS


def _field_reader(writer: Any, reader: Any) -> FieldReader | None:
    """The reader of a writer field's value as the reader field's type (None: the
    writer's type cannot be compiled or resolved)."""
    if isinstance(writer, list):
        if not all(_is_primitive(w) for w in writer):
            return None
        return _union([_primitive_to(w, reader) for w in writer], writer)
    if not _is_primitive(writer):
        return None
    return _primitive_to(writer, reader)


def _skipper(writer: Any) -> FieldReader | None:
    """Reads (and checks) a writer field the reader does not have."""
    if isinstance(writer, list):
        return _union([_READERS[w] for w in writer], writer) if all(
            _is_primitive(w) for w in writer) else None
    return _READERS.get(writer) if _is_primitive(writer) else None


def compile_reader(writer: dict[str, Any], reader: dict[str, Any]) -> RecordReader | None:
    """The decoder of ``writer`` records as ``reader`` records (both record schemas,
    parsed or not), or None if it cannot be compiled (see the module docstring).
    It returns ``(record, position after it)`` and raises ``AvroError``."""
    if writer.get("type") != "record" or reader.get("type") != "record" or writer.get(
            "name") != reader.get("name"):
        return None
    reader_fields = {f["name"]: f for f in reader["fields"]}
    if any(f.get("aliases") for f in (*writer["fields"], *reader["fields"])):
        return None
    if not all(_is_primitive(f["type"]) or isinstance(f["type"], list) and all(
            _is_primitive(t) for t in f["type"]) for f in reader["fields"]):
        return None
    steps: list[tuple[str | None, FieldReader]] = []
    for field in writer["fields"]:
        target = reader_fields.get(field["name"])
        read = (_skipper(field["type"]) if target is None
                else _field_reader(field["type"], target["type"]))
        if read is None:
            return None
        steps.append((None if target is None else field["name"], read))
    written = {f["name"] for f in writer["fields"]}
    missing = [f for f in reader["fields"] if f["name"] not in written]
    if any("default" not in f for f in missing):
        return None
    defaults = {f["name"]: f["default"] for f in missing}

    def read_record(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        record = dict(defaults)
        for name, read in steps:
            value, pos = read(buf, pos)
            if name is not None:
                record[name] = value
        return record, pos

    return read_record
