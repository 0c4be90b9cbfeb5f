"""Declarations in, Beam transforms out: how a pipeline's features are computed.

``FeatureEngine(features, settings).expand(events)`` keys the events by each
entity the features name and computes every feature of that entity, by one
of two engines:

- ``fused`` (the default): ONE keyed stateful stage per entity
  (``transforms.fused.FusedFeatures``) evaluates all of its features with
  one state read and write and one timer family per key and bundle;
- ``stages``: a keyed stage per feature group, each behind its own filter
  (the shape savepoints of earlier job versions hold).

A feature is computed by the part for its window kind, with the
aggregation's accumulator (``transforms.aggregations``):

============  =====================================================
window        part
============  =====================================================
tumbling      ``TumblingAggregate`` (``FixedWindows`` assignment)
sliding       ``SlidingAggregate`` (tiles: ``FixedWindows(tile)``)
session       ``SessionFeatures`` (a count and the span, ``Sessions``)
lifetime      ``LifetimeCounts`` (a count and a ``count_by`` with one
              filter share a state cell) or ``LifetimeAggregate``
============  =====================================================

Both engines give the same updates (``tests/streaming/test_fused.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms.core import DoFn
from apache_beam.transforms.userstate import TimerSpec, get_dofn_specs

from transforms.counters import LifetimeCounts
from transforms.declarations import DeclarationError, Feature
from transforms.decode import DEAD, KeyedRecords
from transforms.fused import FusedFeatures
from transforms.keys import KeyByEntity
from transforms.late import LATE
from transforms.lifetime import LifetimeAggregate
from transforms.sessions import SessionFeatures
from transforms.sliding import SlidingAggregate, SlidingSum
from transforms.tumbling import TumblingAggregate, TumblingSum

ENGINES = ("fused", "stages")


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Run-time settings that override or complete the declarations.

    Attributes:
        engine: ``fused`` or ``stages``.
        watermark_delay_ms: bounded out-of-orderness (``late.EventClock``).
        allowed_lateness_ms: overrides every feature's declared lateness.
        tile_ms: overrides the tile of every sliding feature (must divide its size).
        state_ttl_s: overrides the declared state TTL of lifetime features.
        early_firings: False turns every feature's speculative values off.
        speculative: how often speculative updates leave the fused stage
            (``transforms.fused.SPECULATIVE``); the stages engine emits each one.
        timer_grid_ms: the fused stage's runner timers on this grid of event time
            (``transforms.fused.FusedFeatures``); 0: one per time a feature waits for.
        step_names: renames of the default step names (stable names for
            savepoints taken by an earlier version of a pipeline).
    """

    engine: str = "fused"
    watermark_delay_ms: int = 0
    allowed_lateness_ms: int | None = None
    tile_ms: int | None = None
    state_ttl_s: float | None = None
    early_firings: bool = True
    speculative: str = "every_element"
    timer_grid_ms: int = 0
    step_names: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Group:
    """Features computed by one part: one state entry, one stage on the stages engine."""

    label: str
    transform: beam.PTransform
    where: Callable[[dict[str, Any]], bool] | None
    has_late: bool


def _renamed_timers(fn: DoFn, suffix: str) -> DoFn:
    """``fn`` as an instance of a subclass whose timer families end in ``suffix``.

    Beam's FnApiRunner (the DirectRunner) buffers the timers a fused stage sets
    by timer family name alone, so two stages of one DoFn class fed by one
    PCollection would lose each other's timers. Renaming the second one's
    families keeps them apart; the first keeps its names (and its savepoints).
    """
    renamed: dict[TimerSpec, TimerSpec] = {}

    def rewrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: DoFn, *args: Any, **kwargs: Any) -> Any:
            return method(self, *args, **kwargs)
        sig = inspect.signature(method)
        params = []
        for p in sig.parameters.values():
            spec = getattr(p.default, "timer_spec", None)
            if spec is not None:
                if spec not in renamed:
                    renamed[spec] = TimerSpec(spec.name + suffix, spec.time_domain)
                p = p.replace(default=DoFn.TimerParam(renamed[spec]))
            params.append(p)
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__name__ = method.__name__
        return wrapper

    _, timer_specs = get_dofn_specs(fn)
    attrs: dict[str, Any] = {"process": rewrap(type(fn).process)}
    for spec in timer_specs:
        callback = spec._attached_callback
        attrs[callback.__name__] = rewrap(callback)
    for spec in timer_specs:  # the callbacks' own timer parameters are renamed by now
        if spec not in renamed:
            renamed[spec] = TimerSpec(spec.name + suffix, spec.time_domain)
        renamed[spec]._attached_callback = attrs[spec._attached_callback.__name__]
    cls = type(type(fn).__name__ + suffix, (type(fn),), attrs)
    copy = cls.__new__(cls)
    copy.__dict__.update(fn.__dict__)
    return copy


def _distinct_timer_families(groups: list[_Group]) -> None:
    """Gives each stage of a DoFn class after the first its own timer families."""
    seen: dict[type, int] = {}
    for g in groups:
        kind = type(g.transform.fn)
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] > 1:
            g.transform.fn = _renamed_timers(g.transform.fn, f"_{seen[kind]}")


def camel(name: str) -> str:
    """``txn_total_5m`` -> ``TxnTotal5m`` (step labels)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


class FeatureEngine:
    """Compiles one pipeline's declarations into Beam transforms.

    Args:
        features: the pipeline's declarations (one or more entities).
        settings: run-time overrides and the engine.
        pipeline: the pipeline's name (labels steps, e.g. ``RideFeatures``).
    """

    def __init__(self, features: Sequence[Feature], settings: EngineSettings,
                 pipeline: str) -> None:
        if settings.engine not in ENGINES:
            raise ValueError(f"engine {settings.engine!r} is not one of {', '.join(ENGINES)}")
        if settings.engine == "stages" and settings.speculative != "every_element":
            raise ValueError("the stages engine emits every speculative update: "
                             f"speculative {settings.speculative!r} needs engine 'fused'")
        if not features:
            raise DeclarationError(f"pipeline {pipeline!r} declares no features")
        salted = [f.name for f in features if f.hot_key_fanout]
        if salted:
            # A salted key spreads one entity's events over sub-keys; a keyed stateful
            # stage then holds partial state per sub-key, and publishing a feature
            # would need a second keyed stage merging them by the hot key again.
            raise DeclarationError(
                f"features {salted}: hot_key_fanout applies to combines on the runner's "
                f"GroupByKey (transforms.hot_keys.SaltedCombinePerKey); the stateful "
                f"engine keeps one state per entity and cannot salt it")
        self._settings = settings
        self._pipeline = pipeline
        self._by_entity: dict[str, list[_Group]] = {}
        for entity in dict.fromkeys(f.entity for f in features):
            self._by_entity[entity] = self._groups([f for f in features if f.entity == entity])
            if settings.engine == "stages":
                _distinct_timer_families(self._by_entity[entity])

    def _name(self, label: str) -> str:
        return self._settings.step_names.get(label, label)

    def _lateness(self, f: Feature) -> int:
        s = self._settings.allowed_lateness_ms
        return f.allowed_lateness_ms if s is None else s

    def _ttl_ms(self, f: Feature) -> int | None:
        ttl_s = self._settings.state_ttl_s or f.state_ttl_s
        return int(ttl_s * 1000) if ttl_s else None

    def _tile_ms(self, f: Feature) -> int:
        tile = self._settings.tile_ms or round(f.window.tile_s * 1000)
        if tile <= 0 or f.window_ms % tile:
            raise DeclarationError(f"feature {f.name!r}: tile {tile} ms does not divide "
                                   f"its {f.window_ms} ms window")
        return tile

    def _groups(self, features: list[Feature]) -> list[_Group]:
        groups: list[_Group] = []
        delay = self._settings.watermark_delay_ms
        sessions = [f for f in features if f.window_kind == "session"]
        lifetime = [f for f in features if f.window_kind == "lifetime"]
        for f in features:
            agg, common = f.aggregation, dict(time_field=f.time_field,
                                              entity_type=f.entity_type,
                                              watermark_delay_ms=delay)
            if f.window_kind == "tumbling":
                early = f.early_firing == "every_element" and self._settings.early_firings
                if agg.op == "sum":
                    t: beam.PTransform = TumblingSum(
                        f.name, agg.field, size_ms=f.window_ms,
                        allowed_lateness_ms=self._lateness(f), early_firings=early, **common)
                else:
                    t = TumblingAggregate(
                        f.name, agg.field, agg.op, size_ms=f.window_ms,
                        allowed_lateness_ms=self._lateness(f), early_firings=early,
                        max_distinct=agg.max_distinct, default=f.default, **common)
                groups.append(_Group(camel(f.name), t, f.where, True))
            elif f.window_kind == "sliding":
                if agg.op == "sum":
                    t = SlidingSum(f.name, agg.field, window_ms=f.window_ms,
                                   tile_ms=self._tile_ms(f),
                                   allowed_lateness_ms=self._lateness(f), **common)
                else:
                    t = SlidingAggregate(f.name, agg.field, agg.op, window_ms=f.window_ms,
                                         tile_ms=self._tile_ms(f),
                                         allowed_lateness_ms=self._lateness(f),
                                         max_distinct=agg.max_distinct, default=f.default,
                                         **common)
                groups.append(_Group(camel(f.name), t, f.where, True))
        groups.extend(self._session_groups(sessions))
        groups.extend(self._lifetime_groups(lifetime))
        return groups

    def _session_groups(self, features: list[Feature]) -> list[_Group]:
        """Sessions of one gap and lateness share a part: a count and a span each."""
        groups = []
        pending = list(features)
        while pending:
            first = pending[0]
            same = [f for f in pending if f.window_ms == first.window_ms
                    and self._lateness(f) == self._lateness(first)]
            counts = [f for f in same if f.aggregation.op == "count"][:1]
            spans = [f for f in same if f.aggregation.op == "span_s"][:1]
            taken = counts + spans
            count_f = counts[0] if counts else None
            span_f = spans[0] if spans else None
            where = count_f.where if count_f else None
            t = SessionFeatures(
                count_f.name if count_f else None, span_f.name if span_f else None,
                gap_ms=first.window_ms, allowed_lateness_ms=self._lateness(first),
                click_type=where.equals if where else None,
                type_field=where.field if where else None,
                time_field=first.time_field, entity_type=first.entity_type,
                watermark_delay_ms=self._settings.watermark_delay_ms)
            label = "Sessions" if not groups else f"Sessions{len(groups) + 1}"
            groups.append(_Group(label, t, None, True))
            pending = [f for f in pending if f not in taken]
        return groups

    def _lifetime_groups(self, features: list[Feature]) -> list[_Group]:
        """A count and a count_by with one filter share ``LifetimeCounts``' state."""
        groups = []
        rest = list(features)
        for total in [f for f in features if f.aggregation.op == "count"]:
            by = next((f for f in rest if f.aggregation.op == "count_by"
                       and f.where == total.where and f.state_ttl_s == total.state_ttl_s),
                      None)
            if by is None or total not in rest:
                continue
            t = LifetimeCounts(total.name, by.name, by.aggregation.field,
                               ttl_ms=self._ttl_ms(total), time_field=total.time_field,
                               entity_type=total.entity_type,
                               watermark_delay_ms=self._settings.watermark_delay_ms)
            label = f"{camel(self._pipeline)}Counts"
            groups.append(_Group(label if not groups else camel(total.name), t, total.where,
                                 False))
            rest = [f for f in rest if f not in (total, by)]
        for f in rest:
            agg = f.aggregation
            t = LifetimeAggregate(f.name, agg.field, agg.op, ttl_ms=self._ttl_ms(f),
                                  time_field=f.time_field, entity_type=f.entity_type,
                                  watermark_delay_ms=self._settings.watermark_delay_ms,
                                  max_distinct=agg.max_distinct, default=f.default)
            groups.append(_Group(camel(f.name), t, f.where, False))
        return groups

    def fused_fns(self) -> dict[str, DoFn]:
        """Per entity field, the fused stage's DoFn (one keyed step for all its
        features): what ``expand`` runs with ``engine="fused"``, for callers that
        drive it outside a pipeline (the benchmarks' plain Python consumer)."""
        return {entity: FusedFeatures([(g.label, g.transform.fn, g.where)
                                       for g in groups],
                                      timer_grid_ms=self._settings.timer_grid_ms).fn
                for entity, groups in self._by_entity.items()}

    def expand(self, events: beam.PCollection | KeyedRecords
               ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
        """Adds the feature steps to ``events``; returns (update streams, late event streams).

        ``KeyedRecords`` (raw records keyed by entity) go straight into the fused
        stage, which decodes them and adds its dead letters to ``events.dead``.
        """
        if isinstance(events, KeyedRecords):
            return self._expand_records(events)
        updates: list[beam.PCollection] = []
        late: list[beam.PCollection] = []
        for entity, groups in self._by_entity.items():
            keyed = events | self._name(f"KeyBy{camel(entity.removesuffix('Id'))}") >> (
                KeyByEntity(entity))
            if self._settings.engine == "fused":
                label = f"{camel(self._pipeline)}Features"
                if len(self._by_entity) > 1:
                    label += camel(entity)
                out = keyed | self._name(label) >> FusedFeatures(
                    [(g.label, g.transform.fn, g.where) for g in groups],
                    speculative=self._settings.speculative,
                    timer_grid_ms=self._settings.timer_grid_ms)
                updates.append(out["updates"])
                late.append(out[LATE])
                continue
            filtered: dict[Any, beam.PCollection] = {None: keyed}
            for g in groups:
                if g.where not in filtered:
                    label = f"Only{camel(str(g.where.equals).lower())}s"
                    filtered[g.where] = keyed | self._name(label) >> beam.Filter(
                        lambda kv, where=g.where: where(kv[1]))
                out = filtered[g.where] | self._name(g.label) >> g.transform
                if g.has_late:
                    updates.append(out["updates"])
                    late.append(out[LATE])
                else:
                    updates.append(out)
        return updates, late

    def _expand_records(self, records: KeyedRecords
                        ) -> tuple[list[beam.PCollection], list[beam.PCollection]]:
        entity = records.decoder.entity
        if self._settings.engine != "fused" or list(self._by_entity) != [entity]:
            raise ValueError(
                f"records keyed by {entity} are decoded in the fused stage of a pipeline "
                f"whose features all key by {entity}: engine {self._settings.engine!r}, "
                f"entities {sorted(self._by_entity)}")
        groups = self._by_entity[entity]
        out = records.records | self._name(f"{camel(self._pipeline)}Features") >> (
            FusedFeatures([(g.label, g.transform.fn, g.where) for g in groups],
                          records.decoder, self._settings.speculative,
                          self._settings.timer_grid_ms))
        records.dead.append(out[DEAD])
        return [out["updates"]], [out[LATE]]
