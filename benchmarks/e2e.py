"""Section 3: end to end on Flink: sustained events/s, and event-to-Redis freshness vs rate.

The whole product on this machine: Kafka (KRaft), the pipeline on the local
Flink 1.19 cluster through the Beam 2.62 job server (Python workers in the
worker pools beside the two TaskManagers), RocksDB with incremental exactly-once
checkpoints every 10 s, Redis; all on the same 2 cores as the producer.
Seven jobs, started as ``python -m pipelines.<name>_features
--runner=FlinkRunner`` with the product's preset (the fused engine, the 256 MB
state cache, the pipelined state commit) and a bundle preset (see Bundles),
each on its own 2-partition topic: user and ride at parallelism 1 with each
bundle preset, and user at parallelism 2 with ``low_latency``; then user at
parallelism 2 with ``low_latency`` and ``--records_keyed_by_entity`` (the
keyed stage decodes the records: one Python step per event), once with
``--state_commit=per_key`` (Beam's own commit: a round trip per key when a
bundle ends) and once with the default (every key's write sent, then one
wait), one beside the other.
Each job gets a single event (its Python workers start) and a 10 s warm-up
at 200 events/s, then keeps running while the offered rate steps up: each
phase sends a live stream (event time = now, 1,000 users, Zipf skew 1.1,
up to 2 s out of order, nothing late) at a fixed rate (250, 1,000, 5,000,
10,000, 20,000 events/s) for 20 s, and waits until it is drained before
the next one starts.

Per phase: the offered rate; the rate the producer achieved (one Python
thread, on the same cores); the rate the job consumed: records into the
step that receives every event (``UserFeatures`` / ``RideFeatures``) from
Flink's REST metrics, sampled every second, as the least-squares slope
from 5 s into the phase to its end (whatever the events' delay to that
step); and freshness, from the producer's send to the moment the event's
effect is readable in Redis (``runners.freshness.FreshnessProbe`` polling
every 10 ms, on the events of every 10th user that advance the user's
newest ``as_of``: all events for ``clicks_in_session``, END events for
``lifetime_rides``). A phase is *kept up* when the job consumed at least
90% of what was sent and the backlog drained; once an event has waited
10 s the phase stops early and counts as not kept up. The job's *capacity*
is the most it consumed while a backlog waited (during a phase it did not
keep up with, or a drain of 4 s or more). Stepping stops at the first phase
not kept up: higher rates are reported as not run. Then the highest rate
with freshness p99 under 1 s is bracketed by bisection (up to three more
phases between the highest rate under 1 s and the lowest over it, until
they are within 25%). Events still unseen when a drain timed out count
with their age then (a lower bound). CPU: the cores each process used while
the phase was sending.

Bundles: a Python step hands its output on when its bundle ends, so at
low rates the bundle time is the floor of freshness, while bigger bundles
cost fewer state round trips per event and raise throughput. The product
ships the choice as two presets (``runtime.flink.BUNDLE_PRESETS``):
``low_latency`` (bundles of up to 50 ms, the default for live streams) and
``catch_up`` (bigger bundles, for backlogs; section 6d sizes them and
measures what they read from a backlog; the tables give each job's bundle
time). The plots show freshness p50/p99 against the offered rate for each.
A live stream is not what ``catch_up`` is for: with 5-s bundles an event
waits up to a bundle in each of the job's two Python steps, about the 10 s
after which a phase stops, so no rate counts as kept up and its capacity
column is only what it consumed in a stopped phase.

Flink needs about a minute per job before it measures anything: ``--quick``
does not run this section (``make bench`` does).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.flink_job import (
    BUNDLE_MS,
    CHECKPOINT_INTERVAL_MS,
    PARTITIONS,
    PROBE_FEATURE,
    FeatureJob,
    flink_services,
)
from benchmarks.measure import percentile
from pipelines.generate import StreamSpec, generate
from runners.freshness import FreshnessProbe
from runtime.flink import BUNDLE_PRESETS

NAME = "e2e"
TITLE = "End to end on Flink: sustained events/s and freshness"

# (pipeline, parallelism, bundle preset of runtime.flink.BUNDLE_PRESETS, more flags)
RECORDS = "--records_keyed_by_entity"
PER_KEY = "--state_commit=per_key"
JOBS: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (
    ("user", 1, "low_latency", ()), ("user", 1, "catch_up", ()), ("user", 2, "low_latency", ()),
    # The live shape with one Python step per event, with Beam's per-key state commit
    # and with the pipelined one (the default): each choice beside the one before.
    ("user", 2, "low_latency", (RECORDS, PER_KEY)), ("user", 2, "low_latency", (RECORDS,)),
    ("ride", 1, "low_latency", ()), ("ride", 1, "catch_up", ()))
# How a job's flags read in tables.
FLAG_LABELS = {RECORDS: "records keyed", PER_KEY: "per-key commit"}
RATES = (250, 1_000, 5_000, 10_000, 20_000)
SIZES = {"full": {"phase_s": 20, "warmup_rate": 200, "warmup_s": 10, "bisect_steps": 3,
                  "drain_timeout_s": 90}}
USERS = 1_000
SKEW = 1.1
DISORDER_MS = 2_000
PROBE_EVERY = 10  # the probe follows users u0000, u0010, ...
PROBE_POLL_S = 0.01
KEEP_UP = 0.9  # consumed / sent
BEHIND_S = 10.0  # an event waiting this long stops the phase
TARGET_P99_MS = 1_000
BRACKET = 0.25  # bisection stops when the bracket is this narrow (relative to its top)
RAMP_S = 5.0  # the consumed rate is measured from this far into a phase
CATCH_UP_S = 4.0  # a drain this long had a backlog: its rate is the job's capacity


def _probed(pipeline: str) -> Callable[[dict[str, Any]], bool]:
    """Which events the freshness probe follows."""
    users = {f"u{i:04d}" for i in range(0, USERS, PROBE_EVERY)}
    if pipeline == "ride":
        return lambda e: e["userId"] in users and e["eventType"] == "END"
    return lambda e: e["userId"] in users


def freshness_summary(latencies_ms: list[float], unseen_ms: list[float]) -> dict[str, Any]:
    """Percentiles of the seen latencies plus the unseen events' ages (lower bounds)."""
    values = sorted(latencies_ms + unseen_ms)
    if not values:
        return {"events": 0, "unseen": 0}
    return {"events": len(values), "unseen": len(unseen_ms), "lower_bound": bool(unseen_ms),
            "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99), "max_ms": values[-1]}


def _phase(job: FeatureJob, rate: int, seconds: float, seed: int,
           drain_timeout_s: float) -> dict[str, Any]:
    """Sends ``rate`` events/s for ``seconds`` (live event times), then waits for the drain."""
    assert job.sampler is not None and job.cpu is not None and job.producer is not None
    spec = StreamSpec(events=max(1, int(rate * seconds)), users=USERS, rate_per_s=rate,
                      skew=SKEW, disorder_ms=DISORDER_MS, late_fraction=0.0, seed=seed,
                      start_ms=0)
    events = generate(job.pipeline, spec)
    probed = _probed(job.pipeline)
    probe = FreshnessProbe(job.redis, feature=PROBE_FEATURE[job.pipeline],
                           poll_s=PROBE_POLL_S).start()
    base_ms = int(time.time() * 1000)
    for event in events:
        event["eventTimestamp"] += base_ms
    producer, sent, behind = job.producer, 0, False
    cpu_before = job.cpu.snapshot()
    t0 = time.time()
    start = time.monotonic()
    next_check = start + 0.5
    for sent, event in enumerate(events, 1):
        producer.send(event)
        if probed(event):
            probe.sent(event["userId"], event["eventTimestamp"], time.time())
        now = time.monotonic()
        ahead = sent / rate - (now - start)
        if ahead > 0.002:
            time.sleep(ahead)
        if now >= next_check:
            next_check = now + 0.5
            waiting = probe.waiting_sent_at()
            if waiting and time.time() - min(waiting) > BEHIND_S:
                behind = True
                break
    undelivered = producer.flush(60)
    send_s = time.monotonic() - start
    t_sent = time.time()
    cpu = job.cpu.cores(cpu_before, job.cpu.snapshot(), send_s)
    job.sent += sent
    if undelivered or producer.failed:
        raise RuntimeError(f"producer: {undelivered} undelivered, {producer.failed} failed")

    deadline = time.monotonic() + drain_timeout_s
    while probe.waiting and time.monotonic() < deadline:
        time.sleep(0.05)
    drain_s = time.time() - t_sent
    probe.stop()
    now = time.time()
    unseen = [(now - at) * 1000 for at in probe.waiting_sent_at()]
    # From RAMP_S in: the events take a while to reach the counted step, and a
    # slope after that is the rate whatever the delay.
    consumed = job.sampler.rate(t0 + RAMP_S, t_sent)
    # A backlog drains as fast as the job can go: its capacity.
    catch_up = job.sampler.rate(t_sent, now) if drain_s >= CATCH_UP_S else None
    sent_per_s = sent / send_s
    kept_up = (not behind and not unseen
               and (consumed is None or consumed >= KEEP_UP * sent_per_s))
    # Let in-flight writes land before the next phase's probe starts.
    time.sleep(1.0)
    return {"offered_per_s": rate, "seconds": send_s, "sent": sent, "sent_per_s": sent_per_s,
            "producer_limited": sent_per_s < 0.95 * rate and not behind,
            "consumed_per_s": consumed, "stopped_early": behind, "drain_s": drain_s,
            "catch_up_per_s": catch_up,
            "kept_up": kept_up, "freshness": freshness_summary(probe.latencies_ms, unseen),
            "cpu_cores": cpu, "window": [t0, now]}


def _under_target(phase: dict[str, Any]) -> bool:
    p99 = phase["freshness"].get("p99_ms")
    return phase["kept_up"] and p99 is not None and p99 < TARGET_P99_MS


def _bracket(phases: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(highest rate with p99 < 1 s, lowest rate above it without)."""
    good = [p["offered_per_s"] for p in phases if _under_target(p)]
    lo = max(good) if good else None
    bad = [p["offered_per_s"] for p in phases
           if not _under_target(p) and p["offered_per_s"] > (lo or 0)]
    return lo, (min(bad) if bad else None)


def _round_rate(rate: float) -> int:
    """To 50 events/s below 1,000, to 250 above."""
    step = 50 if rate < 1_000 else 250
    return max(step, round(rate / step) * step)


def _line(pipeline: str, parallelism: int, p: dict[str, Any]) -> str:
    f = p["freshness"]
    consumed = "n/a" if p["consumed_per_s"] is None else f"{p['consumed_per_s']:,.0f}"
    fresh = (f"p50 {f['p50_ms']:,.0f} ms, p99 {f['p99_ms']:,.0f} ms, max {f['max_ms']:,.0f} ms"
             + (f" ({f['unseen']} unseen)" if f["unseen"] else "")) if f["events"] else "none"
    return (f"  {pipeline} p={parallelism} @{p['offered_per_s']:>6,}/s: sent "
            f"{p['sent_per_s']:,.0f}/s, consumed {consumed}/s, "
            f"{'kept up' if p['kept_up'] else 'NOT kept up'}; freshness {fresh}")


def _checkpoint_summary(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    done = [c for c in checkpoints if c["status"] == "COMPLETED"]
    if not done:
        return {"completed": 0, "failed": len(checkpoints)}
    durations = sorted(c["end_to_end_duration"] for c in done)
    return {"completed": len(done), "failed": len(checkpoints) - len(done),
            "duration_p50_ms": percentile(durations, 50), "duration_max_ms": durations[-1],
            "state_size_max": max(c["state_size"] for c in done),
            "checkpointed_size_max": max(c["checkpointed_size"] for c in done)}


def flags_label(flags: Sequence[str]) -> str:
    """``, records keyed, per-key commit``: a job's flags as tables name them."""
    return "".join(f", {FLAG_LABELS.get(f, f)}" for f in flags)


def measure_job(svc: Any, pipeline: str, parallelism: int, size: dict[str, Any],
                workdir: Path, redis_db: int, preset: str = "low_latency",
                workers: str = "pool", repeat: int = 1,
                flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Steps the offered rate up on one running job, then bisects for p99 < 1 s
    (``repeat``: the how-manieth job of its kind in this run, for its names;
    ``flags``: more flags for the job)."""
    name = f"bench-{pipeline}-p{parallelism}-{preset.replace('_', '-')}-{workers}"
    name += flags_label(flags).replace(", ", "-").replace(" ", "-")
    if repeat > 1:
        name += f"-{repeat}"
    job = FeatureJob(svc, pipeline, parallelism, name, workdir, redis_db, bundles=preset,
                     workers=workers, flags=flags)
    bundle_ms = BUNDLE_PRESETS[preset]["max_bundle_time_ms"]
    phases: list[dict[str, Any]] = []
    not_run: list[dict[str, Any]] = []
    seed = 100
    try:
        startup = job.start()
        print(f"  {name}: RUNNING after {startup['submit_to_running_s']:.0f} s, first event "
              f"in Redis {startup['first_event_in_redis_s']:.0f} s later", flush=True)
        _phase(job, size["warmup_rate"], size["warmup_s"], seed, size["drain_timeout_s"])
        for i, rate in enumerate(RATES):
            seed += 1
            phase = {**_phase(job, rate, size["phase_s"], seed, size["drain_timeout_s"]),
                     "step": "step-up"}
            phases.append(phase)
            print(_line(pipeline, parallelism, phase), flush=True)
            if not phase["kept_up"]:
                not_run = [{"offered_per_s": r, "reason": f"not sustained at {rate:,}/s"}
                           for r in RATES[i + 1:]]
                break
        drained = all(not p["freshness"].get("unseen") for p in phases)
        for _ in range(size["bisect_steps"] if drained else 0):
            lo, hi = _bracket(phases)
            if hi is None or hi - (lo or 0) <= BRACKET * hi:
                break
            mid = _round_rate(((lo or 0) + hi) / 2)
            if mid in (p["offered_per_s"] for p in phases):
                break
            seed += 1
            phase = {**_phase(job, mid, size["phase_s"], seed, size["drain_timeout_s"]),
                     "step": "bisect"}
            phases.append(phase)
            print(_line(pipeline, parallelism, phase), flush=True)
            if phase["freshness"].get("unseen"):
                break
        job.sampler.poll_checkpoints()
        counts = dict(job.sampler.counts)
        config = job.checkpoint_config()
        outputs = job.outputs()
    finally:
        job.stop()
    for p in phases:
        p["checkpoints"] = job.sampler.finished_between(*p.pop("window"))
    kept = [p for p in phases if p["kept_up"]]
    backlogged = [p["catch_up_per_s"] for p in phases if p["catch_up_per_s"] is not None]
    backlogged += [p["consumed_per_s"] for p in phases
                   if not p["kept_up"] and p["consumed_per_s"] is not None]
    lo, hi = _bracket(phases)
    every = [c for p in phases for c in p["checkpoints"]]
    return {"pipeline": pipeline, "parallelism": parallelism, "preset": preset,
            "workers": workers, "bundle_ms": bundle_ms, "flags": list(flags),
            "startup": startup,
            "phases": phases, "not_run": not_run,
            "max_kept_up_per_s": max((p["offered_per_s"] for p in kept), default=None),
            "capacity_per_s": max(backlogged, default=None),
            "p99_under_1s_per_s": lo, "p99_over_1s_per_s": hi,
            "checkpoints": _checkpoint_summary(every), "checkpoint_counts": counts,
            "checkpoint_config": config, "outputs": outputs}


def run(mode: str) -> dict[str, Any]:
    if mode not in SIZES:
        raise ValueError(f"section {NAME} runs in full mode only (it needs Flink)")
    size = SIZES[mode]
    jobs = []
    with tempfile.TemporaryDirectory(prefix="rtf-bench-e2e-") as tmp, flink_services() as svc:
        for db, (pipeline, parallelism, preset, flags) in enumerate(JOBS):
            try:
                jobs.append(measure_job(svc, pipeline, parallelism, size, Path(tmp), db,
                                        preset, flags=flags))
            except Exception as e:  # noqa: BLE001 (one failed job must not lose the others)
                print(f"  {pipeline} p={parallelism} FAILED: {e}", flush=True)
                jobs.append({"pipeline": pipeline, "parallelism": parallelism,
                             "preset": preset, "flags": list(flags),
                             "error": f"{type(e).__name__}: {e}"[:1000]})
    return {"parameters": {**size, "rates": list(RATES), "users": USERS, "skew": SKEW,
                           "disorder_ms": DISORDER_MS, "probe_every_nth_user": PROBE_EVERY,
                           "probe_poll_ms": PROBE_POLL_S * 1000, "keep_up_ratio": KEEP_UP,
                           "behind_s": BEHIND_S, "target_p99_ms": TARGET_P99_MS,
                           "checkpoint_interval_ms": CHECKPOINT_INTERVAL_MS,
                           "presets": {p: BUNDLE_PRESETS[p] for _, _, p, _ in JOBS},
                           "partitions": PARTITIONS},
            "jobs": jobs}


def measured(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The jobs that ran to the end (a failed one has only its ``error``)."""
    return [j for j in data["jobs"] if "error" not in j]


def bundle_label(job: dict[str, Any]) -> str:
    """`` low_latency`` (a job's bundle preset), or `` (50 ms bundles)`` in results of
    runs before presets (``""`` for their 200 ms default)."""
    if "preset" in job:
        return f" {job['preset']}{flags_label(job.get('flags', ()))}"
    ms = job.get("bundle_ms", BUNDLE_MS)
    return "" if ms == BUNDLE_MS else f" ({ms} ms bundles)"


def job_headline(data: dict[str, Any], label: Callable[[dict[str, Any]], str]
                 ) -> dict[str, float]:
    """Capacity and the highest rate with p99 < 1 s of each measured job, by ``label``."""
    out: dict[str, float] = {}
    for j in measured(data):
        for key, field in (("capacity ev/s", "capacity_per_s"),
                           ("p99<1s ev/s", "p99_under_1s_per_s")):
            if j[field] is not None:
                out[f"{label(j)} {key}"] = j[field]
    return out


def headline(data: dict[str, Any]) -> dict[str, float]:
    return job_headline(data, lambda j: f"{j['pipeline']} p{j['parallelism']}{bundle_label(j)}")


def print_summary(data: dict[str, Any]) -> None:
    for j in data["jobs"]:
        if "error" in j:
            print(f"  {j['pipeline']} p={j['parallelism']}: failed ({j['error'][:200]})")
            continue
        label = f"{j['pipeline']} p={j['parallelism']}{bundle_label(j)}"
        hi = j["p99_over_1s_per_s"]
        bound = f"< {hi:,}/s" if hi else "(no upper bound)"
        lo = j["p99_under_1s_per_s"]
        capacity = j["capacity_per_s"]
        print(f"  {label}: highest rate kept up {j['max_kept_up_per_s'] or 'none'}/s, "
              f"capacity {f'{capacity:,.0f}/s' if capacity else 'not reached'}; p99 < 1 s up to "
              f"{f'{lo:,}/s' if lo else 'no rate'} {bound}; checkpoints "
              f"{j['checkpoints'].get('completed', 0)} (p50 "
              f"{j['checkpoints'].get('duration_p50_ms', 0):,.0f} ms)")
