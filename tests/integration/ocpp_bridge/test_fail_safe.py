"""Fail-safe: when flexbridge disappears, the dynamic layer expires and the safe layer rules.

Asserted on the simulated charger's own composite schedule, i.e. what the charger would
enforce with nobody left to talk to.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from ocpp_bridge.events import PowerPeriod
from ocpp_bridge.settings import BridgeSettings
from ocpp_bridge.simulator import SimCharger16, SimCharger201, running
from ocpp_bridge.timestamps import utc_now
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge
from tests.integration.ocpp_bridge.test_smart_charging import record

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sim_class", [SimCharger16, SimCharger201])
async def test_charger_falls_back_to_the_safe_layer_after_the_bridge_dies(sim_class: Any) -> None:
    validity_s = 3.0
    bridge_settings = BridgeSettings(host="127.0.0.1", port=0, dynamic_validity_s=validity_s)
    async with (
        run_bridge(bridge_settings, records=[record(safe_w=4_140)]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await sim.boot()
        await bridge.log.wait_for(lambda: bridge.system.snapshot()[0].safe_purpose, what="safe")
        now = utc_now()
        # The flex schedule allows 22 kW for the next hour: far above the safe share.
        result = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 22_080)], now + timedelta(hours=1)
        )
        assert result.accepted
        await asyncio.sleep(validity_s * 1.5)  # long enough to need a refresh
        assert sim.store.limit_a_at(utc_now()) == 32.0  # refreshed, still dynamic
        await bridge.system.stop()  # the agent dies: no more refreshes
        died = utc_now()
        await asyncio.sleep(validity_s + 0.5)
        # The charger's own view, with nobody left to ask it anything.
        periods = sim.store.composite(utc_now(), 3600)
        assert periods == [(0, 6.0)]  # 4140 W / (230 V x 3): the safe layer alone
        dynamic = max(p.valid_to for p in sim.store.profiles if p.stack_level > 0)
        assert died < dynamic <= died + timedelta(seconds=validity_s + 0.1)
