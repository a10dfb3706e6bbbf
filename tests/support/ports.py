"""Free TCP ports on loopback.

A port from `bind(0)` is an ephemeral one: between handing it out and the server binding it,
any outgoing connection on the machine (a charger, a client, a DSO peer) may take it as its
local port, and the suite makes thousands of them. So ports come from below the kernel's
ephemeral range, where no outgoing connection is assigned one, at random, each checked by a
bind and never handed out twice in one run. Servers under test bind themselves where they can
(port 0) and report it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 10_000
_given: set[int] = set()
_rng = random.Random()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    ceiling = _ephemeral_start()
    for _ in range(1_000):
        port = _rng.randrange(_FLOOR, ceiling)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port between {_FLOOR} and {ceiling} on {host}")


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    import time

    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s ({last})")
