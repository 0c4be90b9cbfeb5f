"""Section 1: what the feature transforms cost per event on the DirectRunner.

Both pipelines replay one generated stream (JSON lines, a few malformed) as
``python -m pipelines.<name> --runner=DirectRunner --input=... --dead_letter=...``
in a fresh interpreter, with no feature sink (the sink is section 2). Beside each, the
plain-Python loop of ``benchmarks.baseline`` runs over the same lines, and
``tests/reference.py`` for information. A second, profiled run (cProfile)
says where the time goes per event.

Events/s are given two ways: ``wall`` is all events over the whole command,
interpreter start, imports and pipeline construction included; ``marginal`` is the extra events
of the big run over its extra seconds compared to a small run, i.e. the rate
once started. A bounded replay fires its event-time timers only at the end
(the watermark jumps to +inf), so per-key state holds the whole replay while
it runs: that is the regime measured here.

With ``--before REV``, the same runs (same streams, same harness, interleaved
run by run so both see the same machine load) and the same profile are made
of the pipelines of commit ``REV`` too, exported with ``git archive`` into a
temporary directory and started from there (its own ``pipelines/``,
``transforms/``, ... first on ``sys.path``, checked once per run): the table
then shows before and after side by side.
"""

from __future__ import annotations

import json
import os
import pstats
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import baseline
from benchmarks.env import ROOT, export_commit
from benchmarks.measure import best_of
from benchmarks.store import RESULTS_DIR
from pipelines.generate import MALFORMED, StreamSpec, generate, write_jsonl
from tests import reference

NAME = "transform"
TITLE = "Transform cost: pipelines on the DirectRunner vs a plain-Python loop"

SIZES = {
    "quick": {"events": 10_000, "small": 1_000, "profile_events": 4_000, "users": 100,
              "repeats": 1, "top": 15},
    "full": {"events": 40_000, "small": 2_000, "profile_events": 20_000, "users": 1_000,
             "repeats": 2, "top": 25},
}

# name -> (module, plain loop, reference, features the loop's final values skip)
_PIPELINES = {
    "user": ("pipelines.user_features", baseline.user_loop, reference.user_features, ()),
    "ride": ("pipelines.ride_features", baseline.ride_loop, reference.ride_features,
             ("amount_sum_60s",)),
}

_OUR_DIRS = ("transforms", "pipelines", "serving", "runners")
_STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def _env(root: Path) -> dict[str, str]:
    """The environment of a pipeline run from the tree at ``root``: its code first."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(root) + (os.pathsep + path if path else "")}


def _pipeline_seconds(name: str, path: Path, workdir: Path, profile: Path | None = None,
                      root: Path = ROOT) -> tuple[float, float, dict[str, int]]:
    """(wall seconds, CPU seconds, counters) of one run of the pipeline's CLI.

    A fresh interpreter per run, as a user runs it: what the process has
    imported matters (Beam's state cache walks every module's globals when it
    sizes a value), so the benchmark's own imports must not leak in. With
    ``profile``, cProfile covers ``main()`` (imports excluded) and dumps there.
    ``root`` is the tree whose pipeline runs (the working tree, or an exported
    commit): the process starts there, so its packages come first on ``sys.path``.
    """
    args = ["--runner=DirectRunner", f"--input={path}",
            f"--dead_letter={workdir / f'{name}-dead.jsonl'}"]
    if profile is None:
        command = [sys.executable, "-m", _PIPELINES[name][0], *args]
    else:
        code = (f"import cProfile, sys; from {_PIPELINES[name][0]} import main; "
                "p = cProfile.Profile(); p.enable(); main(sys.argv[2:]); p.disable(); "
                "p.dump_stats(sys.argv[1])")
        command = [sys.executable, "-c", code, str(profile), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    counters = json.loads(done.stdout.strip().splitlines()[-1])
    counters.pop("pipeline", None)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, counters


def _category(filename: str, root: Path = ROOT) -> str:
    if filename.startswith(tuple(f"{root / d}/" for d in _OUR_DIRS)):
        return "ours"
    if "/apache_beam/" in filename:
        return "beam"
    if filename == "~" or filename.startswith("<"):
        return "builtin"
    if filename.startswith(_STDLIB) and "site-packages" not in filename:
        return "stdlib"
    return "other"


def _label(func: tuple[str, int, str], root: Path = ROOT) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    if filename.startswith(str(root) + "/"):
        filename = filename[len(str(root)) + 1:]
    elif filename.startswith(str(ROOT) + "/"):
        filename = filename[len(str(ROOT)) + 1:]
    elif "/site-packages/" in filename:
        filename = filename.split("/site-packages/", 1)[1]
    elif filename.startswith(_STDLIB):
        filename = filename[len(_STDLIB):]
    return f"{filename}:{line}({name})"


def profile_summary(profile: Path, events: int, top: int, root: Path = ROOT) -> dict[str, Any]:
    """Where the time went, in microseconds per event, from a cProfile dump.

    ``root``: the tree the profiled pipeline ran from (its files are "ours").
    """
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    rows = []
    for func, (_, ncalls, tottime, cumtime, _) in stats.items():
        rows.append({"function": _label(func, root), "category": _category(func[0], root),
                     "calls": ncalls, "calls_per_event": ncalls / events,
                     "own_us_per_event": tottime / events * 1e6,
                     "cum_us_per_event": cumtime / events * 1e6})
    total = sum(r["own_us_per_event"] for r in rows)
    by_category: dict[str, float] = {}
    for r in rows:
        by_category[r["category"]] = by_category.get(r["category"], 0.0) + r["own_us_per_event"]
    ours = [r for r in rows if r["category"] == "ours"]
    # Frames above the per-element work (run, process_bundle, ...) hold 100%
    # cumulative and say nothing; per-element code runs at least every 100 events.
    per_element = [r for r in rows if r["calls_per_event"] >= 0.01]
    return {
        "profiled_us_per_event": total,
        "own_us_per_event_by_category": dict(sorted(by_category.items(),
                                                    key=lambda kv: -kv[1])),
        "top_own": sorted(rows, key=lambda r: -r["own_us_per_event"])[:top],
        "top_cumulative": sorted(per_element, key=lambda r: -r["cum_us_per_event"])[:top],
        "ours_cumulative": sorted([r for r in ours if r in per_element],
                                  key=lambda r: -r["cum_us_per_event"])[:top],
    }


def _reference_run(lines: list[str], name: str) -> Any:
    _, _, ref, _ = _PIPELINES[name]
    fields = baseline.USER_FIELDS if name == "user" else baseline.RIDE_FIELDS
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if baseline._valid(record, fields):
            events.append(record)
    return ref(events)


@dataclass(frozen=True)
class Before:
    """The pipeline code of an older commit, exported to measure it beside the current one.

    Attributes:
        root: the exported tree.
        rev: the revision asked for (e.g. ``9d59315``).
        commit: the commit it names (12 hex digits).
        subject: that commit's subject line.
        imported_from: ``module -> __file__`` as a ``python -m`` run from ``root``
            imports them (proof that the exported code, not the checkout, runs).
    """

    root: Path
    rev: str
    commit: str
    subject: str
    imported_from: dict[str, str]


_WHERE = "_rtf_bench_where"


def export_before(rev: str, dest: Path) -> Before:
    """Exports commit ``rev`` into ``dest`` and checks that its pipelines import from there.

    The checkout is installed in editable mode; a ``python -m`` run puts its
    working directory first on ``sys.path``, so the exported packages win.
    Checked here once, with the same interpreter, directory and environment
    as the measured runs.
    """
    identity = export_commit(rev, dest)
    modules = [module for module, _, _, _ in _PIPELINES.values()] + ["transforms.decode"]
    (dest / f"{_WHERE}.py").write_text(
        "import importlib, json\n"
        f"print(json.dumps({{m: importlib.import_module(m).__file__ for m in {modules!r}}}))\n")
    done = subprocess.run([sys.executable, "-m", _WHERE], cwd=dest, env=_env(dest),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the pipelines of {rev} do not import:\n{done.stderr[-3000:]}")
    files = json.loads(done.stdout.strip().splitlines()[-1])
    stray = {m: f for m, f in files.items() if not Path(f).resolve().is_relative_to(dest.resolve())}
    if stray:
        raise RuntimeError(f"the exported tree of {rev} is shadowed: {stray} imported "
                           f"from outside {dest}")
    return Before(dest, rev, identity["commit"], identity["subject"],
                  {m: str(Path(f).relative_to(dest)) for m, f in files.items()})


def _rates(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Events/s of a (small, big) pair of best runs: wall, per CPU second, marginal."""
    small, big = runs
    events = big["events"]
    return {"pipeline_events_per_s": events / big["wall_s"],
            "pipeline_events_per_cpu_s": events / big["cpu_s"],
            "pipeline_marginal_events_per_s":
                (events - small["events"]) / (big["wall_s"] - small["wall_s"])}


def _bench_pipeline(name: str, size: dict[str, Any], workdir: Path,
                    before: Before | None = None) -> dict[str, Any]:
    _, loop, _, skip = _PIPELINES[name]
    trees = {"after": ROOT, **({"before": before.root} if before else {})}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in trees}
    for events in (size["small"], size["profile_events"], size["events"]):
        spec = StreamSpec(events=events, users=size["users"], seed=7)
        path = workdir / f"{name}-{events}.jsonl"
        write_jsonl(str(path), generate(name, spec), malformed=len(MALFORMED))
        if events == size["profile_events"]:
            continue  # profiled below, not timed
        best: dict[str, dict[str, Any]] = {}
        for _ in range(size["repeats"]):
            # Before and after alternate, so a burst of other work hits both alike.
            for side, root in trees.items():
                wall, cpu, counters = _pipeline_seconds(name, path, workdir, root=root)
                if counters.get("decode.events_valid") != events:
                    raise RuntimeError(f"{name} ({side}): {counters} after {events} events")
                if side not in best or wall < best[side]["wall_s"]:
                    best[side] = {"events": events, "wall_s": wall, "cpu_s": cpu,
                                  "counters": counters}
        for side in trees:
            runs[side].append(best[side])
    events = runs["after"][-1]["events"]
    lines = (workdir / f"{name}-{events}.jsonl").read_text().splitlines()

    loop_s, loop_all, (updates, dead, latest) = best_of(3, lambda: loop(lines))
    ref_s, _, ref_features = best_of(3, lambda: _reference_run(lines, name))
    expected = {user: {f: v for f, v in feats.items() if f not in skip}
                for user, feats in ref_features.items()}
    expected = {user: feats for user, feats in expected.items() if feats}
    loop_matches = baseline.same_features(baseline.final_features(latest, skip), expected)

    profiled = size["profile_events"]
    profiles = {}
    for side, root in trees.items():
        suffix = "" if side == "after" else f"_{side}"
        profile = RESULTS_DIR / f"profile_{name}{suffix}.prof"
        prof_wall, _, _ = _pipeline_seconds(name, workdir / f"{name}-{profiled}.jsonl",
                                            workdir, profile, root=root)
        profiles[side] = {"wall_s": prof_wall, "events": profiled,
                          "file": f"benchmarks/results/{profile.name}",
                          **profile_summary(profile, profiled, size["top"], root)}
    after = _rates(runs["after"])
    loop_eps = events / loop_s
    out = {
        "events": events,
        "malformed_lines": len(MALFORMED),
        "runs": runs["after"],
        **after,
        "loop": {"seconds": loop_s, "all_seconds": loop_all, "events_per_s": loop_eps,
                 "updates": updates, "dead": dead, "matches_reference": loop_matches},
        "reference": {"seconds": ref_s, "events_per_s": events / ref_s},
        "ratio_wall": after["pipeline_events_per_s"] / loop_eps,
        "ratio_marginal": after["pipeline_marginal_events_per_s"] / loop_eps,
        "profile": profiles["after"],
    }
    if before is not None:
        old = _rates(runs["before"])
        out["before"] = {
            "rev": before.rev, "commit": before.commit, "subject": before.subject,
            "imported_from": before.imported_from, "runs": runs["before"], **old,
            "same_counters": [r["counters"] for r in runs["before"]]
                             == [r["counters"] for r in runs["after"]],
            "profile": profiles["before"],
            "speedup_wall": after["pipeline_events_per_s"] / old["pipeline_events_per_s"],
            "speedup_cpu": (after["pipeline_events_per_cpu_s"]
                            / old["pipeline_events_per_cpu_s"]),
            "speedup_marginal": (after["pipeline_marginal_events_per_s"]
                                 / old["pipeline_marginal_events_per_s"]),
            "speedup_profiled": (profiles["before"]["profiled_us_per_event"]
                                 / profiles["after"]["profiled_us_per_event"]),
        }
    return out


def run(mode: str, before: str | None = None) -> dict[str, Any]:
    """Measures both pipelines; with ``before`` (a git revision), that commit's too."""
    size = SIZES[mode]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtf-bench-") as tmp:
        old = None
        if before is not None:
            old = export_before(before, Path(tmp) / "before")
            print(f"  before: {old.commit} ({old.subject}), exported to {old.root}; "
                  f"imports {old.imported_from}", flush=True)
        work = Path(tmp) / "work"
        work.mkdir()
        pipelines = {name: _bench_pipeline(name, size, work, old) for name in _PIPELINES}
    return {
        "parameters": {**size, "stream": "pipelines.generate.StreamSpec(events, users, "
                       "seed=7), defaults otherwise; malformed lines mixed in",
                       "before": before},
        "pipelines": pipelines,
    }


def headline(data: dict[str, Any]) -> dict[str, float]:
    """The numbers a before/after table compares."""
    out: dict[str, float] = {}
    for name, p in data["pipelines"].items():
        out[f"{name} events/s (wall)"] = p["pipeline_events_per_s"]
        out[f"{name} events/s (marginal)"] = p["pipeline_marginal_events_per_s"]
        out[f"{name} pipeline/loop (marginal)"] = p["ratio_marginal"]
        if "before" in p:
            out[f"{name} speedup vs before (marginal)"] = p["before"]["speedup_marginal"]
    return out


def print_summary(data: dict[str, Any]) -> None:
    for name, p in data["pipelines"].items():
        print(f"  {name}: pipeline {p['pipeline_events_per_s']:,.0f} ev/s wall, "
              f"{p['pipeline_marginal_events_per_s']:,.0f} ev/s marginal; "
              f"loop {p['loop']['events_per_s']:,.0f} ev/s "
              f"(matches reference: {p['loop']['matches_reference']}); "
              f"ratio {p['ratio_marginal']:.3f} (marginal), {p['ratio_wall']:.3f} (wall)")
        b = p.get("before")
        if b:
            print(f"    before ({b['commit']}): {b['pipeline_events_per_s']:,.0f} ev/s wall, "
                  f"{b['pipeline_marginal_events_per_s']:,.0f} ev/s marginal, "
                  f"{b['profile']['profiled_us_per_event']:,.0f} us/ev profiled; speedup "
                  f"x{b['speedup_marginal']:.2f} marginal, x{b['speedup_wall']:.2f} wall, "
                  f"x{b['speedup_profiled']:.2f} profiled; same counters: "
                  f"{b['same_counters']}")
        for r in p["profile"]["ours_cumulative"][:5]:
            print(f"    {r['cum_us_per_event']:8.1f} us/ev cum  {r['function']}")
