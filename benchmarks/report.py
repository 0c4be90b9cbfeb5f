"""Regenerates ``BENCHMARKS.md`` and ``benchmarks/plots/*.png`` from the results files.

Every number written comes from a results file; a section without one says
"not run". Plots are drawn only from data that exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import store
from benchmarks.catalogue import SECTIONS, Section
from benchmarks.e2e import flags_label
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

def _by_function(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Own us/event per function, line numbers dropped (they move between commits)."""
    out: dict[str, float] = {}
    for r in rows:
        key = re.sub(r":\d+\(", "(", r["function"])
        out[key] = out.get(key, 0.0) + r["own_us_per_event"]
    return out


def _before_after(pipes: dict[str, Any]) -> list[str]:
    """The before/after table of a ``--before`` run (nothing without one)."""
    pairs = [(name, p, p["before"]) for name, p in pipes.items() if "before" in p]
    if not pairs:
        return []
    b0 = pairs[0][2]
    out = [f"**Before/after**, measured in the same invocation: *before* is commit "
           f"`{b0['commit']}` ({b0['subject']}), exported with `git archive` and run from "
           "there (imports checked: "
           + ", ".join(f"`{m}` from `{f}`" for m, f in b0["imported_from"].items())
           + "); *after* is the code named above. Same streams, same harness, before and "
           "after runs alternating. The profiled cost is the total own time per event "
           "under cProfile (inflated, but measured alike on both sides).", "",
           "| pipeline | before | events/s marginal: before | after | speedup "
           "| events/s wall: before | after | speedup | events/CPU-s: before | after "
           "| profiled us/event: before | after | speedup | same counters |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, p, b in pairs:
        out.append(
            f"| {name} | `{b['commit']}` | {_n(b['pipeline_marginal_events_per_s'])} "
            f"| {_n(p['pipeline_marginal_events_per_s'])} | x{b['speedup_marginal']:.2f} "
            f"| {_n(b['pipeline_events_per_s'])} | {_n(p['pipeline_events_per_s'])} "
            f"| x{b['speedup_wall']:.2f} | {_n(b['pipeline_events_per_cpu_s'])} "
            f"| {_n(p['pipeline_events_per_cpu_s'])} "
            f"| {_n(b['profile']['profiled_us_per_event'])} "
            f"| {_n(p['profile']['profiled_us_per_event'])} | x{b['speedup_profiled']:.2f} "
            f"| {b['same_counters']} |")
    out += ["", "Before runs (wall, best of the same repeats): " + "; ".join(
        f"{name}: " + ", ".join(f"{r['events']:,} events in {r['wall_s']:.2f} s"
                                for r in b["runs"]) for name, _, b in pairs) + ".", ""]
    for name, p, b in pairs:
        before, after = b["profile"], p["profile"]
        old_fns, new_fns = _by_function(before["top_own"]), _by_function(after["top_own"])
        out += [f"Top own costs of the {name} pipeline before, and the same functions after "
                "(us/event under cProfile; \"-\": not among the after profile's top "
                f"{len(after['top_own'])}). Own time by origin, before: "
                + ", ".join(f"{k} {v:,.0f}"
                            for k, v in before["own_us_per_event_by_category"].items())
                + "; after: "
                + ", ".join(f"{k} {v:,.0f}"
                            for k, v in after["own_us_per_event_by_category"].items()) + ".",
                "", "| function | before | after |", "|---|---:|---:|"]
        for fn, us in list(old_fns.items())[:10]:
            now = new_fns.get(fn)
            out.append(f"| `{fn}` | {us:,.1f} | {'-' if now is None else f'{now:,.1f}'} |")
        out.append("")
    return out


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
    out += _before_after(pipes)

    def draw(ax: Any) -> None:
        names = list(pipes)
        series = [("pipeline (wall)", "pipeline_events_per_s"),
                  ("pipeline (marginal)", "pipeline_marginal_events_per_s"),
                  ("plain-Python loop", None)]
        if all("before" in pipes[n] for n in names):
            series.insert(0, (f"before {pipes[names[0]]['before']['commit'][:7]} (marginal)",
                              "before"))
        width = 0.8 / len(series)

        def value(n: str, field: str | None) -> float:
            if field == "before":
                return pipes[n]["before"]["pipeline_marginal_events_per_s"]
            return pipes[n][field] if field else pipes[n]["loop"]["events_per_s"]

        for k, (label, field) in enumerate(series):
            values = [value(n, field) for n in names]
            ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(names))],
                   values, width, label=label)
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
    out += ["", f"Target: the sink at >= {target:.0%} of the raw loop. "
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


# --- section 3 ---------------------------------------------------------------------------

_CPU_COLUMNS = (("flink-taskmanager", "TM"), ("pipeline process (Python workers)", "Python"),
                ("kafka", "Kafka"), ("benchmark (producer, probe)", "producer"))


def _ms(freshness: dict[str, Any], key: str) -> str:
    value = freshness.get(key)
    if value is None:
        return "n/a"
    return ("≥ " if freshness.get("lower_bound") else "") + _n(value)


def _bundle(job: dict[str, Any], params: dict[str, Any]) -> str:
    """The job's bundle preset and time (older runs: a bundle time for the run or job),
    and its more flags."""
    ms = int(job.get("bundle_ms", params.get("bundle_ms", 0)))
    bundles = f"{job['preset']} ({ms} ms)" if "preset" in job else f"{ms} ms"
    return bundles + flags_label(job.get("flags", ()))


def _e2e(data: dict[str, Any]) -> list[str]:
    jobs = [j for j in data["jobs"] if "error" not in j]  # a failed job has only its error
    params = data["parameters"]
    out = ["| pipeline | parallelism | bundles | RUNNING after s | highest rate kept up /s "
           "| capacity events/s | highest rate with p99 < 1 s | lowest rate above it "
           "with p99 >= 1 s | checkpoints completed | checkpoint p50 / max ms "
           "| late events | dead letters |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for j in jobs:
        c = j["checkpoints"]
        out.append(f"| {j['pipeline']} | {j['parallelism']} | {_bundle(j, params)} "
                   f"| {j['startup']['submit_to_running_s']:.0f} "
                   f"| {_n(j['max_kept_up_per_s'])} | {_n(j['capacity_per_s'])} "
                   f"| {_n(j['p99_under_1s_per_s'])} | {_n(j['p99_over_1s_per_s'])} "
                   f"| {c.get('completed', 0)} | {_n(c.get('duration_p50_ms'))} / "
                   f"{_n(c.get('duration_max_ms'))} | {j['outputs']['late_events']} "
                   f"| {j['outputs']['dead_letters']} |")
    out += [f"| {j['pipeline']} | {j['parallelism']} | {_bundle(j, params)} "
            f"| failed: {j['error'][:300]} |"
            for j in data["jobs"] if "error" in j]
    out += ["", "Every phase, in the order run (`step-up`: the offered rates; `bisect`: "
            "between the highest rate with p99 < 1 s and the lowest without). Freshness in ms "
            "from the producer's send to readable in Redis; `≥`: some events were still "
            "unseen when the drain timed out. CPU: cores each process used while the phase "
            "was sending (TM = the Flink TaskManager, Python = the pipeline process hosting "
            "the SDK workers). Capacity: the most the job consumed while a backlog waited.",
            "",
            "| pipeline | p | bundles | step | offered /s | sent /s | consumed /s | kept up "
            "| probed events | p50 ms | p99 ms | max ms | drain s | consumed while draining /s "
            "| checkpoints (max ms) | "
            + " | ".join(f"{label} cores" for _, label in _CPU_COLUMNS) + " |",
            "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
            + "---:|" * len(_CPU_COLUMNS)]
    for j in jobs:
        for p in j["phases"]:
            f = p["freshness"]
            done = [c["end_to_end_duration"] for c in p["checkpoints"]
                    if c["status"] == "COMPLETED"]
            checkpoints = f"{len(done)} ({_n(max(done))})" if done else "0"
            cpu = " | ".join(f"{p['cpu_cores'].get(k, 0):.2f}" for k, _ in _CPU_COLUMNS)
            out.append(f"| {j['pipeline']} | {j['parallelism']} | {_bundle(j, params)} "
                       f"| {p['step']} "
                       f"| {_n(p['offered_per_s'])} | {_n(p['sent_per_s'])} "
                       f"| {_n(p['consumed_per_s'])} "
                       f"| {'yes' if p['kept_up'] else 'no'}"
                       f"{' (stopped early)' if p['stopped_early'] else ''} "
                       f"| {_n(f.get('events'))} | {_ms(f, 'p50_ms')} | {_ms(f, 'p99_ms')} "
                       f"| {_ms(f, 'max_ms')} | {p['drain_s']:.1f} "
                       f"| {_n(p['catch_up_per_s'])} | {checkpoints} | {cpu} |")
    skipped = [f"{j['pipeline']} p={j['parallelism']} ({_bundle(j, params)} bundles): "
               + ", ".join(f"{_n(r['offered_per_s'])}/s" for r in j["not_run"])
               + f" ({j['not_run'][0]['reason']})" for j in jobs if j["not_run"]]
    out += ["", "Not run (higher rates after a phase the job did not keep up with): "
            + ("; ".join(skipped) if skipped else "none") + ".", "",
            f"{params['phase_s']} s phases; {_n(params['users'])} users (Zipf skew "
            f"{params['skew']}), {params['partitions']} partitions, checkpoints every "
            f"{params['checkpoint_interval_ms'] // 1000} s; a phase is kept up when the job "
            f"consumed >= {params['keep_up_ratio']:.0%} of what was sent, and stops early once "
            f"an event has waited {params['behind_s']:.0f} s.", ""]

    def series(j: dict[str, Any], field: str) -> list[tuple[float, float]]:
        values = [(p["offered_per_s"], p["freshness"].get(field) if field.endswith("_ms")
                   else p.get(field)) for p in j["phases"]]
        return sorted((x, y) for x, y in values if y is not None)

    def throughput(ax: Any) -> None:
        for j in jobs:
            pts = series(j, "consumed_per_s")
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o",
                        label=f"{j['pipeline']}, parallelism {j['parallelism']}, "
                              f"{_bundle(j, params)} bundles")
        rates = sorted({p["offered_per_s"] for j in jobs for p in j["phases"]})
        ax.plot(rates, rates, color="grey", linestyle=":", label="consumed = offered")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered events/s")
        ax.set_ylabel("consumed events/s")
        ax.set_title("Flink job throughput vs offered rate")
        ax.legend(fontsize=8)

    def freshness(ax: Any) -> None:
        for k, j in enumerate(jobs):
            color = f"C{k}"
            label = f"{j['pipeline']} p={j['parallelism']} {_bundle(j, params)}"
            for field, style in (("p50_ms", "--"), ("p99_ms", "-")):
                pts = series(j, field)
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=color, linestyle=style, marker="o",
                            label=f"{label} {field[:3]}")
        ax.axhline(params["target_p99_ms"], color="grey", linestyle=":", label="1 s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered events/s")
        ax.set_ylabel("send -> readable in Redis (ms)")
        ax.set_title("Event-to-Redis freshness vs offered rate")
        ax.legend(fontsize=7, ncol=2)

    return [*out, _plot("e2e_throughput", throughput), "", _plot("e2e_freshness", freshness),
            ""]


# --- section 4b --------------------------------------------------------------------------

def _rocksdb(data: dict[str, Any]) -> list[str]:
    params = data["parameters"]
    keys = params["keys"]
    base = data["baseline"]
    out = ["| checkpoint | keys in state | state size (B) | written (B) | end-to-end ms "
           "| bytes/key over the baseline |",
           "|---|---:|---:|---:|---:|---:|",
           f"| {base['id']}: baseline (warm-up key) | 1 | {_n(base['state_size'])} "
           f"| {_n(base['checkpointed_size'])} | {_n(base['end_to_end_duration'])} | |"]
    for k, c in enumerate(data["after"]):
        label = f"first after all {_n(keys)} keys" if k == 0 else "then"
        out.append(f"| {c['id']}: {label} | {_n(keys)} | {_n(c['state_size'])} "
                   f"| {_n(c['checkpointed_size'])} | {_n(c['end_to_end_duration'])} "
                   f"| {_n((c['state_size'] - base['state_size']) / keys, 1)} |")
    out += ["", f"{_n(data['events'])} events consumed at {_n(data['consumed_per_s'])}/s "
            f"(sent at {_n(params['send_rate'])}/s); {_n(data['redis_hashes'])} hashes in "
            f"Redis; the job's checkpoint directory holds {_n(data['checkpoint_dir_bytes'])} B "
            f"on disk; {data['outputs']['late_events']} late events, "
            f"{data['outputs']['dead_letters']} dead letters. Backend: "
            f"{data['checkpoint_config']['state_backend']}, "
            f"{data['checkpoint_config']['mode']}, every "
            f"{params['checkpoint_interval_ms'] // 1000} s.", "",
            "Per step (worst subtask): start delay = the barrier waiting behind the step's "
            "input, sync = finishing the open bundle and the snapshot, async = writing the "
            "files.", "",
            "| checkpoint | step | state size (B) | written (B) | end-to-end ms "
            "| start delay ms | alignment ms | sync ms | async ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in data["after"]:
        for step in data["per_step"][str(c["id"])]:
            out.append(f"| {c['id']} | `{step['step']}` | {_n(step['state_size'])} "
                       f"| {_n(step['checkpointed_size'])} "
                       f"| {_n(step['end_to_end_duration'])} | {_n(step['start_delay_ms'])} "
                       f"| {_n(step['alignment_ms'])} | {_n(step['sync_ms'])} "
                       f"| {_n(step['async_ms'])} |")
    out += ["", "Checkpoints triggered while the keys streamed in (the job busy):", "",
            "| checkpoint | s after the first event | keys in state at trigger | state size (B) "
            "| written (B) | end-to-end ms |", "|---|---:|---:|---:|---:|---:|"]
    for c in data["during"]:
        out.append(f"| {c['id']} {c['status'].lower()} | {c['seconds_after_start']:.0f} "
                   f"| {_n(c['keys_at_trigger'])} | {_n(c['state_size'])} "
                   f"| {_n(c['checkpointed_size'])} | {_n(c['end_to_end_duration'])} |")
    out.append("")

    def draw(ax: Any) -> None:
        done = [c for c in data["during"] if c["status"] == "COMPLETED"]
        pts = sorted([(c["keys_at_trigger"], c["state_size"], c["end_to_end_duration"])
                      for c in done] + [(keys, data["full"]["state_size"],
                                         data["full"]["end_to_end_duration"])])
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] / 1e6 for p in pts], marker="o", label="state size (MB)")
        ax.set_xlabel("keys in state when the checkpoint was triggered")
        ax.set_ylabel("checkpointed state (MB)")
        right = ax.twinx()
        right.plot(xs, [p[2] / 1000 for p in pts], marker="s", color="C1",
                   label="end-to-end duration (s)")
        right.set_ylabel("checkpoint duration (s)")
        ax.set_title("RocksDB checkpoints of the user pipeline as keys arrive")
        ax.legend(loc="upper left", fontsize=8)
        right.legend(loc="lower right", fontsize=8)

    return [*out, _plot("rocksdb_checkpoints", draw), ""]


def _engine(data: dict[str, Any]) -> list[str]:
    params = data["params"]
    out = ["| pipeline | variant | users | events/s (slope) | x stages "
           "| events / s measured |",
           "|---|---|---:|---:|---:|---|"]
    for pipeline, per in data["summary"].items():
        for variant, s in per.items():
            for r in (r for r in data["runs"]
                      if r["pipeline"] == pipeline and r["variant"] == variant):
                if "error" in r:
                    out.append(f"| {pipeline} | {variant} | {_n(r['users'])} "
                               f"| failed: {r['error'][:200]} | | |")
                    continue
                out.append(f"| {pipeline} | {variant} | {_n(r['users'])} "
                           f"| {_n(r['events_per_s'])} | x{s['over_stages']} "
                           f"| {_n(r['events_measured'])} / {r['seconds_measured']} |")
    out += ["", f"{_n(params['events'])} events in the backlog per run, parallelism "
            f"{params['parallelism']}, checkpoints every "
            f"{params['checkpoint_interval_ms'] // 1000} s; the rate is measured from "
            f"{params['warm_up_s']} s after the keyed step took 5% of the backlog, for "
            f"{params['measure_s']} s (or to 95% of the backlog); per pipeline the runs "
            f"went in this order: {', '.join(params['order'])}."]
    limits = {r["bundles"]: r["bundle_limits"] for r in data["runs"] if "bundle_limits" in r}
    if limits:
        out.append("Bundles: " + "; ".join(
            f"{name} up to {ms:,} ms or {f'{size:,}' if size else 'any number of'} elements"
            for name, (ms, size) in limits.items()) + ".")
    else:
        out.append("These runs did not record their bundle limits; the catch_up preset "
                   "then took bundles of up to 1,000 ms or 50,000 elements.")
    out.append("")

    def users(ax: Any) -> None:
        # The variants that differ only in the number of distinct users.
        same = [v for v, p in params["variants"].items()
                if p[0] == "fused" and p[1] == "catch_up" and p[3] == "estimate"]
        for pipeline in data["summary"]:
            pts = sorted((r["users"], r["events_per_s"]) for r in data["runs"]
                         if r["pipeline"] == pipeline and r["variant"] in same
                         and r["events_per_s"])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=pipeline)
        ax.set_xscale("log")
        ax.set_xlabel("distinct users in the backlog")
        ax.set_ylabel("events/s (catch-up)")
        ax.set_ylim(bottom=0)
        ax.set_title("Fused engine, catch_up bundles, state cache: events/s vs users")
        ax.legend(fontsize=8)

    return [*out, _plot("engine_users", users), ""]


def _bundles(data: dict[str, Any]) -> list[str]:
    out = ["| pipeline | bundles (time / elements); speculative updates; runner timers "
           "| events/s (slope) "
           "| mean | x first | events / s measured |", "|---|---|---:|---:|---:|---|"]
    for r in data["runs"]:
        s = data["summary"][r["pipeline"]][r["variant"]]
        measured = (f"FAILED: {r['error']}" if "error" in r else
                    f"{_n(r['events_measured'])} / {r['seconds_measured']}")
        out.append(f"| {r['pipeline']} | {r['variant']} | {_n(r['events_per_s'])} "
                   f"| {_n(s['events_per_s'])} | x{s['over_first']} | {measured} |")
    return [*out, "", f"{_n(data['params']['events'])} events in the backlog per pipeline; "
            f"runs in the order {', '.join(data['params']['order'])}.", ""]


def _hotkeys(data: dict[str, Any]) -> list[str]:
    out = ["| stream | parallelism | events/s (slope) | records into the fused step per subtask "
           "| share of the busiest |", "|---|---:|---:|---|---:|"]
    for r in data["runs"]:
        out.append(f"| {r['stream']} | {r['parallelism']} | {_n(r['events_per_s'])} "
                   f"| {', '.join(_n(n) for n in r['subtask_records'])} "
                   f"| {max(r['subtask_shares']):.0%} |")
    return [*out, "", f"{_n(data['params']['events'])} events in each backlog; "
            f"{data['params']['variant']}.", ""]


def _routes(data: dict[str, Any]) -> list[str]:
    out = ["| pipeline | window kind | stateful stage events/s | Beam windowing events/s "
           "| windowing / stateful |", "|---|---|---:|---:|---:|"]
    kinds = list(dict.fromkeys((r["pipeline"], r["kind"]) for r in data["runs"]))
    for pipeline, kind in kinds:
        rate = {r["route"]: r["events_per_s"] for r in data["runs"]
                if r["pipeline"] == pipeline and r["kind"] == kind}
        s, w = rate.get("stateful"), rate.get("windowed")
        out.append(f"| {pipeline} | {kind} | {_n(s)} | {_n(w)} "
                   f"| {_ratio(w / s if s and w else None)} |")
    failed = [f"{r['pipeline']} {r['kind']} {r['route']}: {r['error']}"
              for r in data["runs"] if r.get("error")]
    return [*out, "", f"{_n(data['params']['events'])} events in each backlog."
            + (" Failed: " + "; ".join(failed) if failed else ""), ""]


def _peers(data: dict[str, Any]) -> list[str]:
    params, rates = data["params"], data["rates"]
    names = {"pipeline": f"rtfeatures user pipeline ({params['variant']})",
             "flink_sql": "Flink SQL job (benchmarks/flink_sql_peer.py)",
             "python_consumer": "plain Python consumer (benchmarks/python_consumer.py)"}
    out = ["| job | events/s | x pipeline | events / s measured |", "|---|---:|---:|---|"]
    for key, r in rates.items():
        ratio = data["over_pipeline"].get(key)
        out.append(f"| {names[key]} | {_n(r['events_per_s'])} "
                   f"| {'1.00' if key == 'pipeline' else _ratio(ratio)} "
                   f"| {_n(r.get('events_measured', r.get('events')))} / "
                   f"{r.get('seconds_measured', r.get('seconds'))} |")
    v = data["values"]
    out += ["", f"{_n(params['events'])} events in the backlog ({_n(params['users'])} users). "
            f"Values on {_n(v['events'])} events of {v['users']} users, every feature of every "
            f"user in the pipeline's Redis against the peer's:", "",
            "| peer | compared | equal | differing | only in the peer |",
            "|---|---:|---:|---:|---:|"]
    for peer in ("flink_sql", "python_consumer"):
        c = v[peer]
        out.append(f"| {peer} | {c['compared']} | {c['equal']} | {len(c['differing'])} "
                   f"| {len(c['only_theirs'])} |")
    live = data.get("freshness")
    if live:
        out += ["", f"Freshness of `{live['feature']}` on one live stream of "
                f"{_n(live['rate_per_s'])} events/s to both jobs at once ({live['measure_s']} s "
                f"counted after {live['warm_up_s']} s), from the send to readable:", "",
                "| job | purchases probed | p50 ms | p99 ms | max ms | not readable after "
                "15 s |", "|---|---:|---:|---:|---:|---:|"]
        live_names = {**names, "pipeline": "rtfeatures user pipeline (fused, low_latency)"}
        for key in ("pipeline", "flink_sql"):
            f = live[key]
            out.append(f"| {live_names[key]} | {_n(f['events'])} | {_n(f['p50_ms'], 1)} "
                       f"| {_n(f['p99_ms'], 1)} | {_n(f['max_ms'], 1)} | {_n(f['unseen'])} |")
    return [*out, ""]


def _training(data: dict[str, Any]) -> list[str]:
    from benchmarks.training_sets import growth

    out = ["| pipeline | runner | events | label rows | wall s | events/s | label rows/s "
           "| peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["runs"]:
        out.append(f"| {r['pipeline']} | {r['runner']} | {_n(r['events'])} | {_n(r['labels'])} "
                   f"| {_n(r['seconds'], 1)} | {_n(r['events_per_s'])} "
                   f"| {_n(r['labels_per_s'])} | {_n(r['peak_rss_mb'])} |")
    grown = growth(data)
    out += ["", "Wall time at 10x events and 10x label rows, over the smaller size: "
            + "; ".join(f"{p} on {r} x{x:.1f}" for (p, r), x in grown.items()) + ".", ""]

    def draw(ax: Any) -> None:
        for pipeline, runner in grown:
            points = sorted((r["events"], r["seconds"]) for r in data["runs"]
                            if r["pipeline"] == pipeline and r["runner"] == runner)
            ax.plot(*zip(*points, strict=True), marker="o", label=f"{pipeline}, {runner}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events (label rows = events / 10)")
        ax.set_ylabel("wall time, s")
        ax.set_title("Training set: wall time as events and labels grow")
        ax.legend()

    return [*out, _plot("training_sets", draw), ""]


def _workers(data: dict[str, Any]) -> list[str]:
    out = ["| bundles | Python workers | capacity ev/s | highest rate kept up ev/s "
           "| p99 < 1 s up to ev/s |", "|---|---|---:|---:|---:|"]
    for j in data["jobs"]:
        if "error" in j:
            out.append(f"| {j['preset']} | {j['workers']} | failed: {j['error'][:80]} | | |")
            continue
        out.append(f"| {j['preset']} | {j['workers']} | {_n(j['capacity_per_s'])} "
                   f"| {_n(j['max_kept_up_per_s'])} | {_n(j['p99_under_1s_per_s'])} |")
    return [*out, ""]


RENDERERS: dict[str, Renderer] = {"transform": _transform, "sink": _sink, "state": _state,
                                  "serving": _serving, "e2e": _e2e, "rocksdb": _rocksdb,
                                  "engine": _engine, "hotkeys": _hotkeys, "routes": _routes,
                                  "bundles": _bundles,
                                  "workers": _workers,
                                  "peers": _peers, "training": _training}


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
        why = section.pending or ("No results file yet" if section.quick else
                                  "`make bench` runs it; `make bench-quick` does not")
        out += [f"**Not run.** {why} "
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
             "section.", "",
             "## How to run", "",
             "```",
             "make bench          # every section, full sizes; transform also before "
             "(BENCH_BEFORE=9d59315) and after",
             "make bench-quick    # every section, small sizes (< 3 minutes on 2 cores)",
             ".venv/bin/python -m benchmarks.run [--quick] [--sections "
             + ",".join(s.name for s in SECTIONS if s.module) + "]",
             ".venv/bin/python -m benchmarks.run --report-only   # rebuild this file",
             ".venv/bin/python -m benchmarks.run --sections transform --before REV"
             "   # REV's code beside the current code, one run",
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
