"""The fleet bus connection never holds up the agent's start: it connects in the background,
with back-off, and until then the link sees BusUnavailable (its messages wait)."""

from __future__ import annotations

import asyncio

import pytest

from agent.fleet.connection import FleetConnection
from agent.fleet.ports import BusUnavailable
from agent.runtime.loops import Backoff
from tests.support.fleet_memory_bus import MemoryBus


class ClosingBus(MemoryBus):
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_start_returns_at_once_and_connects_when_the_servers_answer() -> None:
    bus = ClosingBus()
    refusals = 3
    attempts: list[int] = []

    async def connect() -> ClosingBus:
        attempts.append(1)
        if len(attempts) <= refusals:
            raise BusUnavailable("nothing listening")
        return bus

    connection = FleetConnection(connect, backoff=Backoff(first_s=0.01, max_s=0.02))
    await connection.start()
    with pytest.raises(BusUnavailable, match="not connected"):
        await connection.publish("fleet.up.a.heartbeat", "m1", b"{}")
    for _ in range(500):
        if connection.connected:
            break
        await asyncio.sleep(0.01)
    assert len(attempts) == refusals + 1
    await connection.publish("fleet.up.a.heartbeat", "m1", b"{}")
    assert [p.msg_id for p in bus.published] == ["m1"]
    await connection.stop()
    assert bus.closed
    with pytest.raises(BusUnavailable):
        await connection.fetch("FLEET_CMD", "site-a", 1, 0.01)


async def test_stop_while_still_connecting_ends_the_attempts() -> None:
    async def connect() -> ClosingBus:
        raise BusUnavailable("nothing listening")

    connection = FleetConnection(connect, backoff=Backoff(first_s=0.01, max_s=0.01))
    await connection.start()
    await asyncio.sleep(0.05)
    await connection.stop()
    attempts = connection.attempts
    await asyncio.sleep(0.05)
    assert connection.attempts == attempts
    assert not connection.connected
