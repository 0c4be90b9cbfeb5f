"""Order-independent float sums.

Feature values must not depend on the order events arrive in. Plain float
addition does (``0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1``), and subtracting expired
values leaves residues (a window that empties reads ``1e-17``, not ``0``). We
keep each running sum as Shewchuk's list of non-overlapping partials, which
represents the sum exactly, and round once when a value is read.

>>> acc = []
>>> for x in (0.1, 0.2, 0.3):
...     _ = add(acc, x)
>>> total(acc) == total(add(add(add([], 0.3), 0.2), 0.1)) == 0.6
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def add(partials: list[float], x: float) -> list[float]:
    """Adds ``x`` to the exact sum ``partials`` in place and returns it."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        if math.isinf(hi):
            # Past the double range the exact sum is not representable: saturate.
            partials[:] = [hi]
            return partials
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]
    return partials


def merge(into: list[float], other: Iterable[float]) -> list[float]:
    """Adds every partial of ``other`` to ``into`` (exactly)."""
    for x in other:
        add(into, x)
    return into


def total(partials: Iterable[float]) -> float:
    """The correctly rounded value of one or more exact sums' partials."""
    values = list(partials)
    try:
        result = math.fsum(values)
    except OverflowError:
        result = math.copysign(math.inf, sum(values))
    # fsum of an empty or cancelled window is 0.0; never report -0.0.
    return result + 0.0
