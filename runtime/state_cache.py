"""The Python SDK worker's state cache, sized without walking every value.

Beam's SDK worker can keep user state between bundles (``StateCache``, on
with ``--max_cache_memory_usage_mb``), so a key's state is read from the
runner once, not once per bundle. To stay within its size it weighs each
value it stores with ``objsize``, which follows every object the value
references: for a feature state cell (a dict of windows, tiles or sessions)
that walk costs more than the feature's own work, on every write.

``estimate_size`` weighs a value by looking at most three levels deep and at
most ``_SAMPLE`` items per container, scaling up by the container's length:
constant cost per write, within a small factor of the true size for the
regular, JSON-like state cells our DoFns keep (checked by
``tests/unit/test_state_cache.py``). ``install()`` puts it in place of the
SDK's sizer in this process: the process that runs the Python workers (the
launching process under LOOPBACK, ``rtf-sdk-worker`` under a worker pool).
"""

from __future__ import annotations

import sys
from typing import Any

_SAMPLE = 4
_CONTAINERS = (list, tuple, dict, set, frozenset)


def _items(value: Any) -> tuple[list[Any], int]:
    """Up to ``_SAMPLE`` items of a container (a dict's keys and values) and its length."""
    if isinstance(value, dict):
        sample: list[Any] = []
        for i, (k, v) in enumerate(value.items()):
            if i == _SAMPLE:
                break
            sample += (k, v)
        return sample, 2 * len(value)
    if isinstance(value, list | tuple):
        return list(value[:_SAMPLE]), len(value)
    sample = []
    for i, v in enumerate(value):
        if i == _SAMPLE:
            break
        sample.append(v)
    return sample, len(value)


def _estimate(value: Any, depth: int) -> int:
    size = sys.getsizeof(value)
    if depth == 0 or not isinstance(value, _CONTAINERS) or not value:
        return size
    sample, n = _items(value)
    if not sample:
        return size
    sampled = sum(_estimate(v, depth - 1) for v in sample)
    return size + sampled * n // len(sample)


def estimate_size(*objs: Any) -> int:
    """An estimate of the deep size of ``objs`` in bytes, at constant cost."""
    return sum(_estimate(o, 3) for o in objs)


def install() -> None:
    """Makes this process's SDK state cache weigh values with ``estimate_size``."""
    from apache_beam.runners.worker import statecache

    statecache.get_deep_size = estimate_size
