"""Fail-safe: when flexbridge disappears, the dynamic layer expires and the safe layer rules.

Asserted on the simulated charger's own composite schedule, i.e. what the charger would
enforce with nobody left to talk to. Bridge and charger share one scaled clock, so the
production validity (15 minutes) plays out in seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.runtime.clock import ScaledClock, sleep_until
from ocpp_bridge.events import PowerPeriod
from ocpp_bridge.settings import BridgeSettings
from ocpp_bridge.simulator import SimCharger16, SimCharger201, running
from ocpp_bridge.timestamps import utc_now
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge
from tests.integration.ocpp_bridge.test_smart_charging import dynamic_in_history, record
from tests.support.uftp import eventually

pytestmark = pytest.mark.integration

# 300 simulated seconds a real second: the 900 s validity lasts 3 s, its refresh margin 1 s.
SPEED = 300.0


@pytest.mark.parametrize("sim_class", [SimCharger16, SimCharger201])
async def test_charger_falls_back_to_the_safe_layer_after_the_bridge_dies(sim_class: Any) -> None:
    clock = ScaledClock(utc_now(), SPEED)
    bridge_settings = BridgeSettings(host="127.0.0.1", port=0)
    validity = timedelta(seconds=bridge_settings.dynamic_validity_s)

    async with (
        run_bridge(bridge_settings, records=[record(safe_w=4_140)], clock=clock) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD, clock=clock) as sim,
    ):
        await sim.boot()
        await bridge.log.wait_for(lambda: bridge.system.snapshot()[0].safe_purpose, what="safe")
        now = clock.now()
        # The flex schedule allows 22 kW for the next hour: far above the safe share.
        result = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 22_080)], now + timedelta(hours=1)
        )
        assert result.accepted
        first_expiry = max(p.valid_to for p in sim.store.profiles if p.stack_level > 0)
        assert first_expiry is not None
        assert first_expiry <= clock.now() + validity
        # The bridge refreshes before the first profile runs out, on the shared clock.
        await eventually(
            lambda: len(dynamic_in_history(sim)) >= 2, 10, "a refresh of the dynamic profile"
        )
        assert sim.store.limit_a_at(first_expiry + timedelta(seconds=1)) == 32.0
        await bridge.system.stop()  # the agent dies: no more refreshes
        died = clock.now()
        expiry = max(p.valid_to for p in sim.store.profiles if p.stack_level > 0)
        assert expiry is not None
        assert died < expiry <= died + validity
        await sleep_until(clock, expiry + timedelta(seconds=1))
        # The charger's own view, with nobody left to ask it anything.
        assert sim.store.composite(clock.now(), 3600) == [(0, 6.0)]  # 4140 W / (230 V x 3)
