"""Feature declarations: what a feature is, in one line, checked when a pipeline is built.

A declaration names the entity key, the source schema, an optional filter,
the aggregation and the window, in Beam's vocabulary: ``FixedWindows`` for a
tumbling window, ``Sessions`` for sessions, ``GlobalWindows`` for a lifetime
value, and :class:`Sliding` for a sliding window kept as tiles of a fixed
window. Names, value types and cold-start defaults follow from it, so the
pipelines, serving and the catalogue listing all read one source.

>>> f = Feature("txn_total_5m", entity="userId", source="user_interaction_event_v2.avsc",
...             aggregation=sum_of("eventValue"), window=FixedWindows(300),
...             where=Where("eventType", "purchase"))
>>> f.value_type, f.default, f.window_kind
('float', 0.0, 'tumbling')
>>> f.where({"eventType": "click"})
False
>>> try:
...     Feature("rides", entity="userId", source="ride_event.avsc",
...             aggregation=sum_of("cityId"), window=GlobalWindows())
... except DeclarationError as e:
...     print(e)
feature 'rides': sum needs a numeric field; 'cityId' is string
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from apache_beam.transforms.window import FixedWindows, GlobalWindows, Sessions, WindowFn

import schemas

__all__ = ["Aggregation", "DeclarationError", "Feature", "FixedWindows", "GlobalWindows",
           "Sessions", "Sliding", "Where", "check_catalogue", "count", "count_by",
           "count_distinct", "last", "max_of", "min_of", "session_span_s", "sum_of"]

# Value type of each aggregation ("field": the value field's own type).
_TYPES = {"sum": "float", "count": "int", "min": "field", "max": "field", "last": "field",
          "count_by": "map", "count_distinct": "int", "span_s": "int"}
_DEFAULTS: dict[str, Any] = {"float": 0.0, "int": 0, "map": {}, "string": ""}
_AVRO_TYPES = {"double": "float", "float": "float", "long": "int", "int": "int",
               "string": "string", "boolean": "int"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
EARLY_FIRINGS = ("every_element", "never")
_SESSION_OPS = ("count", "span_s")
# count_distinct keeps the distinct values themselves: exact up to this many per window.
MAX_DISTINCT = 10_000


class DeclarationError(ValueError):
    """A declaration that cannot be built; the message names the feature and the field."""


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """What is computed over a window's events.

    Attributes:
        op: ``sum``, ``count``, ``min``, ``max``, ``last`` (by event time),
            ``count_by`` (a map: value of ``field`` -> count), ``count_distinct``
            or ``span_s`` (seconds from the earliest to the latest event).
        field: the event field the aggregation reads (None for ``count``).
        max_distinct: ``count_distinct`` only: the bound of exact counting.
    """

    op: str
    field: str | None = None
    max_distinct: int | None = None


def sum_of(field: str) -> Aggregation:
    return Aggregation("sum", field)


def count() -> Aggregation:
    return Aggregation("count")


def min_of(field: str) -> Aggregation:
    return Aggregation("min", field)


def max_of(field: str) -> Aggregation:
    return Aggregation("max", field)


def last(field: str) -> Aggregation:
    return Aggregation("last", field)


def count_by(field: str) -> Aggregation:
    return Aggregation("count_by", field)


def count_distinct(field: str, max_distinct: int = MAX_DISTINCT) -> Aggregation:
    return Aggregation("count_distinct", field, max_distinct)


def session_span_s(time_field: str = "eventTimestamp") -> Aggregation:
    return Aggregation("span_s", time_field)


@dataclasses.dataclass(frozen=True)
class Sliding:
    """A sliding window of ``size_s`` ending at ``as_of``, kept as ``tile_s`` tiles.

    Exact at ``as_of`` (events in ``(as_of - size, as_of]``), published at each
    tile end holding events and again when events expire, with state bounded by
    ``size_s / tile_s`` tiles. The tiles are Beam ``FixedWindows(tile_s)``.
    """

    size_s: float
    tile_s: float = 1.0

    @property
    def tiles(self) -> FixedWindows:
        return FixedWindows(self.tile_s)


@dataclasses.dataclass(frozen=True)
class Where:
    """An event filter: ``field == equals``."""

    field: str
    equals: Any

    def __call__(self, event: dict[str, Any]) -> bool:
        return bool(event.get(self.field) == self.equals)

    def describe(self) -> str:
        return f"{self.field} == {self.equals!r}"


Window = WindowFn | Sliding


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature of one entity, declared.

    Attributes:
        name: the feature's name in Redis, the feature log and serving.
        entity: the event field holding the entity id (the key).
        source: the Avro schema file (in ``schemas/``) of the events read.
        aggregation: what is computed (:class:`Aggregation`).
        window: ``FixedWindows``, ``Sliding``, ``Sessions`` or ``GlobalWindows``.
        where: the events that count. With ``Sessions`` the session itself is
            made of all the entity's events; ``where`` picks the ones aggregated.
        allowed_lateness_s: events this late still repair the value; later
            ones go to the late output (ignored for ``GlobalWindows``).
        state_ttl_s: clear an idle key's state after this long (event time).
        early_firing: ``every_element`` (speculative values) or ``never``.
        hot_key_fanout: salt hot keys over this many sub-keys (0: off).
        entity_type: the entity kind in the Redis key (``user``).
        time_field: the event field holding the event time (epoch ms).
    """

    name: str
    entity: str
    source: str
    aggregation: Aggregation
    window: Window
    where: Where | None = None
    allowed_lateness_s: float = 60.0
    state_ttl_s: float | None = None
    early_firing: str = "every_element"
    hot_key_fanout: int = 0
    entity_type: str = "user"
    time_field: str = "eventTimestamp"

    def __post_init__(self) -> None:
        self._check()

    def _fail(self, what: str) -> DeclarationError:
        return DeclarationError(f"feature {self.name!r}: {what}")

    def _field_type(self, field: str, role: str) -> str:
        fields = _schema_fields(self.source)
        if field not in fields:
            raise self._fail(f"{role} {field!r} is not a field of {self.source} "
                             f"(fields: {', '.join(sorted(fields))})")
        return fields[field]

    def _check(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise self._fail("name must be a lowercase identifier")
        try:
            _schema_fields(self.source)
        except FileNotFoundError:
            raise self._fail(f"source {self.source!r} is not a schema in schemas/") from None
        if self._field_type(self.entity, "entity") != "string":
            raise self._fail(f"entity {self.entity!r} must be a string field")
        agg = self.aggregation
        if agg.op not in _TYPES:
            raise self._fail(f"aggregation {agg.op!r} is not one of {', '.join(_TYPES)}")
        if agg.op == "count":
            if agg.field is not None:
                raise self._fail("count takes no field (filter with where=)")
        elif agg.field is None:
            raise self._fail(f"aggregation {agg.op} needs a field")
        else:
            kind = self._field_type(agg.field, "field")
            if agg.op in ("sum", "min", "max", "span_s") and kind not in ("float", "int"):
                raise self._fail(f"{agg.op} needs a numeric field; {agg.field!r} is {kind}")
        if agg.op == "count_distinct" and not (agg.max_distinct and agg.max_distinct > 0):
            raise self._fail("count_distinct needs max_distinct > 0")
        if agg.op == "span_s" and not isinstance(self.window, Sessions):
            raise self._fail("span_s is defined for Sessions windows only")
        if isinstance(self.window, Sessions) and agg.op not in _SESSION_OPS:
            raise self._fail(f"{agg.op} over Sessions is not supported "
                             f"(Sessions compute {' and '.join(_SESSION_OPS)})")
        if self._field_type(self.time_field, "time_field") != "int":
            raise self._fail(f"time_field {self.time_field!r} must be a long (epoch ms)")
        if self.where is not None:
            self._field_type(self.where.field, "where field")
        self._check_window()
        if self.allowed_lateness_s < 0:
            raise self._fail("allowed_lateness_s must be >= 0")
        if self.state_ttl_s is not None and self.state_ttl_s <= 0:
            raise self._fail("state_ttl_s must be > 0")
        if self.early_firing not in EARLY_FIRINGS:
            raise self._fail(f"early_firing must be one of {', '.join(EARLY_FIRINGS)}")
        if self.hot_key_fanout < 0:
            raise self._fail("hot_key_fanout must be >= 0")

    def _check_window(self) -> None:
        w = self.window
        if isinstance(w, Sliding):
            if w.size_s <= 0 or w.tile_s <= 0:
                raise self._fail("Sliding size_s and tile_s must be > 0")
            size_ms, tile_ms = round(w.size_s * 1000), round(w.tile_s * 1000)
            if size_ms % tile_ms:
                raise self._fail(f"Sliding tile_s {w.tile_s} must divide size_s {w.size_s}")
        elif isinstance(w, FixedWindows):
            if w.offset.micros:
                raise self._fail("FixedWindows with an offset are not supported")
        elif not isinstance(w, Sessions | GlobalWindows):
            raise self._fail(f"window {type(w).__name__} is not FixedWindows, Sliding, "
                             "Sessions or GlobalWindows")

    @property
    def window_kind(self) -> str:
        """``tumbling``, ``sliding``, ``session`` or ``lifetime``."""
        if isinstance(self.window, Sliding):
            return "sliding"
        if isinstance(self.window, FixedWindows):
            return "tumbling"
        return "session" if isinstance(self.window, Sessions) else "lifetime"

    @property
    def window_ms(self) -> int | None:
        """Size (tumbling, sliding) or gap (session) in ms; None for lifetime."""
        w = self.window
        if isinstance(w, Sliding):
            return round(w.size_s * 1000)
        if isinstance(w, FixedWindows):
            return w.size.micros // 1000
        if isinstance(w, Sessions):
            return w.gap_size.micros // 1000
        return None

    @property
    def allowed_lateness_ms(self) -> int:
        return round(self.allowed_lateness_s * 1000)

    @property
    def value_type(self) -> str:
        """``float``, ``int``, ``map`` (str -> int, JSON in Redis) or ``string``."""
        kind = _TYPES[self.aggregation.op]
        if kind == "field":
            assert self.aggregation.field is not None
            return _schema_fields(self.source)[self.aggregation.field]
        return kind

    @property
    def default(self) -> Any:
        """The cold-start value a model gets before the pipeline wrote one."""
        value = _DEFAULTS[self.value_type]
        return dict(value) if isinstance(value, dict) else value

    def describe(self) -> dict[str, Any]:
        """The declaration as plain JSON-able values (the catalogue listing)."""
        window: dict[str, Any] = {"kind": self.window_kind}
        if isinstance(self.window, Sliding):
            window.update(size_s=self.window.size_s, tile_s=self.window.tile_s)
        elif self.window_ms is not None:
            key = "gap_s" if self.window_kind == "session" else "size_s"
            window[key] = self.window_ms / 1000
        agg: dict[str, Any] = {"op": self.aggregation.op}
        if self.aggregation.field is not None:
            agg["field"] = self.aggregation.field
        if self.aggregation.max_distinct is not None:
            agg["max_distinct"] = self.aggregation.max_distinct
        return {
            "name": self.name, "entity": self.entity, "entity_type": self.entity_type,
            "source": self.source, "aggregation": agg, "window": window,
            "where": self.where.describe() if self.where else None,
            "allowed_lateness_s": None if self.window_kind == "lifetime"
            else self.allowed_lateness_s,
            "state_ttl_s": self.state_ttl_s, "early_firing": self.early_firing,
            "hot_key_fanout": self.hot_key_fanout,
            "type": self.value_type, "default": self.default,
        }


def check_catalogue(features: Iterable[Feature]) -> dict[str, Feature]:
    """The features by name; a name declared twice is an error."""
    by_name: dict[str, Feature] = {}
    for feature in features:
        if feature.name in by_name:
            raise DeclarationError(f"feature {feature.name!r}: declared twice")
        by_name[feature.name] = feature
    return by_name


def _schema_fields(source: str) -> dict[str, str]:
    """field -> value type (``float``, ``int``, ``string``) of a schema in ``schemas/``."""
    out = {}
    for field in schemas.load_schema(source)["fields"]:
        avro = field["type"]
        if isinstance(avro, list):  # ["null", T]: optional
            avro = next((t for t in avro if t != "null"), "null")
        out[field["name"]] = _AVRO_TYPES.get(avro if isinstance(avro, str) else "", "other")
    return out
