"""State TTL for idle keys. Beam has no state TTL: a cleanup timer is the TTL.

A DoFn that keeps per-key state forever (a lifetime counter, a late-event
clock) grows with the number of keys ever seen. ``IdleTtl`` gives it one
event-time timer per key, pushed forward by every event; when the watermark
passes the last event plus the TTL, the key is idle and its state is cleared.
"""

from __future__ import annotations

from typing import Any

from transforms.late import EventClock


class IdleTtl:
    """An event-time TTL policy for a key's state.

    Args:
        ttl_ms: idle time (event time) after which a key's state is cleared;
            ``None`` or 0 keeps state forever.
    """

    def __init__(self, ttl_ms: int | None) -> None:
        if ttl_ms is not None and ttl_ms < 0:
            raise ValueError("ttl_ms must be >= 0")
        self.ttl_ms = ttl_ms or None

    def touch(self, timer: Any, last_event_ms: int, clock: EventClock) -> None:
        """Pushes the key's expiry to ``last_event_ms + ttl`` (a no-op without TTL)."""
        if self.ttl_ms is not None:
            clock.set_static(timer, last_event_ms + self.ttl_ms)

    def expired(self, last_event_ms: int | None, fired_ms: int) -> bool:
        """Whether a TTL timer firing at ``fired_ms`` finds the key idle."""
        return (self.ttl_ms is not None and last_event_ms is not None
                and last_event_ms + self.ttl_ms <= fired_ms)
