"""The dispatcher of a whole in-process agent against simulated chargers over real OCPP:
what the operator's endpoint answers after a round that pushed, what is logged about it, and
what every surface says about the limit a charger really holds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.app import Agent
from ocpp_bridge import PowerPeriod
from ocpp_bridge.simulator import SimCharger16, SimCharger201, running
from tests.support.agent_env import make_env, running_agent
from tests.support.uftp import eventually

pytestmark = pytest.mark.integration

PASSWORD = "dispatch-test-password-0123"
TOKEN = "operator-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class SimSite:
    agent: Agent

    @property
    def url(self) -> str:
        assert self.agent.web is not None
        assert self.agent.web.port is not None
        return f"http://127.0.0.1:{self.agent.web.port}"

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.agent.config.ocpp.port}/ocpp"


@contextlib.asynccontextmanager
async def sim_site(tmp_path: Path, *chargers: str) -> AsyncIterator[SimSite]:
    env = make_env(
        tmp_path,
        ocpp={
            "chargers": [
                {"id": c, "max_current_a": 16, "password": PASSWORD, "safe_power_w": 6_900}
                for c in chargers
            ]
        },
        http={"token": TOKEN},
    )
    async with running_agent(env) as (agent, _dso):
        yield SimSite(agent)


async def boot(site: SimSite, sim: Any) -> None:
    await sim.boot()
    await sim.status(1, "Available")
    bridge = site.agent.bridge
    await eventually(
        lambda: any(c.safe_purpose for c in bridge.snapshot() if c.charger_id == sim.id),
        what=f"safe layer on {sim.id}",
    )


async def post_dispatch(site: SimSite) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{site.url}/api/dispatch", headers=BEARER) as response,
    ):
        assert response.status == 200, await response.text()
        body = await response.json()
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize("sim_class", [SimCharger16, SimCharger201])
async def test_post_dispatch_answers_what_a_round_pushed(tmp_path: Path, sim_class: Any) -> None:
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(sim_class, site.ocpp_url, "CP-01", PASSWORD) as sim,
    ):
        await boot(site, sim)
        # Forget what the first rounds sent, so the round asked for here pushes again.
        site.agent.dispatcher._sent.clear()
        body = await post_dispatch(site)
        assert body["pushed"] == {"CP-01": "accepted"}
        assert body["chargers"] == 1


async def test_clearing_an_evse_limit_is_not_logged_as_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An EVSE whose EV left loses its own limit by ClearChargingProfile; the charger's
    Accepted is reported as such and never as a schedule the charger did not take."""
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(SimCharger16, site.ocpp_url, "CP-01", PASSWORD) as sim,
    ):
        await boot(site, sim)
        dispatcher = site.agent.dispatcher
        await dispatcher.round_now()
        # The state a two-EVSE station leaves when its EV on EVSE 1 has gone: a per-EVSE
        # limit the next round clears.
        now = site.agent.clock.now()
        periods = (PowerPeriod(now, 7_000.0),)
        await site.agent.bridge.set_dynamic_schedule(
            "CP-01", list(periods), now + timedelta(hours=1), 1
        )
        dispatcher._sent[("CP-01", 1)] = (periods, now + timedelta(hours=1))
        caplog.set_level(logging.WARNING, logger="agent.dispatch")
        body = await post_dispatch(site)
        assert body["pushed"]["CP-01/1"] == "accepted"
        assert not [r for r in caplog.records if "did not take" in r.getMessage()]
        assert "ClearChargingProfile" in sim.calls_received
