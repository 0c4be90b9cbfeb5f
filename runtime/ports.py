"""Free TCP ports for the services tests and benchmarks start on 127.0.0.1.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` lies in the
ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 on
Linux), where every outgoing connection and every ``port 0`` listener of
the services themselves (a Flink TaskManager's data and RPC ports, for one)
also lands. A port picked there and bound a few seconds later by another
service can be taken meanwhile: a job server once failed with "Address
already in use" on the port a TaskManager had just opened. So ports are
drawn below the ephemeral range, where nothing binds by accident.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(block: int = 1) -> int:
    """A TCP port free on 127.0.0.1 now, below the ephemeral range when it can be;
    with ``block`` > 1 the first of that many consecutive free ports."""
    top = _ephemeral_start()
    if top - block > _LOWEST:
        for _ in range(200):
            port = random.randint(_LOWEST, top - block)  # noqa: S311 (not for security)
            if all(_bindable(port + i) for i in range(block)):
                return port
    if block > 1:
        raise OSError(f"no {block} consecutive free ports below {top}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
