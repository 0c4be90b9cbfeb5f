"""Benchmarks: throughput, state size and latency beside their physical limits.

    python -m benchmarks.run [--quick] [--sections transform,sink,state,serving]

Each section writes ``benchmarks/results/<section>.json`` (with the machine
and the git commit it ran on, keeping a history for before/after) and the run
regenerates ``BENCHMARKS.md`` and ``benchmarks/plots/*.png`` from every
results file there is. Benchmarks are not tests: speed targets live here.
"""
