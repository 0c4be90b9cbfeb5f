"""Writing a bundle's user state back with one wait, not one per key.

At the end of a bundle Beam's Python SDK writes back every user state the
bundle touched (``FnApiUserStateContext.commit``). For a bag state, and for a
ReadModifyWrite or combining state, which are bags underneath, it sends the
runner a clear and an append and then waits for the runner's answer before it
writes the next state (``SynchronousBagRuntimeState.commit``). A keyed stage
that touched N keys in a bundle waits for N round trips in a row, each a hop
through gRPC and the Python worker's threads, and the runner waits for the
bundle meanwhile. That costs most where bundles are small and frequent: live
streams with the ``low_latency`` preset (BENCHMARKS.md, section 3, measures
the user job both ways).

``install()`` replaces that commit in this process with one that sends the
writes of every bag-backed state first and then waits for all their answers.
What holds when the bundle ends is unchanged: the bundle completes only after
every write is acknowledged, and the writes of one state reach the runner in
the order they were sent, the order the SDK's own commit already relies on
(it waits for the append, never for the clear before it). States of other
kinds (sets, ordered lists) commit as before. Install it in the process that
runs the Python workers: ``rtf-sdk-worker`` under a worker pool, the launching
process under LOOPBACK.
"""

from __future__ import annotations

from typing import Any

from apache_beam.runners.worker import bundle_processor

MODES = ("pipelined", "per_key")


def _send(bag: Any) -> Any:
    """Sends a bag state's clear and append; returns the future to wait for (or None)."""
    last = None
    if bag._cleared:
        last = bag._state_handler.clear(bag._state_key)
    if bag._added_elements:
        last = bag._state_handler.extend(bag._state_key, bag._value_coder.get_impl(),
                                         bag._added_elements)
    return last


def commit_pipelined(context: Any) -> None:
    """``FnApiUserStateContext.commit``, with one wait for all bag-backed states."""
    pending = []
    for state in context._all_states.values():
        bag = getattr(state, "_underlying_bag_state", state)
        if type(bag) is bundle_processor.SynchronousBagRuntimeState:
            pending.append(_send(bag))
        else:
            state.commit()
    for future in pending:
        if future is not None:
            future.get()


def install(mode: str = "pipelined") -> None:
    """Makes this process's SDK workers commit user state the ``mode`` way:
    ``pipelined`` (one wait per bundle) or ``per_key`` (Beam's own)."""
    if mode not in MODES:
        raise ValueError(f"state commit mode {mode!r}: one of {', '.join(MODES)}")
    context = bundle_processor.FnApiUserStateContext
    original = context.__dict__.get("_rtf_original_commit", context.commit)
    context._rtf_original_commit = original  # type: ignore[attr-defined]
    context.commit = commit_pipelined if mode == "pipelined" else original  # type: ignore[method-assign]
