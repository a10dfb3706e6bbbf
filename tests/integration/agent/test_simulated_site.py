"""A simulated site (agent.demo.simulation) against a real CentralSystem, on a scaled clock.

A morning of a Monday: the fleet connects with its credentials, the drawn sessions arrive on
time, and what the bridge reports about them is what the stations' EVs drew.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.demo.simulation import (
    DEFAULT_PASSWORD,
    SessionGenerator,
    SimulatedSite,
    charger_records,
    default_fleet,
)
from agent.runtime.clock import ScaledClock
from ocpp_bridge.events import ChargerConnected, SessionEnded, SessionStarted, SessionUpdated
from ocpp_bridge.passwords import ScryptParameters
from ocpp_bridge.settings import BridgeSettings
from ocpp_bridge.simulator import ReconnectPolicy
from tests.integration.ocpp_bridge.conftest import run_bridge

pytestmark = pytest.mark.integration

ZONE = ZoneInfo("Europe/Amsterdam")
SPEED = 900.0  # four simulated hours in 16 s
SAFE_W = 11_040.0


async def test_a_simulated_morning_reaches_the_bridge_as_it_happened() -> None:
    start = datetime(2024, 6, 3, 6, 0, tzinfo=ZONE)
    end = start + timedelta(hours=4)
    clock = ScaledClock(start, SPEED)
    # Five-minute samples: at 900x a two-EVSE station then sends ~6 messages a second.
    fleet = default_fleet(6, prefix="SITE-", meter_interval_s=300)
    generator = SessionGenerator(fleet, "Europe/Amsterdam", seed=11, occupancy=3.0)
    plan = generator.plan(start.date())
    morning = [s for s in plan.sessions if s.arrival < end - timedelta(minutes=30)]
    assert len(morning) >= 3, "the seed should give a few morning sessions"
    records = charger_records(fleet, SAFE_W, DEFAULT_PASSWORD, ScryptParameters(n=2**10))
    settings = BridgeSettings(host="127.0.0.1", port=0, heartbeat_interval_s=300)
    async with run_bridge(settings, records=records, clock=clock) as bridge:
        site = SimulatedSite(
            bridge.url,
            fleet,
            clock,
            reconnect=ReconnectPolicy(wait_minimum_s=5, random_range_s=5),
        )
        async with site:
            async with asyncio.timeout(30):
                await site.wait_ready()
            connected = await bridge.log.wait_for(
                lambda: (
                    len(bridge.log.of(ChargerConnected)) == len(fleet)
                    and bridge.log.of(ChargerConnected)
                )
            )
            assert {e.charger_id for e in connected} == {s.charger_id for s in fleet}
            player = asyncio.create_task(site.play(morning))
            peak = 0.0
            while clock.now() < end:
                await clock.sleep(300)
                peak = max(peak, site.power_w())
            await player
            assert site.skipped == []
            stations = site.stations.values()
            finished = [ev for station in stations for ev in station.sessions]
            ongoing = [station.session(e) for station in stations for e in station.evses]
            await bridge.log.wait_for(
                lambda: (
                    len(bridge.log.of(SessionEnded)) == len(finished)
                    and all(st.pending_messages == 0 for st in stations)
                ),
                timeout_s=30,
                what="every message delivered",
            )
        started = bridge.log.of(SessionStarted)
        assert len(started) == len(morning)
        assert {e.session.id_token for e in started} == {s.id_token for s in morning}
        reported = {e.session.id_token: e.session.energy_wh for e in bridge.log.of(SessionEnded)}
        for ev in finished:
            assert reported[ev.id_token] == pytest.approx(ev.delivered_wh, abs=1.0)
        latest: dict[str, float] = {}
        for update in bridge.log.of(SessionUpdated):
            if update.session.energy_wh is not None:
                latest[update.session.session_id] = update.session.energy_wh
        assert sum(latest.values()) > 0
        metered = site.energy_wh()  # (brings the EVs' energy up to now first)
        drawn = sum(ev.delivered_wh for ev in finished)
        drawn += sum(ev.delivered_wh for ev in ongoing if ev is not None)
        assert drawn == pytest.approx(metered)  # every Wh the meters counted belongs to an EV
        assert 0 < peak <= SAFE_W * len(fleet)
