"""One keyed stage for all of an entity's features: one state cell, one timer family.

On Flink each keyed Python stage costs a state read, a state write and timer
traffic between the runner and the Python worker, per key and bundle: a
pipeline with one stage per feature pays it once per feature.
``FusedFeatures`` runs several feature DoFns (``TumblingSum``'s,
``SessionFeatures``', ``LifetimeCounts``', ``SlidingSum``'s, unchanged) inside
one stateful DoFn: each part keeps its own state as an entry of one state
cell, and asks for timers through one dynamic timer family. When a time
fires, exactly the parts that asked for it are called back, with the same
timestamp, so each part computes what it computes as a stage of its own.

The runner learns a key's timers once per bundle: the stage compares, at the
bundle's end, the times set on the runner when the bundle first saw the key
with the times its parts wait for then, and sets or clears only the
difference. A session moves its close at every event: set at once, that is
4 runner calls per event, each a write to Flink's timer state. Outside a
bundle (``transforms.replay``) the timers are set at once. On a timer grid
the runner holds one time per key and grid step for all the times in it.

Given a ``RecordDecoder``, the stage takes a topic's raw records keyed by
entity and decodes them itself (``KeyedRecords``): one Python step per event
where a decode step before the key shuffle makes two. Its dead letters leave
on the tagged output ``dead``.

A part is ``(label, dofn, where)``: ``where`` picks the events it sees (the
filter step that would stand before its own stage).

Every update leaves the stage stamped with when it became visible in event
time (``visible_ms``: the key's newest event time processed so far, or the
time of the timer that emitted it) and its place in the key's emission order
(``seq``): what the feature log needs to say, for any event time T, which
value the online store held for the key once its events up to T were in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.transforms.core import DoFn
from apache_beam.transforms.userstate import (
    ReadModifyWriteStateSpec,
    TimerSpec,
    get_dofn_specs,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.decode import DEAD, RecordDecoder
from transforms.late import LATE, MAX_TIMER_MS
from transforms.model import DeadLetter, FeatureUpdate
from transforms.state_layout import StateLayout

# The cell: {"<part>/<state>": that state's value, "_t": {"<part>/<timer>": [times]},
#            "_s": the key's newest event time (ms), "_n": its next update's seq}
LAYOUT = StateLayout("FusedFeatures")  # version 1: see transforms/state_layout.py
_TIMERS = "_t"
_SEEN = "_s"
_SEQ = "_n"
_BOOKKEEPING = frozenset((_TIMERS, _SEEN, _SEQ, "_v"))
_NEW_UPDATE = tuple.__new__
_MAX_TIMER_MICROS = MAX_TIMER_MS * 1000

Part = tuple[str, DoFn, Callable[[dict[str, Any]], bool] | None]
# A speculative update held for the bundle's end: (as its part made it, visible_ms,
# seq, element timestamp).
_Held = tuple[FeatureUpdate, int, int, Timestamp]

# How often a feature's speculative values leave the stage: each one, or per
# entity and feature the one the sink keeps of a bundle's, at the bundle's end.
SPECULATIVE = ("every_element", "per_bundle")


class FeaturePart(beam.PTransform):
    """A feature transform around one stateful DoFn (``fn``), which ``FusedFeatures``
    can host beside others and ``transforms.engine`` may replace (renamed timers)."""

    _fn: DoFn

    @property
    def fn(self) -> DoFn:
        return self._fn

    @fn.setter
    def fn(self, fn: DoFn) -> None:
        self._fn = fn


class _CellState:
    """A part's ReadModifyWriteState, kept in one entry of the shared cell."""

    def __init__(self, cell: dict[str, Any], name: str) -> None:
        self._cell = cell
        self._name = name

    def read(self) -> Any:
        return self._cell.get(self._name)

    def write(self, value: Any) -> None:
        self._cell[self._name] = value

    def clear(self) -> None:
        self._cell.pop(self._name, None)


class _CellTimer:
    """A part's timer: a dynamic one keeps every time set (one per tag), a static
    one only its latest; the shared timer family fires them."""

    def __init__(self, cell: dict[str, Any], name: str) -> None:
        self._cell = cell
        self._name = name

    def set(self, ts: Timestamp, dynamic_timer_tag: str = "") -> None:
        self._set(Timestamp.of(ts).micros, bool(dynamic_timer_tag))

    def clear(self, dynamic_timer_tag: str = "") -> None:
        if not dynamic_timer_tag:
            self._cell.get(_TIMERS, {}).pop(self._name, None)
            return
        self.clear_ms(int(dynamic_timer_tag))  # the parts' tags are their times in ms

    def set_ms(self, at_ms: int, dynamic: bool = True) -> None:
        """``set`` at epoch ms ``at_ms`` (``transforms.late`` sets timers so, with no
        ``Timestamp`` or tag made per event): tagged by its time, or the static one."""
        self._set(at_ms * 1000, dynamic)

    def clear_ms(self, at_ms: int) -> None:
        """Clears the dynamic time ``at_ms`` (epoch ms)."""
        timers = self._cell.get(_TIMERS, {})
        times = timers.get(self._name)
        micros = at_ms * 1000
        if times and micros in times:
            times.remove(micros)
            if not times:
                del timers[self._name]

    def _set(self, micros: int, dynamic: bool) -> None:
        timers = self._cell.setdefault(_TIMERS, {})
        if dynamic:
            times = timers.setdefault(self._name, [])
            if micros not in times:
                times.append(micros)
        else:
            timers[self._name] = [micros]


# What a hosted method's parameter receives: (name, kind, state or timer name).
_Param = tuple[str, str, str]


def _params(label: str, method: Callable[..., Any]) -> list[_Param]:
    """Resolves a hosted method's Beam parameters once, when the stage is built."""
    out = []
    for name, p in inspect.signature(method).parameters.items():
        param = p.default
        if param is inspect.Parameter.empty:
            continue
        if param == DoFn.KeyParam:
            out.append((name, "key", ""))
        elif param == DoFn.TimestampParam:
            out.append((name, "timestamp", ""))
        elif hasattr(param, "state_spec"):
            out.append((name, "state", f"{label}/{param.state_spec.name}"))
        elif hasattr(param, "timer_spec"):
            out.append((name, "timer", f"{label}/{param.timer_spec.name}"))
        else:
            raise TypeError(f"{label}: FusedFeatures cannot pass {name}={param!r}")
    return out


class _Part:
    """One hosted DoFn: how to call its ``process`` and its timer callbacks."""

    def __init__(self, label: str, fn: DoFn, where: Callable[[dict[str, Any]], bool] | None
                 ) -> None:
        self.label = label
        self.fn = fn
        self.where = where
        _, timer_specs = get_dofn_specs(fn)
        # timer name -> (callback, its parameters); in a fixed order
        self.callbacks = {f"{label}/{spec.name}": (spec._attached_callback,
                                                   _params(label, spec._attached_callback))
                          for spec in sorted(timer_specs, key=lambda s: s.name)}
        self.process_params = _params(label, fn.process)

    @staticmethod
    def kwargs(params: list[_Param], cell: dict[str, Any], key: str | None = None,
               fired: Timestamp | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kind, cell_name in params:
            if kind == "state":
                out[name] = _CellState(cell, cell_name)
            elif kind == "timer":
                out[name] = _CellTimer(cell, cell_name)
            else:
                out[name] = key if kind == "key" else fired
        return out


class _FusedFn(beam.DoFn):
    CELL = ReadModifyWriteStateSpec("features", FastPrimitivesCoder())
    FIRE = TimerSpec("features_fire", beam.TimeDomain.WATERMARK)

    def __init__(self, parts: Sequence[Part], decoder: RecordDecoder | None = None,
                 speculative: str = "every_element", timer_grid_ms: int = 0) -> None:
        labels = [label for label, _, _ in parts]
        if len(set(labels)) != len(labels) or any("/" in label for label in labels):
            raise ValueError(f"part labels must be distinct and have no '/': {labels}")
        self._parts = [_Part(*p) for p in parts]
        # Every part's timer callbacks, in a fixed order: (part, timer name, callback).
        self._callbacks = [(part, name, callback) for part in self._parts
                           for name, callback in part.callbacks.items()]
        # Per key touched in the open bundle: [its timer, the times set on the
        # runner, its cell]; None outside a bundle (timers are then set at once).
        self._touched: dict[str, list[Any]] | None = None
        self._decoder = decoder
        if speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE)}: "
                             f"{speculative!r}")
        self._per_bundle = speculative == "per_bundle"
        # Per (entity, feature), the speculative update held for the bundle's end as its
        # part made it, its visible_ms and seq, and its element timestamp (stamped when it
        # leaves: most held updates never do); None outside a bundle (updates then
        # leave at once).
        self._held: dict[tuple[str, str], _Held] | None = None
        if timer_grid_ms < 0:
            raise ValueError(f"timer_grid_ms must be >= 0: {timer_grid_ms}")
        self._grid = timer_grid_ms * 1000  # micros; 0: each time a runner timer

    def start_bundle(self) -> None:
        self._touched = {}
        if self._per_bundle:
            self._held = {}

    def finish_bundle(self) -> list[WindowedValue] | None:
        """Sets and clears, per key, only the difference between the times set on the
        runner when the bundle first saw the key and the times its parts wait for now:
        a key's events that move its timers (a session's close, at every event) cost
        one runner timer per time per bundle, not one per event. Returns the
        speculative updates held for the bundle's end (``per_bundle``), if any."""
        touched, self._touched = self._touched or {}, None
        for fire, on_runner, cell in touched.values():
            self._sync_timers(fire, on_runner, self._armed(cell))
        # Not a generator: the timers above are synced whether or not the caller
        # iterates what the bundle's end emits.
        held, self._held = self._held, None
        if not held:
            return None
        window = (GlobalWindow(),)
        return [WindowedValue(_NEW_UPDATE(FeatureUpdate, (*update[:6], visible_ms, seq)),
                              timestamp, window)
                for update, visible_ms, seq, timestamp in held.values()]

    @staticmethod
    def _hold(held: dict[tuple[str, str], _Held], update: FeatureUpdate, visible_ms: int,
              seq: int, timestamp: Timestamp) -> bool:
        """Per bundle: keeps a speculative update back for the bundle's end if the
        sink would keep it over the one held for its feature (True: not emitted
        now). A final update always leaves at once, and drops the speculative
        one held for its feature when the sink would keep the final instead."""
        key = (update.entity_id, update.feature)
        pending = held.get(key)
        if update.final:
            if pending is not None and update.newer_than(pending[0]):
                del held[key]
            return False
        if pending is None or update.newer_than(pending[0]):
            held[key] = (update, visible_ms, seq, timestamp)
        return True

    def _defer(self, key: str, fire: Any, cell: dict[str, Any], fired: int | None = None
               ) -> bool:
        """Notes ``key``'s timers for the bundle's end; False outside a bundle."""
        if self._touched is None:
            return False
        entry = self._touched.get(key)
        if entry is None:
            entry = self._touched[key] = [fire, self._armed(cell), cell]
        else:
            entry[0], entry[2] = fire, cell
        if fired is not None:
            entry[1].discard(fired)  # the runner has consumed the time that fired
        return True

    def _armed(self, cell: dict[str, Any]) -> set[int]:
        """The runner times the parts' times need: each time, or with a grid, the
        grid point at or after it (one runner timer for all of a key's times in
        a grid step)."""
        grid = self._grid or 1  # a grid of one microsecond: each time itself
        return {min(-(-m // grid) * grid, _MAX_TIMER_MICROS)
                for times in cell.get(_TIMERS, {}).values() for m in times}

    @staticmethod
    def _sync_timers(fire: Any, before: set[int], after: set[int]) -> None:
        """Sets the times newly waited for and clears those no part waits for any
        more (a static timer set anew, a timer a part cleared): a time nobody
        needs never fires, and each time is one runner timer however many ask."""
        for micros in after - before:
            fire.set(Timestamp(micros=micros), dynamic_timer_tag=str(micros))
        for micros in before - after:
            fire.clear(dynamic_timer_tag=str(micros))

    def _stamped(self, outputs: Iterable[Any], cell: dict[str, Any], visible_ms: int,
                 timestamp: Timestamp) -> Iterator[Any]:
        """The updates of ``outputs`` with ``visible_ms`` and the key's next seqs, less
        those held for the bundle's end."""
        seq = cell.get(_SEQ, 0)
        held = self._held
        for out in outputs:
            if type(out) is FeatureUpdate:
                seq += 1
                if held is not None and self._hold(held, out, visible_ms, seq - 1, timestamp):
                    continue
                # A NamedTuple's _replace costs a few microseconds; this a fraction.
                out = _NEW_UPDATE(FeatureUpdate, (*out[:6], visible_ms, seq - 1))
            yield out
        cell[_SEQ] = seq

    def process(self, kv: tuple[Any, Any],
                timestamp=beam.DoFn.TimestampParam,
                cell_state=beam.DoFn.StateParam(CELL),
                fire=beam.DoFn.TimerParam(FIRE)) -> Iterator[Any]:
        if self._decoder is None:
            seen = timestamp.micros // 1000
        else:
            kv = self._decoder(kv)
            if type(kv) is DeadLetter:
                yield pvalue.TaggedOutput(DEAD, kv)
                return
            seen = kv[1][self._decoder.time_field]
        key, event = kv
        cell = LAYOUT.read(cell_state) or LAYOUT.new()
        deferred = self._defer(key, fire, cell)
        before = None if deferred else self._armed(cell)
        if _SEEN in cell and cell[_SEEN] > seen:
            seen = cell[_SEEN]
        cell[_SEEN] = seen
        for part in self._parts:
            if part.where is None or part.where(event):
                yield from self._stamped(
                    part.fn.process(kv, **part.kwargs(part.process_params, cell)), cell, seen,
                    timestamp)
        if before is not None:
            self._sync_timers(fire, before, self._armed(cell))
        cell_state.write(cell)

    def _due(self, timers: dict[str, list[int]], micros: int
             ) -> list[tuple[int, int, _Part, str, tuple[Callable[..., Any], list[_Param]]]]:
        """The part times a runner firing at ``micros`` is for, oldest first (ties in
        the parts' order): exactly ``micros``, or with a grid every time up to it.
        A time a callback sets anew within the firing is set on the runner again."""
        due = []
        for order, (part, name, callback) in enumerate(self._callbacks):
            times = timers.get(name)
            if not times:
                continue
            if self._grid:
                due.extend((m, order, part, name, callback) for m in times if m <= micros)
            elif micros in times:
                due.append((micros, order, part, name, callback))
        due.sort(key=lambda d: (d[0], d[1]))
        return due

    @on_timer(FIRE)
    def _fire(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
              cell_state=beam.DoFn.StateParam(CELL),
              fire=beam.DoFn.TimerParam(FIRE)) -> Iterator[Any]:
        if self._decoder is not None:
            key = key.decode()  # the record key: the entity id's bytes
        cell = LAYOUT.read(cell_state)
        micros = Timestamp.of(fired).micros
        if cell is None:
            if self._touched is not None and key in self._touched:
                self._touched[key][1].discard(micros)
            return
        timers = cell.get(_TIMERS, {})
        deferred = self._defer(key, fire, cell, fired=micros)
        before = None if deferred else self._armed(cell) - {micros}
        visible_ms = micros // 1000
        for at, _, part, name, (callback, params) in self._due(timers, micros):
            times = timers.get(name)
            if not times or at not in times:
                continue  # cleared by a callback called before it
            times.remove(at)
            if not times:
                del timers[name]
            at_ts = fired if at == micros else Timestamp(micros=at)
            kwargs = part.kwargs(params, cell, key, at_ts)
            yield from self._stamped(callback(part.fn, **kwargs) or (), cell, visible_ms,
                                     fired)
        if before is not None:
            self._sync_timers(fire, before, self._armed(cell))
        if any(k not in _BOOKKEEPING for k in cell) or cell.get(_TIMERS):
            cell_state.write(cell)
        else:
            cell_state.clear()


class FusedFeatures(beam.PTransform):
    """All of an entity's features in one keyed stateful stage.

    Input: ``(entity_id, event)``, or with ``decoder`` the raw ``(record key,
    value)``. Main output ``updates``: the ``FeatureUpdate``s of every part;
    tagged ``late``: the parts' too-late events (each names its feature); with
    ``decoder``, tagged ``dead``: the records it could not decode.

    Args:
        parts: ``(label, dofn, where)`` per part: a stable label (it names the
            part's state), the feature DoFn of a feature transform (its ``_fn``),
            and the filter of the events it takes (None: all).
        decoder: decodes the raw records the stage takes (None: it takes events).
        speculative: ``every_element``: every speculative update leaves the stage;
            ``per_bundle``: per entity and feature, only the one the sink keeps of a
            bundle's speculative updates leaves it, at the bundle's end (the online
            store is written once per entity and bundle either way: it gets the same
            values; the feature log and the speculative-update counters see fewer).
            Final updates always leave at once.
        timer_grid_ms: 0: a runner timer per time the parts wait for. Else the
            runner timers sit on this grid of event time: per key, one timer per
            grid step fires every part time in the step, in order, each with its
            own time, as a runner whose watermark moves only to grid points would
            (values, late events and finals are those; finals and expiries show up
            to a step later, stamped ``visible_ms`` with the grid time). In a
            backlog the watermark moves seconds at a step and a key's times in
            one step fire in one runner call instead of one each.
    """

    def __init__(self, parts: Sequence[Part], decoder: RecordDecoder | None = None,
                 speculative: str = "every_element", timer_grid_ms: int = 0) -> None:
        super().__init__()
        self._decoder = decoder
        self._speculative = speculative
        self._fn = _FusedFn(parts, decoder, speculative, timer_grid_ms)

    @property
    def fn(self) -> DoFn:
        """The keyed stateful DoFn: one state cell ``features`` and one timer family."""
        return self._fn

    def expand(self, keyed: beam.PCollection) -> pvalue.DoOutputsTuple:
        if self._speculative == "per_bundle" and not isinstance(
                keyed.windowing.windowfn, GlobalWindows):
            raise ValueError("speculative updates per bundle leave the stage in the global "
                             f"window; its input is windowed by {keyed.windowing.windowfn}")
        if self._decoder is not None:
            # Another step name: a savepoint of one input kind never restores into the other.
            return keyed | "FeaturesFromRecords" >> beam.ParDo(self._fn).with_output_types(
                FeatureUpdate).with_outputs(LATE, DEAD, main="updates")
        return keyed | "Features" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, dict[str, Any]]).with_output_types(FeatureUpdate).with_outputs(
            LATE, main="updates")
