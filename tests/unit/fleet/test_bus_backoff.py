"""The reconnect schedule: every node once at once, the one just lost last, then rounds
spaced out exponentially with jitter up to the cap."""

from __future__ import annotations

from urllib.parse import urlparse

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Server

from agent.fleet.bus import _Backoff


def _servers(n: int) -> list[Server]:
    return [Server(uri=urlparse(f"nats://10.0.0.{i}:4222")) for i in range(1, n + 1)]


def test_first_round_is_immediate_and_tries_the_lost_node_last() -> None:
    backoff = _Backoff(base_s=0.5, max_s=30.0)
    backoff.reset("10.0.0.1:4222")
    servers = _servers(3)
    first_round = [backoff(servers, {}) for _ in range(3)]
    assert [delay for _, delay in first_round] == [0.0, 0.0, 0.0]
    chosen = [server.uri.netloc for server, _ in first_round if server is not None]
    assert chosen == ["10.0.0.2:4222", "10.0.0.3:4222", "10.0.0.1:4222"]


@given(
    nodes=st.integers(min_value=1, max_value=5),
    base=st.floats(min_value=0.01, max_value=5.0),
    cap=st.floats(min_value=5.0, max_value=120.0),
)
def test_later_rounds_grow_and_never_exceed_the_cap(nodes: int, base: float, cap: float) -> None:
    backoff = _Backoff(base_s=base, max_s=cap)
    servers = _servers(nodes)
    delays = [backoff(servers, {})[1] for _ in range(nodes * 12)]
    assert delays[:nodes] == [0.0] * nodes
    for i, delay in enumerate(delays[nodes:], start=nodes):
        expected = min(cap, base * 2 ** (i // nodes - 1))
        assert 0.8 * expected <= delay <= 1.2 * expected


def test_a_reconnect_starts_over() -> None:
    backoff = _Backoff(base_s=0.5, max_s=30.0)
    servers = _servers(3)
    for _ in range(10):
        backoff(servers, {})
    backoff.reset("10.0.0.2:4222")
    assert backoff(servers, {})[1] == 0.0
