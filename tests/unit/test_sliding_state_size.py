"""The sliding sum's state per key stays bounded as one key's event rate grows.

Drives the DoFn's own process/timer methods with in-memory state and timer
fakes (pure logic: no runner involved) and measures the encoded state.
"""

from __future__ import annotations

import random

from apache_beam.coders import FastPrimitivesCoder
from apache_beam.utils.timestamp import Timestamp

from transforms.sliding import SlidingSum

WINDOW_S = 60


class FakeState:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


class FakeTimer:
    def __init__(self):
        self.pending = set()

    def set(self, ts, dynamic_timer_tag=""):
        self.pending.add(ts.micros // 1000)


def max_state_bytes(rate_per_s: int, seconds: int = 300) -> int:
    """Streams `seconds` of events at `rate_per_s` for one key, watermark 5 s behind."""
    fn = SlidingSum("s", "amount")._fn
    state, timer, coder = FakeState(), FakeTimer(), FastPrimitivesCoder()
    rng = random.Random(rate_per_s)
    biggest = 0
    for second in range(seconds):
        for i in range(rate_per_s):
            ts = second * 1000 + i * 1000 // rate_per_s
            list(fn.process(("k", {"eventTimestamp": ts, "amount": rng.uniform(1, 50)}),
                            state=state, fire=timer))
        watermark = second * 1000 - 5_000
        for due in sorted(t for t in timer.pending if t <= watermark):
            timer.pending.discard(due)
            list(fn._fire(key="k", fired=Timestamp(micros=due * 1000), state=state))
        biggest = max(biggest, len(coder.encode(state.read())))
    return biggest


def test_state_bytes_do_not_grow_with_the_event_rate():
    sizes = {rate: max_state_bytes(rate) for rate in (1, 10, 100, 1000)}
    print("max state bytes per key by events/s:", sizes)
    # Tiles hold exact partial sums: a few floats each, whatever the rate.
    assert sizes[1000] < 2.5 * sizes[10]
    assert sizes[1000] < 20_000
