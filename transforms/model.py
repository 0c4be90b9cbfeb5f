"""The records that flow between the transforms, and how feature values are stored.

Events themselves stay plain ``dict``s as Avro decodes them: one shape for
JSON lines, Avro files and the Kafka wire format alike.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from apache_beam import coders

USER = "user"

FeatureValue = float | int | dict[str, int]


class FeatureUpdate(NamedTuple):
    """One new value of one feature of one entity.

    Attributes:
        entity_type: kind of entity, e.g. ``"user"``.
        entity_id: the entity's id, e.g. the userId.
        feature: feature name, as declared in ``pipelines.catalogue``.
        value: the value; float, int or a str->int map.
        as_of_ms: event time (epoch ms) the value is correct for.
        final: False for speculative emissions made before the watermark
            passed ``as_of_ms``; True once it has (late repairs are final too).
        visible_ms: the event time at which the update became visible: the
            newest event time of its entity processed so far, or the time of
            the timer that emitted it (None where the stage does not record it).
        seq: the update's place among its entity's updates, in emission order
            (None where the stage does not record it).
    """

    entity_type: str
    entity_id: str
    feature: str
    value: FeatureValue
    as_of_ms: int
    final: bool
    visible_ms: int | None = None
    seq: int | None = None

    def newer_than(self, other: FeatureUpdate) -> bool:
        """Whether this update may replace ``other`` (the sink's guard rule).

        Of two updates with one ``as_of``, the later one wins unless it would
        turn a final value back into a speculative one.
        """
        if self.as_of_ms != other.as_of_ms:
            return self.as_of_ms > other.as_of_ms
        return self.final or not other.final

    def to_json(self) -> str:
        """One feature-log line (``visible_ms`` and ``seq`` when recorded)."""
        line = {
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "feature": self.feature,
            "value": self.value,
            "as_of_ms": self.as_of_ms,
            "final": self.final,
        }
        if self.visible_ms is not None:
            line["visible_ms"] = self.visible_ms
            line["seq"] = self.seq
        return json.dumps(line, sort_keys=True)


class FeatureVector(NamedTuple):
    """The latest updates of several features of one entity, written together."""

    entity_type: str
    entity_id: str
    updates: tuple[FeatureUpdate, ...]


class DeadLetter(NamedTuple):
    """An input that could not be used, with why.

    Attributes:
        source: where it came from (file path, topic/partition/offset).
        reason: a human-readable reason; never contains secrets.
        payload: the raw input, as text (bytes are base64-encoded by ``to_json``).
    """

    source: str
    reason: str
    payload: str | bytes

    def to_json(self) -> str:
        """One dead-letter line."""
        import base64

        if isinstance(self.payload, bytes):
            payload = base64.b64encode(self.payload).decode("ascii")
            encoding = "base64"
        else:
            payload, encoding = self.payload, "text"
        return json.dumps(
            {"source": self.source, "reason": self.reason, "payload": payload,
             "payload_encoding": encoding},
            sort_keys=True,
        )


def encode_value(value: FeatureValue) -> str:
    """Formats a feature value the way Redis stores it: a decimal string or JSON.

    Floats use ``repr`` (shortest string that round-trips exactly), ints ``str``,
    maps compact JSON with sorted keys.
    """
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, bool):
        raise TypeError("feature values are numbers or maps, not bools")
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else repr(value)
    return str(value)


def decode_value(value_type: str, text: str | bytes) -> FeatureValue:
    """Inverse of ``encode_value`` for a declared value type (``float``, ``int``, ``map``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if value_type == "map":
        return json.loads(text)
    if value_type == "int":
        return int(text)
    return float(text)


class _FastTupleCoder(coders.Coder):
    """Encodes a NamedTuple as the plain tuple of its fields (no pickling)."""

    def __init__(self, cls: type) -> None:
        self._cls = cls
        self._inner = coders.FastPrimitivesCoder()

    def encode(self, value: Any) -> bytes:
        return self._inner.encode(tuple(value))

    def decode(self, encoded: bytes) -> Any:
        return self._cls(*self._inner.decode(encoded))

    def is_deterministic(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._cls is other._cls  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._cls))


class FeatureUpdateCoder(_FastTupleCoder):
    def __init__(self) -> None:
        super().__init__(FeatureUpdate)


class FeatureVectorCoder(coders.Coder):
    def __init__(self) -> None:
        self._inner = coders.FastPrimitivesCoder()

    def encode(self, value: FeatureVector) -> bytes:
        return self._inner.encode(
            (value.entity_type, value.entity_id, tuple(tuple(u) for u in value.updates)))

    def decode(self, encoded: bytes) -> FeatureVector:
        entity_type, entity_id, updates = self._inner.decode(encoded)
        return FeatureVector(entity_type, entity_id, tuple(FeatureUpdate(*u) for u in updates))

    def is_deterministic(self) -> bool:
        return False


class DeadLetterCoder(_FastTupleCoder):
    def __init__(self) -> None:
        super().__init__(DeadLetter)


coders.registry.register_coder(FeatureUpdate, FeatureUpdateCoder)
coders.registry.register_coder(FeatureVector, FeatureVectorCoder)
coders.registry.register_coder(DeadLetter, DeadLetterCoder)
