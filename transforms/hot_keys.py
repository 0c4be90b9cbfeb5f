"""Two-stage (salted) aggregation for hot keys.

One celebrity or bot user sends most events; every one of them lands on the
worker that owns its key. Stage one spreads a key over ``fanout`` salted
sub-keys and combines partially there; stage two merges the few partial
accumulators per key. The result equals a plain ``CombinePerKey`` (for exact
combiners, bit for bit: see ``ExactSumFn``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from transforms import exact


class ExactSumFn(beam.CombineFn):
    """A float sum that does not depend on the order or grouping of its inputs."""

    def create_accumulator(self) -> list[float]:
        return []

    def add_input(self, acc: list[float], value: float) -> list[float]:
        return exact.add(acc, value)

    def merge_accumulators(self, accs: Iterable[list[float]]) -> list[float]:
        merged: list[float] = []
        for acc in accs:
            exact.merge(merged, acc)
        return merged

    def extract_output(self, acc: list[float]) -> float:
        return exact.total(acc)


class _Partial(beam.CombineFn):
    """Stage one: ``fn``'s accumulator is the output."""

    def __init__(self, fn: beam.CombineFn) -> None:
        self._fn = fn

    def create_accumulator(self) -> Any:
        return self._fn.create_accumulator()

    def add_input(self, acc: Any, value: Any) -> Any:
        return self._fn.add_input(acc, value)

    def merge_accumulators(self, accs: Iterable[Any]) -> Any:
        return self._fn.merge_accumulators(accs)

    def extract_output(self, acc: Any) -> Any:
        return acc


class _Final(beam.CombineFn):
    """Stage two: inputs are stage-one accumulators."""

    def __init__(self, fn: beam.CombineFn) -> None:
        self._fn = fn

    def create_accumulator(self) -> Any:
        return self._fn.create_accumulator()

    def add_input(self, acc: Any, partial: Any) -> Any:
        return self._fn.merge_accumulators([acc, partial])

    def merge_accumulators(self, accs: Iterable[Any]) -> Any:
        return self._fn.merge_accumulators(accs)

    def extract_output(self, acc: Any) -> Any:
        return self._fn.extract_output(acc)


class _SaltFn(beam.DoFn):
    """Round-robin salts: a hot key's elements spread evenly, whatever their values.

    Which salt an element gets does not change the result (the combine is
    associative and commutative), so a retried bundle may salt differently.
    """

    def __init__(self, fanout: int) -> None:
        self._fanout = fanout

    def setup(self) -> None:
        self._next = 0

    def process(self, kv: tuple[Any, Any]) -> Iterable[tuple[tuple[Any, int], Any]]:
        self._next = (self._next + 1) % self._fanout
        yield (kv[0], self._next), kv[1]


class SaltedCombinePerKey(beam.PTransform):
    """``CombinePerKey(fn)`` in two stages, spreading each key over ``fanout`` salts.

    Input: ``(key, value)`` in any windowing; output ``(key, result)`` per window.

    Args:
        fn: the CombineFn (associative and commutative, as any CombineFn).
        fanout: salts per key in stage one; 1 makes it a plain two-step combine.
    """

    def __init__(self, fn: beam.CombineFn, fanout: int) -> None:
        super().__init__()
        if fanout < 1:
            raise ValueError("fanout must be >= 1")
        self._fn = fn
        self._fanout = fanout

    def expand(self, kvs: beam.PCollection) -> beam.PCollection:
        return (kvs
                | "Salt" >> beam.ParDo(_SaltFn(self._fanout))
                | "PartialCombine" >> beam.CombinePerKey(_Partial(self._fn))
                | "Unsalt" >> beam.Map(lambda kv: (kv[0][0], kv[1]))
                | "FinalCombine" >> beam.CombinePerKey(_Final(self._fn)))
