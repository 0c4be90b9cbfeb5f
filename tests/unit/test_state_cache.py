"""The state cache's size estimate: near the true deep size of state cells, at bounded cost."""

from __future__ import annotations

from apache_beam.runners.worker import statecache

from runtime import state_cache


def _cells() -> dict[str, object]:
    tiles = {k: [float(k), 1e-9] for k in range(60)}
    sessions = [[1_000 * i, 1_000 * i + 500, i, False] for i in range(5)]
    return {
        "sliding": [{"RideCounts/meta": {"c": {"ams": 3, "lis": 1}, "max_ts": 1, "clock": 0},
                     "AmountSum60s/tiles": {"t": tiles, "p": list(range(10)), "clock": 5}}],
        "sessions": [{"Sessions/sessions": {"s": sessions, "clock": None, "horizon": None},
                      "_t": {"Sessions/session_fire": [1, 2, 3]}}],
        "empty": [{}],
    }


def test_estimate_is_within_a_small_factor_of_the_deep_size():
    for name, cell in _cells().items():
        deep = statecache.get_deep_size(cell)
        estimate = state_cache.estimate_size(cell)
        assert deep / 3 <= estimate <= deep * 3, (name, deep, estimate)


def test_estimate_looks_at_a_bounded_number_of_objects(monkeypatch):
    seen = []
    real = state_cache.sys.getsizeof
    monkeypatch.setattr(state_cache.sys, "getsizeof", lambda o: seen.append(1) or real(o))
    small = [{"t": {k: [1.0] for k in range(10)}}]
    huge = [{"t": {k: [1.0] for k in range(100_000)}}]
    state_cache.estimate_size(small)
    n_small, seen[:] = len(seen), []
    state_cache.estimate_size(huge)
    assert len(seen) == n_small  # the same few objects, however large the state
    assert state_cache.estimate_size(huge) > 50 * state_cache.estimate_size(small)


def test_install_replaces_the_sdk_sizer(monkeypatch):
    monkeypatch.setattr(statecache, "get_deep_size", statecache.get_deep_size)
    state_cache.install()
    assert statecache.get_deep_size is state_cache.estimate_size
