"""Appending JSON lines to a local file from a streaming job.

``WriteToText`` needs a bounded input, and windowed ``fileio`` writes failed
under Flink checkpoints on the local runtime (docs/RUNTIME.md). A stream's
feature log, dead letters and late events are appended instead: each worker
process appends whole lines under a lock and flushes at every bundle end, so
a line is on disk before the bundle (and the checkpoint) completes. Replays
after a restore append again: the log is at-least-once, keyed by
``(entity, feature, as_of)`` for whoever reads it.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import apache_beam as beam

_LOCK = threading.Lock()


class _AppendLinesFn(beam.DoFn):
    # One handle per path per process: DoFn instances of one worker share it.
    _HANDLES: ClassVar[dict[str, Any]] = {}

    def __init__(self, path: str) -> None:
        self._path = path

    def setup(self) -> None:
        with _LOCK:
            if self._path not in self._HANDLES:
                self._HANDLES[self._path] = open(self._path, "a", encoding="utf-8")  # noqa: SIM115

    def process(self, record: Any) -> None:
        line = record.to_json() + "\n"
        with _LOCK:
            self._HANDLES[self._path].write(line)

    def finish_bundle(self) -> None:
        with _LOCK:
            self._HANDLES[self._path].flush()


class AppendJsonLines(beam.PTransform):
    """Appends each record's ``to_json()`` as one line to a local file ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def expand(self, records: beam.PCollection) -> beam.pvalue.PDone:
        records | "Append" >> beam.ParDo(_AppendLinesFn(self._path))
        return beam.pvalue.PDone(records.pipeline)
