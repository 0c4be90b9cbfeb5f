"""Event-to-Redis freshness: from a producer's send to the value being readable.

The probe remembers, per user, the send time of each event that moves the
user's newest event time forward, and polls Redis for the ``as_of`` of a
feature updated on every event (``clicks_in_session`` in the user pipeline).
Once a stored ``as_of`` reaches an event's time, that event's effect is
readable: its freshness is the poll time minus its send time. Polling every
``poll_s`` adds at most that much to each figure.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered))))
    return ordered[rank - 1]


class FreshnessProbe:
    """Measures send -> readable latency for events of many users.

    Args:
        redis_client: a ``redis.Redis``.
        feature: a feature written with ``as_of`` = the newest event time.
        prefix: key prefix of the hash layout.
        poll_s: polling interval.
    """

    def __init__(self, redis_client: Any, feature: str, prefix: str = "features:user",
                 poll_s: float = 0.005) -> None:
        self._redis = redis_client
        self._field = f"{feature}:as_of"
        self._prefix = prefix
        self._poll_s = poll_s
        self._pending: dict[str, deque[tuple[int, float]]] = defaultdict(deque)
        self._newest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.latencies_ms: list[float] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sent(self, user: str, event_ms: int, sent_at: float) -> None:
        """Records that an event was sent at ``sent_at`` (``time.time()``)."""
        with self._lock:
            if event_ms > self._newest.get(user, -(2**63)):
                self._newest[user] = event_ms
                self._pending[user].append((event_ms, sent_at))

    def start(self) -> FreshnessProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._pending.values())

    def waiting_sent_at(self) -> list[float]:
        """Send times (``time.time()``) of the events not readable yet."""
        with self._lock:
            return [sent_at for q in self._pending.values() for _, sent_at in q]

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                users = [u for u, q in self._pending.items() if q]
            if users:
                pipe = self._redis.pipeline(transaction=False)
                for user in users:
                    pipe.hget(f"{self._prefix}:{user}", self._field)
                rows = pipe.execute()
                now = time.time()
                for user, raw in zip(users, rows, strict=True):
                    if raw is not None:
                        self.readable(user, int(raw), now)
            time.sleep(self._poll_s)

    def readable(self, user: str, as_of: int, now: float) -> None:
        """The user's feature is readable at ``now`` with ``as_of``: every event sent for
        it up to that event time is counted, with its freshness."""
        with self._lock:
            queue = self._pending[user]
            while queue and queue[0][0] <= as_of:
                _, sent_at = queue.popleft()
                self.latencies_ms.append((now - sent_at) * 1000)

    def summary(self) -> dict[str, float]:
        """p50 / p99 / max freshness in ms over the events seen so far."""
        lat = self.latencies_ms
        return {"events": len(lat), "p50_ms": round(percentile(lat, 50), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "max_ms": round(max(lat), 1) if lat else float("nan")}
