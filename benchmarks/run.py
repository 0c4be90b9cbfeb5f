"""Runs the benchmark sections and regenerates BENCHMARKS.md.

    python -m benchmarks.run                     # every available section, full sizes
    python -m benchmarks.run --quick             # small sizes (make bench-quick)
    python -m benchmarks.run --sections sink,serving
    python -m benchmarks.run --report-only       # rebuild BENCHMARKS.md from the JSON
    python -m benchmarks.run --sections transform --before 9d59315   # before/after

Each section's numbers go to ``benchmarks/results/<section>.json`` with the
machine, the command and the git commit; a rerun on the same code replaces
its row, a run on new code adds one (before/after). ``--before REV`` measures
commit ``REV``'s code in the same run, beside the current code, in the
sections that support it (their ``run`` takes ``before``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

from benchmarks import env, report, store
from benchmarks.catalogue import BY_NAME, SECTIONS


def _parse(argv: list[str] | None) -> argparse.Namespace:
    available = [s.name for s in SECTIONS if s.module]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: every section in under 3 minutes on 2 cores")
    parser.add_argument("--sections", default=",".join(available),
                        help=f"comma-separated, of {', '.join(available)} (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing; rebuild BENCHMARKS.md from the results files")
    parser.add_argument("--before", metavar="REV", default=None,
                        help="also measure the code of this git revision in the same run "
                             "(sections that support it: before/after side by side)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in args.sections:
        if name not in BY_NAME:
            parser.error(f"unknown section {name!r}; known: {', '.join(BY_NAME)}")
        if BY_NAME[name].module is None:
            parser.error(f"section {name!r} is not measured in this tree yet: "
                         f"{BY_NAME[name].pending}")
    if args.before:
        try:
            env.commit_identity(args.before)
        except ValueError as e:
            parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mode = "quick" if args.quick else "full"
    ran: set[str] = set()
    if not args.report_only:
        machine, code, command = env.machine(), env.code_identity(), env.command_line()
        dirty = " (uncommitted changes)" if code["dirty"] else ""
        print(f"benchmarks ({mode}) at {code['commit']}{dirty} on {machine['cpu_model']}, "
              f"{machine['usable_cpus']} CPUs", flush=True)
        for name in args.sections:
            section = BY_NAME[name]
            if mode == "quick" and not section.quick:
                print(f"[{section.part}] {section.title}: not run in quick mode "
                      "(it needs the Flink services; `make bench` runs it)", flush=True)
                continue
            module = section.load()
            print(f"[{section.part}] {section.title} ...", flush=True)
            started, timestamp = time.perf_counter(), env.now_iso()
            load_before = os.getloadavg()[0]
            if args.before and "before" in inspect.signature(module.run).parameters:
                data = module.run(mode, before=args.before)
            else:
                data = module.run(mode)
            duration = time.perf_counter() - started
            store.record(name, {"timestamp": timestamp, "command": command, "mode": mode,
                                "duration_s": duration, "machine": machine, "code": code,
                                # Other work on the machine skews every number: say so.
                                "load_average_1m": [load_before, os.getloadavg()[0]],
                                "headline": module.headline(data), "data": data})
            module.print_summary(data)
            print(f"  ({duration:.1f} s)", flush=True)
            ran.add(name)
    path = report.write(ran)
    print(f"wrote {path.relative_to(env.ROOT)} and {store.PLOTS_DIR.relative_to(env.ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
