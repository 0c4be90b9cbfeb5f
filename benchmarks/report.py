"""Regenerates ``BENCHMARKS.md`` and ``benchmarks/plots/*.png`` from the results files.

Every number written comes from a results file; a section without one says
"not run". Plots are drawn only from data that exists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import store
from benchmarks.catalogue import SECTIONS, Section
from benchmarks.env import ROOT

REPORT = ROOT / "BENCHMARKS.md"

Renderer = Callable[[dict[str, Any]], list[str]]


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _plot(name: str, draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store.PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    draw(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = store.PLOTS_DIR / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return f"![{name}]({path.relative_to(ROOT)})"


# --- section 1 ---------------------------------------------------------------------------

def _transform(data: dict[str, Any]) -> list[str]:
    pipes = data["pipelines"]
    out = ["| pipeline | events | pipeline events/s (wall) | pipeline events/s (marginal) "
           "| events/CPU-s | plain loop events/s | pipeline/loop (marginal) "
           "| pipeline/loop (wall) | reference events/s | loop = reference |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, p in pipes.items():
        out.append(f"| {name} | {_n(p['events'])} | {_n(p['pipeline_events_per_s'])} "
                   f"| {_n(p['pipeline_marginal_events_per_s'])} "
                   f"| {_n(p['pipeline_events_per_cpu_s'])} | {_n(p['loop']['events_per_s'])} "
                   f"| {p['ratio_marginal']:.3f} | {p['ratio_wall']:.3f} "
                   f"| {_n(p['reference']['events_per_s'])} | {p['loop']['matches_reference']} |")
    runs = "; ".join(f"{name}: " + ", ".join(f"{r['events']:,} events in {r['wall_s']:.2f} s"
                                              for r in p["runs"]) for name, p in pipes.items())
    out += ["", f"Runs (wall, best of {data['parameters']['repeats']}): {runs}.", ""]

    def draw(ax: Any) -> None:
        names = list(pipes)
        series = [("pipeline (wall)", "pipeline_events_per_s"),
                  ("pipeline (marginal)", "pipeline_marginal_events_per_s"),
                  ("plain-Python loop", None)]
        width = 0.25
        for k, (label, field) in enumerate(series):
            values = [pipes[n][field] if field else pipes[n]["loop"]["events_per_s"]
                      for n in names]
            ax.bar([i + (k - 1) * width for i in range(len(names))], values, width, label=label)
        ax.set_xticks(range(len(names)), [f"{n} pipeline" for n in names])
        ax.set_yscale("log")
        ax.set_ylabel("events/s (log)")
        ax.set_title("DirectRunner vs plain-Python loop, same stream")
        ax.legend()

    out += [_plot("transform_throughput", draw), ""]
    for name, p in pipes.items():
        prof = p["profile"]
        cats = ", ".join(f"{k} {v:,.0f}" for k, v in prof["own_us_per_event_by_category"].items())
        out += [f"**Profile of the {name} pipeline** ({prof['events']:,} events under cProfile, "
                f"{prof['wall_s']:.1f} s wall; `{prof['file']}`). cProfile inflates small "
                f"calls, so read shares, not absolute times. Own time per event by origin "
                f"(us): {cats} (total {prof['profiled_us_per_event']:,.0f}).", "",
                "Per-element functions (called at least once per 100 events) by cumulative "
                "time:", "",
                "| function | origin | calls/event | cumulative us/event | own us/event |",
                "|---|---|---:|---:|---:|"]
        for r in prof["top_cumulative"]:
            out.append(f"| `{r['function']}` | {r['category']} | {r['calls_per_event']:.2f} "
                       f"| {r['cum_us_per_event']:,.1f} | {r['own_us_per_event']:,.1f} |")
        out += ["", "Our code (transforms/, pipelines/) by cumulative time:", "",
                "| function | calls/event | cumulative us/event | own us/event |",
                "|---|---:|---:|---:|"]
        for r in prof["ours_cumulative"]:
            out.append(f"| `{r['function']}` | {r['calls_per_event']:.2f} "
                       f"| {r['cum_us_per_event']:,.1f} | {r['own_us_per_event']:,.1f} |")
        out.append("")
    return out


# --- section 2 ---------------------------------------------------------------------------

_SINK_LABELS = {"raw_hset": "raw redis-py HSET loop", "raw_guarded": "raw loop, guard script",
                "writer": "RedisWriter.write", "dofn": "sink DoFn (no runner)",
                "beam": "WriteToRedis on DirectRunner"}


def _sink(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    target = data["parameters"]["target_ratio"]
    out = ["| variant | batch size | writes | entity writes/s | feature fields/s "
           "| vs raw HSET loop | marginal writes/s (Beam) | marginal vs raw |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = _SINK_LABELS.get(r["variant"], r["variant"])
        if r["variant"] == "writer_all_rejected":
            label = "RedisWriter, guard rejects all (older replay)"
        flag = ""
        if r["variant"] in ("writer", "dofn") and r["ratio_to_raw_hset"] < target:
            flag = " (below target)"
        out.append(f"| {label} | {r['batch_size']} | {_n(r['writes'])} | {_n(r['writes_per_s'])} "
                   f"| {_n(r['fields_per_s'])} | {_ratio(r['ratio_to_raw_hset'])}{flag} "
                   f"| {_n(r.get('marginal_writes_per_s'))} "
                   f"| {_ratio(r.get('marginal_ratio_to_raw_hset'))} |")
    out += ["", f"Target (issue 5): the sink at >= {target:.0%} of the raw loop. "
            "`vs raw` divides by the raw HSET loop at the same batch size; the guard's cost "
            "is the `raw loop, guard script` row against the raw HSET row. The Beam rows "
            "include the DirectRunner's per-element cost; `marginal` discounts a pipeline "
            "whose sink is a no-op.", ""]

    def draw(ax: Any) -> None:
        for variant, label in _SINK_LABELS.items():
            pts = sorted((r["batch_size"], r["writes_per_s"]) for r in rows
                         if r["variant"] == variant)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        pts = sorted((r["batch_size"], r["marginal_writes_per_s"]) for r in rows
                     if r["variant"] == "beam" and r.get("marginal_writes_per_s"))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="x", linestyle="--",
                    label="WriteToRedis, marginal")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (entities per pipelined round trip)")
        ax.set_ylabel("entity writes/s (3 features each)")
        ax.set_title("Redis sink throughput vs batch size")
        ax.legend(fontsize=8)

    return [*out, _plot("sink_throughput", draw), ""]


# --- section 4a --------------------------------------------------------------------------

def _state(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    params = data["parameters"]
    out = ["| events/s for the key | x base rate | events | max state bytes | "
           "steady-state p50 bytes | max / base max | max tiles | max pending points "
           "| DoFn us/event |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {_n(r['events_per_s'])} | {r['multiplier']} | {_n(r['events'])} "
                   f"| {_n(r['max_bytes'])} | {_n(r['steady_p50_bytes'])} "
                   f"| {r['max_bytes_vs_base']:.2f} | {r['max_tiles']} "
                   f"| {r['max_pending_points']} | {r['us_per_event']:.1f} |")
    out += ["", f"{params['seconds']} s of event time per rate; window "
            f"{params['window_ms'] // 1000} s, tiles {params['tile_ms']} ms, allowed lateness "
            f"{params['allowed_lateness_ms'] // 1000} s, out-of-orderness "
            f"{params['watermark_delay_ms'] // 1000} s, watermark {params['watermark_lag_ms']} ms "
            f"behind the events; bytes as encoded by {params['coder']}.", ""]

    def draw(ax: Any) -> None:
        for r in rows:
            ax.plot(range(len(r["bytes_per_second"])), r["bytes_per_second"],
                    label=f"{r['events_per_s']:,} events/s")
        ax.set_xlabel("event time (s)")
        ax.set_ylabel("encoded state bytes for the key")
        ax.set_title("Sliding-sum state per key over time, by event rate")
        ax.legend()

    return [*out, _plot("state_bytes", draw), ""]


# --- section 5 ---------------------------------------------------------------------------

def _serving(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    params = data["parameters"]
    out = ["| call | entities | calls | p50 us | p90 us | p99 us | max us | mean us |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| `{r['variant']}` | {r['entities']} | {_n(r['n'])} | {_n(r['p50_us'])} "
                   f"| {_n(r['p90_us'])} | {_n(r['p99_us'])} | {_n(r['max_us'])} "
                   f"| {_n(r['mean_us'])} |")
    out += ["", f"{_n(params['keys_in_redis'])} users in Redis, {params['features']} features "
            f"({params['fields_per_entity']} fields read per entity); `raw_*` rows are redis-py "
            "without the client's decoding.", ""]

    def draw(ax: Any) -> None:
        labels = [f"{r['variant']}\n({r['entities']})" for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["p50_us"] for r in rows], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_us"] for r in rows], 0.4, label="p99")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency (us, log)")
        ax.set_title("Lookup latency against local Redis")
        ax.legend()

    return [*out, _plot("serving_latency", draw), ""]


RENDERERS: dict[str, Renderer] = {"transform": _transform, "sink": _sink, "state": _state,
                                  "serving": _serving}


# --- the document ------------------------------------------------------------------------

def _machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
            f"{m['memory_gib']} GiB RAM, {m['os']}; Python {m['python']}, "
            f"apache-beam {m['apache_beam']}, redis-py {m['redis_py']}, "
            f"redis-server {m['redis_server']}")


def _code_line(code: dict[str, Any]) -> str:
    dirty = (f", uncommitted changes to {', '.join(code['changed_paths'])}"
             if code["dirty"] else "")
    return f"`{code['commit']}` ({code['subject']}){dirty}"


def _history(section: Section, runs: list[dict[str, Any]]) -> list[str]:
    heads = [r.get("headline", {}) for r in runs]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    if not keys:
        return []
    out = ["History (one row per measured code and mode; before/after):", "",
           "| measured | commit | mode | " + " | ".join(keys) + " |",
           "|---|---|---|" + "---:|" * len(keys)]
    for run, head in zip(runs, heads, strict=True):
        code = run["code"]
        commit = code["commit"] + (f"+{code['diff_id']}" if code["dirty"] else "")
        cells = []
        for k in keys:
            v = head.get(k)
            cells.append("" if v is None else (f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"))
        out.append(f"| {run['timestamp']} | `{commit}` | {run['mode']} | "
                   + " | ".join(cells) + " |")
    return [*out, ""]


def _section(section: Section, this_run: set[str]) -> list[str]:
    out = [f"## {section.part}. {section.title}", ""]
    runs = store.load(section.name)
    if not runs:
        out += [f"**Not run.** {section.pending or 'No results file yet'} "
                f"(`benchmarks/results/{section.name}.json` does not exist).", ""]
        return out
    latest = runs[-1]
    when = "this invocation" if section.name in this_run else "an earlier invocation"
    load = latest.get("load_average_1m")
    busy = ""
    if load and max(load) > 0.5 * latest["machine"]["usable_cpus"]:
        busy = " Other work was running on the machine: numbers are pessimistic."
    out += [f"Measured {latest['timestamp']} in {when} (`{latest['command']}`, "
            f"{latest['mode']} mode, {latest['duration_s']:.0f} s) "
            f"at {_code_line(latest['code'])}.",
            f"Machine: {_machine_line(latest['machine'])}."
            + (f" 1-minute load average before/after: {load[0]:.2f}/{load[1]:.2f}.{busy}"
               if load else ""), ""]
    doc = section.doc()
    if doc:
        out += [doc, ""]
    renderer = RENDERERS.get(section.name)
    if renderer is None:
        out += ["(No renderer for this section; see the JSON file.)", ""]
    else:
        out += renderer(latest["data"])
    return out + _history(section, runs)


def write(this_run: set[str]) -> Path:
    """Rewrites BENCHMARKS.md (and the plots) from every results file."""
    latest = [r[-1] for s in SECTIONS if (r := store.load(s.name))]
    newest = max(latest, key=lambda r: r["timestamp"]) if latest else None
    lines = ["# Benchmarks", "",
             "Generated by `python -m benchmarks.run` from `benchmarks/results/*.json`; "
             "do not edit by hand. Every number below was produced by the run named in its "
             "section. Issue 5 defines what is measured.", "",
             "## How to run", "",
             "```",
             "make bench          # every section, full sizes",
             "make bench-quick    # every section, small sizes (< 3 minutes on 2 cores)",
             ".venv/bin/python -m benchmarks.run [--quick] [--sections "
             + ",".join(s.name for s in SECTIONS if s.module) + "]",
             ".venv/bin/python -m benchmarks.run --report-only   # rebuild this file",
             "```", ""]
    if newest is not None:
        lines += ["## Machine (latest run)", "", _machine_line(newest["machine"]) + ".", ""]
    lines += ["## Sections", "", "| part | section | status |", "|---|---|---|"]
    for s in SECTIONS:
        runs = store.load(s.name)
        status = (f"measured {runs[-1]['timestamp']} ({runs[-1]['mode']})" if runs
                  else "not run")
        lines.append(f"| {s.part} | {s.title} | {status} |")
    lines.append("")
    for s in SECTIONS:
        lines += _section(s, this_run)
    REPORT.write_text("\n".join(lines).rstrip() + "\n")
    return REPORT
