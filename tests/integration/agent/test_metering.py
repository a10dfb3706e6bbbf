"""UFTP Metering for a finished day: sent once, from our measurements, accepted by the DSO."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.app import build_agent
from agent.storage import store
from agent.trading.market import Market
from tests.support.agent_env import CP, TZ, connection, make_env, seed_history
from uftp.dso import Received
from uftp.models import Metering, MeteringProfileType

pytestmark = pytest.mark.integration


class NoonClock:
    """Real time passing, but today at 12:00 local: after the 01:00 metering hour."""

    def __init__(self) -> None:
        today = datetime.now(UTC).astimezone(ZoneInfo(TZ)).date()
        self.start = datetime.combine(today, time(12, 0), ZoneInfo(TZ)).astimezone(UTC)
        self.real = datetime.now(UTC)

    def now(self) -> datetime:
        return self.start + (datetime.now(UTC) - self.real)

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)


async def test_metering_of_yesterday_from_our_measurements(tmp_path: Path) -> None:
    env = make_env(tmp_path, metering={"enabled": True, "ean": "E1234567890123456"})
    clock = NoonClock()
    market = Market(TZ, 15)
    today = market.today(clock.now())
    seed_history(env.config, today, days=5)
    dso = env.dso()
    await dso.start()
    agent = build_agent(env.config, clock)
    started = []
    try:
        for component in agent.components:
            await component.start()
            started.append(component)
        for back in (3, 2, 1):
            received = await dso.wait_handled(
                lambda o, b=back: (
                    isinstance(o, Received)
                    and isinstance(o.message, Metering)
                    and o.message.period == today - timedelta(days=b)
                ),
                30,
            )
            assert isinstance(received, Received)
            assert received.accepted, received.rejections
        # Once per day: a second round sends nothing new.
        assert await agent.trader.send_metering() == []
    finally:
        for component in reversed(started):
            await component.stop()
        await dso.stop()

    metering = [
        o.message
        for o in dso.handled
        if isinstance(o, Received) and isinstance(o.message, Metering)
    ]
    assert sorted(m.period for m in metering) == [today - timedelta(days=d) for d in (3, 2, 1)]
    yesterday = today - timedelta(days=1)
    message = next(m for m in metering if m.period == yesterday)
    assert message.ean == "E1234567890123456"
    profiles = {p.profile_type: p for p in message.profiles}
    energy = profiles[MeteringProfileType.IMPORT_ENERGY]
    power = profiles[MeteringProfileType.POWER]
    assert len(energy.isps) == market.count(yesterday)  # measured all day: zeros included
    conn = connection(env.config)
    try:
        measured = store.congestion_point_energy(conn, CP, *market.bounds(yesterday))
    finally:
        conn.close()
    assert float(sum(i.value for i in energy.isps)) == pytest.approx(
        sum(measured.values()) / 1000, abs=0.01
    )
    for e, p in zip(energy.isps, power.isps, strict=True):
        assert float(p.value) == pytest.approx(float(e.value) * 4, abs=0.002)
