"""Committing a bundle's user state: every write sent before one wait, in order per state."""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.coders import FastPrimitivesCoder, StrUtf8Coder, VarIntCoder
from apache_beam.runners.worker import bundle_processor
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    SetStateSpec,
)
from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from runtime import state_commit

CELL = ReadModifyWriteStateSpec("cell", FastPrimitivesCoder())
SEEN = BagStateSpec("seen", VarIntCoder())
TAGS = SetStateSpec("tags", StrUtf8Coder())


class _Future:
    def __init__(self, log: list[tuple[Any, ...]], what: tuple[Any, ...]) -> None:
        self._log = log
        self._what = what

    def get(self) -> None:
        self._log.append(("wait", *self._what))


class _Handler:
    """Records the state requests a commit sends and when it waits for their answers."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    @staticmethod
    def _name(state_key: Any) -> tuple[str, str]:
        part = state_key.bag_user_state  # the key is nested-encoded: a length byte first
        return part.user_state_id, part.key[1:].decode()

    def blocking_get(self, state_key: Any, coder: Any) -> list[Any]:
        return []  # every state starts empty

    def clear(self, state_key: Any) -> _Future:
        self.log.append(("clear", *self._name(state_key)))
        return _Future(self.log, self._name(state_key))

    def extend(self, state_key: Any, coder: Any, elements: Any) -> _Future:
        self.log.append(("extend", *self._name(state_key), sorted(elements, key=str)))
        return _Future(self.log, self._name(state_key))


def _bundle(handler: _Handler) -> Any:
    """A bundle's state context after three keys wrote their cell, one appended to a
    bag and one added to a set (which Beam may already have written back, at random)."""
    context = bundle_processor.FnApiUserStateContext(
        handler, "Features", StrUtf8Coder(), GlobalWindows().get_window_coder())
    for n, key in enumerate(("u1", "u2", "u3")):
        context.get_state(CELL, key, GlobalWindow()).write({"n": n})
    context.get_state(SEEN, "u1", GlobalWindow()).add(7)
    context.get_state(TAGS, "u2", GlobalWindow()).add("vip")
    return context


@pytest.fixture
def restore_commit(monkeypatch):
    context = bundle_processor.FnApiUserStateContext
    monkeypatch.setattr(context, "commit", context.__dict__["commit"])


def test_pipelined_commit_sends_every_write_before_it_waits(restore_commit):
    state_commit.install("pipelined")
    handler = _Handler()
    _bundle(handler).commit()
    log = handler.log
    bags = [e for e in log if e[1] in ("cell", "seen")]
    # every bag-backed write is sent before the first wait ...
    first_wait = next(i for i, e in enumerate(log) if e[0] == "wait")
    assert all(log.index(e) < first_wait for e in bags if e[0] != "wait")
    # ... each state's clear before its append, with what the bundle wrote
    assert [e for e in bags if e[0] != "wait"] == [
        ("clear", "cell", "u1"), ("extend", "cell", "u1", [{"n": 0}]),
        ("clear", "cell", "u2"), ("extend", "cell", "u2", [{"n": 1}]),
        ("clear", "cell", "u3"), ("extend", "cell", "u3", [{"n": 2}]),
        ("extend", "seen", "u1", [7])]
    # every one is waited for before the commit returns, the set's own way included
    waited = {e[1:] for e in log if e[0] == "wait"}
    assert {("cell", "u1"), ("cell", "u2"), ("cell", "u3"), ("seen", "u1")} <= waited
    assert ("extend", "tags", "u2", ["vip"]) in log


def test_per_key_commit_is_beams_own_a_wait_after_each_state(restore_commit):
    state_commit.install("per_key")
    handler = _Handler()
    _bundle(handler).commit()
    # (Beam's set state writes itself back at random when added to: left out here)
    assert [e for e in handler.log if e[1] == "cell"][:6] == [
        ("clear", "cell", "u1"), ("extend", "cell", "u1", [{"n": 0}]), ("wait", "cell", "u1"),
        ("clear", "cell", "u2"), ("extend", "cell", "u2", [{"n": 1}]), ("wait", "cell", "u2")]


def test_install_switches_both_ways_and_refuses_other_modes(restore_commit):
    state_commit.install("pipelined")
    assert bundle_processor.FnApiUserStateContext.commit is state_commit.commit_pipelined
    state_commit.install("per_key")
    beams = bundle_processor.FnApiUserStateContext.commit
    assert beams.__module__ == bundle_processor.__name__
    assert beams.__qualname__ == "FnApiUserStateContext.commit"
    with pytest.raises(ValueError, match="per_key"):
        state_commit.install("later")


def test_the_pool_worker_reads_the_mode_the_job_was_submitted_with():
    from runtime.sdk_worker import _option

    assert _option({"options": {"state_commit": "per_key"}}, "state_commit", "pipelined") \
        == "per_key"
    assert _option({"beam:option:state_commit:v1": "per_key"}, "state_commit", "pipelined") \
        == "per_key"
    assert _option({"options": {}}, "state_commit", "pipelined") == "pipelined"
