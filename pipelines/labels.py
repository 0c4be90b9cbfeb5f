"""Label files of training sets: CSV or Parquet rows, each naming an entity and a time.

A label row has an entity id column (default ``entity_id``), a timestamp
column (default ``timestamp``: epoch milliseconds, or ISO-8601; a time
without a zone is UTC) and any other columns, which a training set passes
through unchanged. Files are read through Beam's filesystems (local paths,
globs, ``gs://``); a ``.parquet`` file is Parquet, anything else CSV with a
header line.

>>> parse_time_ms("1700000000000"), parse_time_ms("2023-11-14T22:13:20Z")
(1700000000000, 1700000000000)
>>> parse_time_ms("2023-11-14 22:13:20.5")
1700000000500
>>> try:
...     parse_time_ms("yesterday")
... except BadLabel as e:
...     print(e)
timestamp 'yesterday' is neither epoch milliseconds nor ISO-8601
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.decode import MAX_EVENT_MS, MIN_EVENT_MS

ENTITY_COLUMN = "entity_id"
TIMESTAMP_COLUMN = "timestamp"


class BadLabel(ValueError):
    """A label row that names no entity or no usable time; the message says which."""


class LabelRow(NamedTuple):
    """One parsed label row.

    Attributes:
        entity: the entity id, as text (event ids are compared as text).
        at_ms: the label time, epoch ms.
        position: ``(file number, row number)``, both from 0: the row's place in
            the label files, which the training set keeps.
        row: every column of the row, unchanged.
    """

    entity: str
    at_ms: int
    position: tuple[int, int]
    row: dict[str, Any]


def label_files(pattern: str) -> list[str]:
    """The files ``pattern`` matches, sorted; none is an error."""
    matches = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in matches)
    if not paths:
        raise FileNotFoundError(f"no label file matches {pattern!r}")
    return paths


def is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def label_schema(path: str) -> pa.Schema:
    """The columns of a label file: a Parquet file's own schema; a CSV header's
    columns as strings (CSV values are passed through as the text they are)."""
    with FileSystems.open(path) as f:
        if is_parquet(path):
            return pq.read_schema(f)
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        header = next(csv.reader(text), None)
    if not header:
        raise ValueError(f"{path}: a CSV label file needs a header line")
    return pa.schema([(name, pa.string()) for name in header])


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one label file as dicts, in file order."""
    with FileSystems.open(path) as f:
        if is_parquet(path):
            for batch in pq.ParquetFile(f).iter_batches(batch_size=10_000):
                yield from batch.to_pylist()
            return
        yield from csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))


def parse_time_ms(value: Any) -> int:
    """Epoch milliseconds from epoch ms (a number or digits) or ISO-8601 text or a datetime."""
    if isinstance(value, bool) or value is None or value == "":
        raise BadLabel(f"timestamp {value!r} is missing")
    if isinstance(value, dt.datetime):
        ms = _datetime_ms(value)
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise BadLabel(f"timestamp {value!r} is not a whole number of milliseconds")
        ms = int(value)
    else:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            ms = int(text)
        else:
            try:
                ms = _datetime_ms(dt.datetime.fromisoformat(text))
            except ValueError:
                raise BadLabel(f"timestamp {value!r} is neither epoch milliseconds "
                               f"nor ISO-8601") from None
    if not MIN_EVENT_MS <= ms <= MAX_EVENT_MS:
        raise BadLabel(f"timestamp {value!r} is outside Beam's timestamp range")
    return ms


def _datetime_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return delta // dt.timedelta(milliseconds=1)


def parse_row(row: dict[str, Any], position: tuple[int, int], entity_column: str,
              timestamp_column: str) -> LabelRow:
    """A ``LabelRow``, or ``BadLabel`` naming what is wrong with the row."""
    entity = row.get(entity_column)
    if entity is None or (isinstance(entity, str) and not entity.strip()):
        raise BadLabel(f"no {entity_column}")
    if timestamp_column not in row:
        raise BadLabel(f"no {timestamp_column} column")
    return LabelRow(str(entity), parse_time_ms(row[timestamp_column]), position, row)
