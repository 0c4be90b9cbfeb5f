"""Aggregations as accumulators: the part of a feature that does not depend on its window.

Each aggregation is an accumulator kept in state (plain lists, dicts and
numbers, so ``FastPrimitivesCoder`` encodes it without pickling), a way to add
one event to it, and a way to read the value of one or more accumulators
together (a window, or the tiles of a sliding window). Every value is
independent of the order events arrive in:

- ``sum``: an exact sum (``transforms.exact``), rounded once when read.
- ``count``: events counted.
- ``min`` / ``max``: the smallest / largest value.
- ``last``: the value of the event with the greatest event time; of events
  with the same time, the greatest value (so arrival order never decides).
- ``count_by``: value -> events with it (keys as strings, for the JSON map).
- ``count_distinct``: distinct values, exact up to ``max_distinct`` per
  accumulator; past the bound new values are not kept and the value is a lower
  bound (the ``aggregate/<feature>_distinct_saturated`` counter says so).

Events whose value field is missing or null are not aggregated (``count``
counts every event its filter passes).

>>> s = Accumulator("sum")
>>> a = s.add(s.add(s.create(), 0.1, 1), 0.2, 2)
>>> s.value([a, s.add(s.create(), 0.3, 3)])
0.6
>>> last = Accumulator("last")
>>> last.value([last.add(last.add(last.create(), 5.0, 20), 7.0, 10)])
5.0
>>> d = Accumulator("count_distinct", max_distinct=2)
>>> d.value([d.add(d.add(d.create(), "a", 1), "b", 2), d.add(d.create(), "a", 3)])
2
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

from transforms import exact

OPS = ("sum", "count", "min", "max", "last", "count_by", "count_distinct")


class Accumulator:
    """Create, add to and read one aggregation's state.

    Args:
        op: one of ``OPS``.
        max_distinct: ``count_distinct`` only: how many distinct values are kept.
        on_saturated: called when a ``count_distinct`` accumulator is full and
            drops a new value (e.g. a counter's ``inc``).
    """

    def __init__(self, op: str, max_distinct: int | None = None,
                 on_saturated: Callable[[], None] | None = None) -> None:
        if op not in OPS:
            raise ValueError(f"aggregation {op!r} is not one of {', '.join(OPS)}")
        self.op = op
        self._max_distinct = max_distinct or 0
        self._on_saturated = on_saturated or (lambda: None)
        self.add = getattr(self, f"_add_{op}")
        self.value: Callable[[Iterable[Any]], Any] = getattr(self, f"_value_{op}")

    @property
    def needs_value(self) -> bool:
        """Whether the aggregation reads a value field (``count`` does not)."""
        return self.op != "count"

    def create(self) -> Any:
        if self.op == "sum":
            return []
        if self.op == "count":
            return 0
        if self.op in ("count_by", "count_distinct"):
            return {}
        return None

    # add(acc, value, ts) -> acc; the returned accumulator replaces the old one.

    @staticmethod
    def _add_sum(acc: list[float], value: float, ts: int) -> list[float]:
        return exact.add(acc, value)

    @staticmethod
    def _add_count(acc: int, value: Any, ts: int) -> int:
        return acc + 1

    # -0.0 == 0.0: comparisons cannot tell them apart, so arrival order would pick
    # the sign. Adding 0.0 turns -0.0 into 0.0 and leaves every other value alone.

    @staticmethod
    def _add_min(acc: Any, value: Any, ts: int) -> Any:
        value = value + 0.0 if isinstance(value, float) else value
        return value if acc is None or value < acc else acc

    @staticmethod
    def _add_max(acc: Any, value: Any, ts: int) -> Any:
        value = value + 0.0 if isinstance(value, float) else value
        return value if acc is None or value > acc else acc

    @staticmethod
    def _add_last(acc: list[Any] | None, value: Any, ts: int) -> list[Any]:
        value = value + 0.0 if isinstance(value, float) else value
        if acc is None or (ts, value) > (acc[0], acc[1]):
            return [ts, value]
        return acc

    @staticmethod
    def _add_count_by(acc: dict[str, int], value: Any, ts: int) -> dict[str, int]:
        key = str(value)
        acc[key] = acc.get(key, 0) + 1
        return acc

    def _add_count_distinct(self, acc: dict[Any, int], value: Any, ts: int) -> dict[Any, int]:
        if value not in acc:
            if len(acc) >= self._max_distinct:
                self._on_saturated()
                return acc
            acc[value] = 1
        return acc

    # value(accs) -> the feature value of the accumulators taken together.

    @staticmethod
    def _value_sum(accs: Iterable[list[float]]) -> float:
        return exact.total(chain.from_iterable(accs))

    @staticmethod
    def _value_count(accs: Iterable[int]) -> int:
        return sum(accs)

    @staticmethod
    def _value_min(accs: Iterable[Any]) -> Any:
        present = [a for a in accs if a is not None]
        return min(present) if present else None

    @staticmethod
    def _value_max(accs: Iterable[Any]) -> Any:
        present = [a for a in accs if a is not None]
        return max(present) if present else None

    @staticmethod
    def _value_last(accs: Iterable[list[Any] | None]) -> Any:
        present = [tuple(a) for a in accs if a is not None]
        return max(present)[1] if present else None

    @staticmethod
    def _value_count_by(accs: Iterable[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for acc in accs:
            for key, n in acc.items():
                out[key] = out.get(key, 0) + n
        return out

    def _value_count_distinct(self, accs: Iterable[dict[Any, int]]) -> int:
        seen: set[Any] = set()
        for acc in accs:
            seen.update(acc)
        return min(len(seen), self._max_distinct)
