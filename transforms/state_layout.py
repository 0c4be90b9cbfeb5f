"""Versioned state layouts: a job restores the state an older version of itself wrote.

Every stateful feature keeps one state cell per key holding a plain dict
(ints, floats, strings, lists, dicts) encoded by ``FastPrimitivesCoder``:
no pickled classes, so renaming or moving Python code never makes a
checkpoint unreadable. What can change between two versions of a job is the
dict's layout. Each DoFn declares its ``StateLayout``: a version number and
one upgrade function per older version. A cell is tagged ``"_v"`` with the
version that wrote it (no tag: version 1, the layout before tags existed), so

- state of an older version is upgraded on first read after a restore from
  a savepoint or retained checkpoint, key by key, lazily;
- state of a newer version (a rollback to an older job) stops the job with a
  ``StateLayoutError`` that says what to do, instead of misreading it.

Rules for changing a layout: bump ``version``, add the upgrade from the
previous version, never reuse a version number. Renaming a state or timer id
is not a layout change: the old cell would be orphaned (keep ids stable).

>>> layout = StateLayout("demo", 2, {1: lambda st: {"b": st["a"]}})
>>> layout.upgraded({"a": 1})
{'b': 1, '_v': 2}
>>> layout.new(b=0)
{'b': 0, '_v': 2}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TAG = "_v"

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]


class StateLayoutError(RuntimeError):
    """State written by a layout this version of the job cannot read."""


@dataclass(frozen=True)
class StateLayout:
    """The layout of one DoFn's state dict.

    Attributes:
        owner: who owns the state (named in errors), e.g. ``"LifetimeCounts"``.
        version: the layout this code writes (1 = untagged).
        upgrades: ``{v: fn}``: turns a version-``v`` dict into version ``v + 1``.
    """

    owner: str
    version: int = 1
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [v for v in range(1, self.version) if v not in self.upgrades]
        if missing:
            raise ValueError(f"{self.owner}: no upgrade from layout version(s) {missing}")

    def new(self, **fields: Any) -> dict[str, Any]:
        """A fresh state dict in this layout."""
        if self.version > 1:
            fields[TAG] = self.version
        return fields

    def read(self, cell: Any) -> dict[str, Any] | None:
        """The cell's dict in this layout (``None`` if the cell is empty)."""
        st = cell.read()
        if st is None or st.get(TAG, 1) == self.version:
            return st
        return self.upgraded(st)

    def upgraded(self, st: dict[str, Any]) -> dict[str, Any]:
        written = st.get(TAG, 1)
        if written > self.version:
            raise StateLayoutError(
                f"{self.owner} state has layout version {written} but this job reads "
                f"versions up to {self.version}: the checkpoint or savepoint was written by a "
                f"newer version of the job. Restore it with that version (or newer), or "
                f"start this version without --savepoint_path and replay the topic from "
                f"offset 0 (the sink's as_of guard keeps Redis consistent).")
        for v in range(written, self.version):
            st = self.upgrades[v](st)
        st[TAG] = self.version
        return st
