"""agent.runtime.loops: the agent's loops wait on its clock; a dead one raises the loop fault."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from agent.app import build_agent
from agent.runtime.config import Config
from agent.runtime.faults import LOOP
from agent.runtime.loops import clock_loop
from agent.runtime.systemd import SystemdWatchdog


class RecordingClock:
    """A Clock whose sleeps are recorded and return at once (no real waiting)."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def now(self) -> datetime:
        return datetime(2026, 6, 1, tzinfo=UTC)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.Event().wait() if len(self.slept) > 2 else None


async def test_clock_loop_waits_on_the_agents_clock() -> None:
    clock = RecordingClock()
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1

    loop = clock_loop("ticking", step, clock, interval_s=30.0)
    loop.start()
    for _ in range(50):
        await asyncio.sleep(0)
    await loop.stop()
    assert clock.slept == [30.0, 30.0, 30.0]
    assert steps == 3


class Fatal(BaseException):
    pass


async def test_a_dead_agent_loop_raises_the_loop_fault(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = build_agent(config)
    await agent.db.start()
    try:
        agent.site.flush_interval_s = 0.0  # the flush loop steps at once

        async def broken() -> None:
            raise Fatal("bug")

        real_flush = agent.site.flush
        monkeypatch.setattr(agent.site, "flush", broken)
        await agent.site.start()
        for _ in range(50):
            await asyncio.sleep(0)
        assert agent.faults.is_active(LOOP)
        assert "site-flush stopped" in agent.faults.problems()[0]
        # A restart cures it: the watchdog withholds its pings, so systemd restarts the agent.
        watchdog = agent.components[-1]
        assert isinstance(watchdog, SystemdWatchdog)
        assert [p for p in await watchdog.check() if p.startswith("loop: ")] == [
            agent.faults.problems()[0]
        ]
        monkeypatch.setattr(agent.site, "flush", real_flush)
        await agent.site.stop()
    finally:
        await agent.db.stop()
