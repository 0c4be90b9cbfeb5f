"""Keying events by entity, with a deterministic key coder for state."""

from __future__ import annotations

from typing import Any

import apache_beam as beam


class KeyByEntity(beam.PTransform):
    """``event -> (event[field], event)`` with a ``str`` key type hint.

    Stateful DoFns need a deterministic key coder; the hint gives them
    ``StrUtf8Coder`` instead of a pickling fallback.
    """

    def __init__(self, field: str = "userId") -> None:
        super().__init__()
        self._field = field

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        field = self._field
        return events | "KeyBy" >> beam.Map(lambda e: (e[field], e)).with_output_types(
            tuple[str, dict[str, Any]])
