"""Decoding and validation of raw events: JSON lines, Avro files, Confluent wire format.

Every input ends either as a valid event (a ``dict`` holding exactly the reader
schema's fields, timestamped with its event time) or as a ``DeadLetter`` with
the raw payload and the reason. Nothing is coerced: a string where the schema
says double is an error, not a number.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam import pvalue
from apache_beam.io import filesystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

import schemas
from transforms import avro
from transforms.model import DeadLetter

_LOG = logging.getLogger(__name__)

EVENTS = "events"
DEAD = "dead"

# Beam's event-time range, in epoch ms. Elements live in the global window
# until keyed state picks them up, so its max timestamp is the upper bound.
MIN_EVENT_MS = MIN_TIMESTAMP.micros // 1000 + 1
MAX_EVENT_MS = GlobalWindow().max_timestamp().micros // 1000

# The decode counters every decoder shares: a Beam counter is a handle that
# finds the running step's metrics when it is incremented.
_VALID = Metrics.counter("decode", "events_valid")
_DEAD = Metrics.counter("decode", "dead_letters")

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
CONFLUENT_MAGIC = 0


class InvalidEvent(ValueError):
    """An input that is not a valid event; the message is the dead-letter reason."""


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input, so one record cannot exhaust a worker.

    Attributes:
        max_record_bytes: a larger raw record is a dead letter.
        max_string_chars: a longer string field is a dead letter.
    """

    max_record_bytes: int = 1 << 20
    max_string_chars: int = 65536


class EventSchema:
    """Validates decoded records against one Avro reader schema (a record of primitives).

    Args:
        schema_file: a file name in ``schemas/``.
        time_field: the long field holding the event time (epoch ms).
        limits: size bounds.
        entity_field: the string field the features are keyed by: an empty or
            blank id is invalid (it would name no entity, and one Redis hash
            would collect every such event).
    """

    def __init__(self, schema_file: str, time_field: str = "eventTimestamp",
                 limits: Limits | None = None, entity_field: str = "userId") -> None:
        self.schema_file = schema_file
        self.parsed = schemas.load_schema(schema_file)
        self.name = self.parsed["name"].rsplit(".", 1)[-1]
        self.time_field = time_field
        self.entity_field = entity_field
        self.limits = limits or Limits()
        # Per field: name, types, default, and each type's test bound once here,
        # so validating an event dispatches on nothing.
        self._fields: list[tuple[str, tuple[str, ...], bool, Any,
                                 tuple[tuple[_Conformer, Any], ...]]] = []
        for field in schemas.raw_schema(schema_file)["fields"]:
            kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
            if not all(isinstance(k, str) for k in kinds):
                raise ValueError(f"{schema_file}: only primitive fields are supported")
            self._fields.append(
                (field["name"], tuple(kinds), "default" in field, field.get("default"),
                 tuple(_conformer(kind, self.limits) for kind in kinds)))

    def validate(self, record: Any) -> dict[str, Any]:
        """Returns the event (reader-schema fields only) or raises ``InvalidEvent``."""
        if not isinstance(record, dict):
            raise InvalidEvent(f"not an object: a JSON {_json_kind(record)}")
        event: dict[str, Any] = {}
        for name, kinds, has_default, default, tests in self._fields:
            if name not in record:
                if has_default:
                    event[name] = default
                    continue
                raise InvalidEvent(f"missing required field {name!r}")
            value = record[name]
            for test, bound in tests:
                ok, converted = test(value, bound)
                if ok:
                    event[name] = converted
                    break
            else:  # a wrapped union value, or an error: the general path says which
                event[name] = self._check(name, kinds, value)
        ts = event[self.time_field]
        if not MIN_EVENT_MS <= ts <= MAX_EVENT_MS:
            raise InvalidEvent(
                f"{self.time_field} {ts} is outside Beam's timestamp range "
                f"[{MIN_EVENT_MS}, {MAX_EVENT_MS}] ms")
        entity = event.get(self.entity_field)
        if isinstance(entity, str) and not entity.strip():
            raise InvalidEvent(f"field {self.entity_field!r} is empty: no entity to key by")
        return event

    def _check(self, name: str, kinds: tuple[str, ...], value: Any) -> Any:
        # Avro's JSON encoding wraps non-null union values: {"string": "x"}.
        if len(kinds) > 1 and isinstance(value, dict) and len(value) == 1:
            (branch, inner), = value.items()
            if branch in kinds:
                return self._check(name, (branch,), inner)
        for kind in kinds:
            ok, converted = _conform(kind, value, self.limits)
            if ok:
                return converted
        expected = " or ".join(kinds)
        if any(k in ("double", "float") for k in kinds) and isinstance(value, float):
            raise InvalidEvent(f"field {name!r} is not a finite number: {value!r}")
        raise InvalidEvent(
            f"field {name!r} must be {expected}, got {_json_kind(value)}"
            + (" (too long)" if isinstance(value, str) and "string" in kinds else ""))


# The test of one Avro primitive type: (value, bound) -> (conforms, value as that type).
_Conformer = Callable[[Any, Any], tuple[bool, Any]]


def _is_null(value: Any, _: Any) -> tuple[bool, Any]:
    return value is None, None


def _is_string(value: Any, max_chars: int) -> tuple[bool, Any]:
    return isinstance(value, str) and len(value) <= max_chars, value


def _is_boolean(value: Any, _: Any) -> tuple[bool, Any]:
    return isinstance(value, bool), value


def _is_integer(value: Any, bounds: tuple[int, int]) -> tuple[bool, Any]:
    if isinstance(value, bool):  # bool is an int in Python, never a number in Avro
        return False, None
    return isinstance(value, int) and bounds[0] <= value <= bounds[1], value


def _is_floating(value: Any, _: Any) -> tuple[bool, Any]:
    if isinstance(value, bool):
        return False, None
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            return False, None
    return isinstance(value, float) and math.isfinite(value), value


def _never(value: Any, _: Any) -> tuple[bool, Any]:
    return False, None


def _conformer(kind: str, limits: Limits) -> tuple[_Conformer, Any]:
    """The test of Avro type ``kind`` and the bound it is called with."""
    if kind == "string":
        return _is_string, limits.max_string_chars
    if kind in ("int", "long"):
        return _is_integer, _INT32 if kind == "int" else _INT64
    simple: dict[str, _Conformer] = {"null": _is_null, "boolean": _is_boolean,
                                     "double": _is_floating, "float": _is_floating}
    return simple.get(kind, _never), None


def _conform(kind: str, value: Any, limits: Limits) -> tuple[bool, Any]:
    test, bound = _conformer(kind, limits)
    return test(value, bound)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_json_line(line: str | bytes, schema: EventSchema) -> dict[str, Any]:
    """Parses one JSON line into a valid event or raises ``InvalidEvent``."""
    if len(line) > schema.limits.max_record_bytes:
        raise InvalidEvent(f"record larger than {schema.limits.max_record_bytes} bytes")
    if not line.strip():
        raise InvalidEvent("empty line")
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise InvalidEvent(f"not JSON: {e}") from None
    event = schema.validate(record)
    escaped = b"\\u" if isinstance(line, bytes) else "\\u"
    if escaped in line:  # only a \u escape can make a lone surrogate
        for name, value in event.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidEvent(f"field {name!r} is not text: it holds a lone "
                                       "UTF-16 surrogate") from None
    return event


class RegistryUnavailable(RuntimeError):
    """The schema registry did not answer (or answered with a server error) for
    longer than the catalogue retries: the bundle fails and is retried, rather
    than turning valid records into dead letters."""


class SchemaCatalogue:
    """Finds writer schemas by Confluent schema id, cached per id.

    Args:
        registry_url: a Confluent-compatible schema registry (for Apicurio,
            ``.../apis/ccompat/v7``); ``None`` uses the local ``schemas/catalogue.json``.
        registry_config: more ``SchemaRegistryClient`` settings, e.g.
            ``basic.auth.user.info``; they go to the client only, never to logs.
        retry_s: how long a lookup keeps retrying a registry that does not answer.
    """

    UNKNOWN_ID_TTL_S = 60.0  # how long an id the registry does not know stays unknown

    def __init__(self, registry_url: str | None = None,
                 registry_config: dict[str, str] | None = None, retry_s: float = 60.0) -> None:
        self._registry_url = registry_url
        self._registry_config = dict(registry_config or {})
        self._retry_s = retry_s
        self._cache: dict[int, Any] = {}
        # (schema id, reader schema file) -> the value decoder (``body_reader``)
        self._readers: dict[tuple[int, str], Callable[[bytes], Any]] = {}
        self._unknown: dict[int, float] = {}
        self._client: Any = None

    @property
    def where(self) -> str:
        """Where ids are looked up, for messages (the registry URL has no credentials)."""
        return "the schema registry" if self._registry_url else "schemas/catalogue.json"

    def writer_schema(self, schema_id: int) -> Any:
        """The parsed writer schema for ``schema_id``; ``KeyError`` if unknown;
        ``RegistryUnavailable`` if the registry stays unreachable."""
        if schema_id not in self._cache:
            self._cache[schema_id] = self._lookup(schema_id)
        return self._cache[schema_id]

    def body_reader(self, schema_id: int, reader: EventSchema) -> Callable[[bytes], Any]:
        """Decodes a wire value's Avro body (after the 5-byte header) written with
        ``schema_id`` as a ``reader`` record (not validated yet); raises
        ``InvalidEvent``. Compiled once per writer and reader (``transforms.avro``),
        fastavro where that reader does not apply; ``KeyError`` / ``RegistryUnavailable``
        as ``writer_schema``."""
        key = (schema_id, reader.schema_file)
        read = self._readers.get(key)
        if read is None:
            read = self._readers[key] = _body_reader(schema_id, self.writer_schema(schema_id),
                                                     reader)
        return read

    def _lookup(self, schema_id: int) -> Any:
        if self._registry_url is None:
            return schemas.load_schema(schemas.catalogue()[schema_id])
        unknown_since = self._unknown.get(schema_id)
        if unknown_since is not None and time.monotonic() - unknown_since < self.UNKNOWN_ID_TTL_S:
            raise KeyError(schema_id)
        text = self._fetch(schema_id)
        self._unknown.pop(schema_id, None)
        return fastavro.parse_schema(json.loads(text), _write_hint=False)

    def _fetch(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if self._client is None:
            self._client = SchemaRegistryClient({"url": self._registry_url,
                                                 **self._registry_config})
        deadline, pause = time.monotonic() + self._retry_s, 0.2
        while True:
            try:
                return self._client.get_schema(schema_id).schema_str
            except SchemaRegistryError as e:
                if e.http_status_code == 404:
                    self._unknown[schema_id] = time.monotonic()
                    raise KeyError(schema_id) from None
                if e.http_status_code in (401, 403):
                    raise RegistryUnavailable(
                        f"the schema registry refused the credentials (HTTP "
                        f"{e.http_status_code})") from None
                problem = f"HTTP {e.http_status_code}"
            except Exception as e:  # connection refused, timeouts, TLS: the client's own
                problem = type(e).__name__
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"schema id {schema_id}: the schema registry did "
                                          f"not answer for {self._retry_s:.0f} s ({problem})")
            _LOG.warning("schema registry lookup of id %d failed (%s); retrying",
                         schema_id, problem)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_readers": {}}


def _body_reader(schema_id: int, writer: Any, reader: EventSchema) -> Callable[[bytes], Any]:
    compiled = avro.compile_reader(writer, reader.parsed)
    if compiled is None:
        return lambda value: _fastavro_body(value, schema_id, writer, reader)

    def read(value: bytes) -> Any:
        try:
            record, end = compiled(value, 5)
        except avro.AvroError as e:
            raise InvalidEvent(f"corrupt Avro body for schema id {schema_id}: {e}") from None
        if end != len(value):
            raise InvalidEvent(f"{len(value) - end} trailing bytes after the Avro body")
        return record

    return read


def _fastavro_body(value: bytes, schema_id: int, writer: Any, reader: EventSchema) -> Any:
    body = io.BytesIO(value[5:])
    try:
        record = fastavro.schemaless_reader(body, writer, reader.parsed)
    except fastavro.read.SchemaResolutionError:
        writer_name = writer.get("name", "?") if isinstance(writer, dict) else "?"
        raise InvalidEvent(
            f"schema id {schema_id} ({writer_name}) cannot be read as {reader.name}") from None
    except Exception as e:  # truncated or corrupt bodies raise many kinds of errors
        raise InvalidEvent(f"corrupt Avro body for schema id {schema_id}: "
                           f"{type(e).__name__}") from None
    if body.tell() != len(value) - 5:
        raise InvalidEvent(f"{len(value) - 5 - body.tell()} trailing bytes after the Avro body")
    return record


def decode_confluent(value: bytes | None, schema: EventSchema,
                     catalogue: SchemaCatalogue) -> dict[str, Any]:
    """Decodes a Confluent wire-format value (magic 0, 4-byte id, Avro body)."""
    if value is None:
        raise InvalidEvent("null record value")
    if len(value) > schema.limits.max_record_bytes:
        raise InvalidEvent(f"record larger than {schema.limits.max_record_bytes} bytes")
    if len(value) < 5:
        raise InvalidEvent(f"truncated: {len(value)} bytes, the wire header needs 5")
    if value[0] != CONFLUENT_MAGIC:
        raise InvalidEvent(f"wrong magic byte {value[0]} (expected 0)")
    (schema_id,) = struct.unpack(">I", value[1:5])
    try:
        read = catalogue.body_reader(schema_id, schema)
    except KeyError:
        raise InvalidEvent(f"unknown schema id {schema_id} (not in {catalogue.where})") from None
    return schema.validate(read(value))


def encode_confluent(event: dict[str, Any], schema_file: str,
                     schema_id: int | None = None) -> bytes:
    """Encodes an event in the Confluent wire format (producers and tests)."""
    sid = schemas.schema_id_for(schema_file) if schema_id is None else schema_id
    out = io.BytesIO()
    out.write(struct.pack(">bI", CONFLUENT_MAGIC, sid))
    fastavro.schemaless_writer(out, schemas.load_schema(schema_file), event)
    return out.getvalue()


class _DecodeFn(beam.DoFn):
    """Turns raw inputs into timestamped events, or dead letters."""

    def __init__(self, parse: Callable[[Any], dict[str, Any]], schema: EventSchema,
                 source: str) -> None:
        self._parse = parse
        self._schema = schema
        self._source = source

    def process(self, raw: Any) -> Iterator[Any]:
        payload, source = raw if isinstance(raw, tuple) else (raw, self._source)
        try:
            event = self._parse(payload)
        except InvalidEvent as e:
            _DEAD.inc()
            yield pvalue.TaggedOutput(DEAD, DeadLetter(source, str(e), payload))
            return
        _VALID.inc()
        ts = event[self._schema.time_field]
        yield TimestampedValue(event, Timestamp(micros=ts * 1000))


@dataclass(frozen=True)
class RecordDecoder:
    """Decodes ``(record key, value)`` pairs inside a keyed stage.

    For topics whose records are keyed by the entity id (``pipelines.produce``
    keys by ``userId``): the runner groups the raw records by their key, and
    the keyed stage decodes them itself. A record whose key is missing or is
    not its event's entity is invalid: processed under another key, its
    entity's state would be split between two keys.

    Attributes:
        parse: value bytes -> a valid event (raises ``InvalidEvent``).
        entity: the event field the records are keyed by.
        time_field: the event-time field.
        source: the dead letters' source label.
    """

    parse: Callable[[Any], dict[str, Any]]
    entity: str
    time_field: str
    source: str

    def decode(self, record: tuple[bytes | None, bytes | None]) -> tuple[str, dict[str, Any]]:
        """``(key, value)`` -> ``(entity id, event)``; raises ``InvalidEvent``."""
        key, value = record
        event = self.parse(value)
        entity = event[self.entity]
        if key is None:
            raise InvalidEvent(f"record has no key (the topic's records must be keyed "
                               f"by {self.entity})")
        if key != str(entity).encode():
            raise InvalidEvent(f"record key {key[:64]!r} is not the event's "
                               f"{self.entity} {str(entity)[:64]!r}")
        return str(entity), event

    def __call__(self, record: tuple[bytes | None, bytes | None]
                 ) -> tuple[str, dict[str, Any]] | DeadLetter:
        """``decode``, or the dead letter saying why not; counted as the decode step
        counts (``decode/events_valid``, ``decode/dead_letters``)."""
        try:
            decoded = self.decode(record)
        except InvalidEvent as e:
            _DEAD.inc()
            return DeadLetter(self.source, str(e), record[1])
        _VALID.inc()
        return decoded


@dataclass
class KeyedRecords:
    """A topic's raw records, keyed by entity, for a feature graph to decode in its
    keyed stage (``RecordDecoder``); that stage adds its dead letters to ``dead``."""

    records: beam.PCollection  # (key bytes | None, value bytes | None)
    decoder: RecordDecoder
    dead: list[beam.PCollection] = dataclass_field(default_factory=list)


class DecodeJsonLines(beam.PTransform):
    """Decodes JSON lines; outputs tagged ``events`` and ``dead``.

    Args:
        schema: the reader schema.
        source: a label for dead letters (e.g. the input path).
    """

    def __init__(self, schema: EventSchema, source: str = "json") -> None:
        super().__init__()
        self._schema = schema
        self._source = source

    def expand(self, lines: beam.PCollection) -> pvalue.DoOutputsTuple:
        schema = self._schema
        return lines | "ParseJson" >> beam.ParDo(
            _DecodeFn(lambda line: parse_json_line(line, schema), schema, self._source)
        ).with_outputs(DEAD, main=EVENTS)


class DecodeConfluentAvro(beam.PTransform):
    """Decodes Confluent wire-format values; outputs tagged ``events`` and ``dead``.

    Input elements are ``bytes`` or ``(bytes, source)`` pairs (source: e.g.
    ``topic/partition/offset``).

    Args:
        schema: the reader schema (writer schemas come from the catalogue).
        registry_url: a schema registry, or ``None`` for ``schemas/catalogue.json``.
        registry_config: more registry client settings (credentials).
    """

    def __init__(self, schema: EventSchema, registry_url: str | None = None,
                 source: str = "kafka", registry_config: dict[str, str] | None = None) -> None:
        super().__init__()
        self._schema = schema
        self._registry_url = registry_url
        self._registry_config = registry_config
        self._source = source

    def expand(self, values: beam.PCollection) -> pvalue.DoOutputsTuple:
        schema = self._schema
        catalogue = SchemaCatalogue(self._registry_url, self._registry_config)
        return values | "ParseConfluentAvro" >> beam.ParDo(
            _DecodeFn(lambda v: decode_confluent(v, schema, catalogue), schema, self._source)
        ).with_outputs(DEAD, main=EVENTS)


class _ReadAvroFileFn(beam.DoFn):
    """Reads an Avro container file with reader-schema resolution."""

    def __init__(self, schema: EventSchema) -> None:
        self._schema = schema

    def process(self, path: str) -> Iterator[Any]:
        with filesystems.FileSystems.open(path) as f:
            data = f.read()
        try:
            reader = fastavro.reader(io.BytesIO(data), reader_schema=self._schema.parsed)
        except Exception as e:
            _DEAD.inc()
            yield pvalue.TaggedOutput(DEAD, DeadLetter(path, f"not a readable Avro file: {e}",
                                                       data[:4096]))
            return
        index = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except Exception as e:
                _DEAD.inc()
                yield pvalue.TaggedOutput(DEAD, DeadLetter(
                    f"{path}#{index}", f"corrupt Avro data after record {index}: {e}", b""))
                return
            try:
                event = self._schema.validate(record)
            except InvalidEvent as e:
                _DEAD.inc()
                yield pvalue.TaggedOutput(DEAD, DeadLetter(f"{path}#{index}", str(e),
                                                           json.dumps(record, default=str)))
            else:
                _VALID.inc()
                ts = event[self._schema.time_field]
                yield TimestampedValue(event, Timestamp(micros=ts * 1000))
            index += 1


def _matching_files(pattern: str) -> list[str]:
    """The files a path or glob names (a path that matches nothing stays, so
    reading it reports it missing)."""
    paths = sorted(m.path for m in filesystems.FileSystems.match([pattern])[0].metadata_list)
    return paths or [pattern]


class ReadEvents(beam.PTransform):
    """A bounded replay of event files: JSON lines, or Avro if it ends in ``.avro``.

    Paths and globs go through Beam's filesystems, so ``gs://`` works. Outputs tagged
    ``events`` and ``dead``.
    """

    def __init__(self, path: str, schema: EventSchema) -> None:
        super().__init__()
        self._path = path
        self._schema = schema

    def expand(self, pbegin: beam.pvalue.PBegin) -> pvalue.DoOutputsTuple:
        if self._path.endswith(".avro"):
            return (pbegin
                    | "AvroPattern" >> beam.Create([self._path])
                    | "ListAvroFiles" >> beam.FlatMap(_matching_files)
                    | "ReadAvro" >> beam.ParDo(_ReadAvroFileFn(self._schema)).with_outputs(
                        DEAD, main=EVENTS))
        lines = pbegin | "ReadLines" >> beam.io.ReadFromText(self._path)
        return lines | "DecodeJsonLines" >> DecodeJsonLines(self._schema, self._path)
