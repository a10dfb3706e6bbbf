"""The dispatcher of a whole in-process agent against simulated chargers over real OCPP:
what the operator's endpoint answers after a round that pushed, what is logged about it, and
what every surface says about the limit a charger really holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action
from websockets.exceptions import ConnectionClosed

from agent.app import Agent
from ocpp_bridge import PowerPeriod
from ocpp_bridge.simulator import (
    ProtocolName,
    SimCharger16,
    SimCharger201,
    open_connection,
    running,
)
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


class NoStationComposite16(SimCharger16):  # type: ignore[misc]
    """A 1.6 charge point that answers GetCompositeSchedule for its connectors only (as one
    that leaves ChargePointMaxProfile out of its composite does for connector 0)."""

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **kw: Any
    ) -> Any:
        if connector_id == 0:
            self.calls_received.append("GetCompositeSchedule")
            return call_result.GetCompositeSchedule(status="Rejected")
        return super().on_get_composite_schedule(connector_id, duration, charging_rate_unit)


@contextlib.asynccontextmanager
async def running_as(sim_class: type[SimCharger16], url: str, identity: str) -> AsyncIterator[Any]:
    """`simulator.running` for a subclass of the 1.6 simulator."""
    ws = await open_connection(url, identity, ProtocolName.OCPP16, PASSWORD)
    sim = sim_class(identity, ws)
    task = asyncio.create_task(sim.start())
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await task
        await ws.close()


async def test_read_back_falls_back_to_the_connectors_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.dispatch")
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running_as(NoStationComposite16, site.ocpp_url, "CP-01") as sim,
    ):
        await boot(site, sim)
        dispatcher = site.agent.dispatcher
        for _ in range(2):
            dispatcher._sent.clear()  # each round pushes, and reads back
            readbacks = sum(dispatcher.readbacks.values())
            await post_dispatch(site)
            await eventually(
                lambda n=readbacks: sum(dispatcher.readbacks.values()) > n, what="read-back"
            )
        assert dispatcher.readbacks["unavailable"] == 0
        assert dispatcher.readbacks["ok"] >= 2
        said = [
            r for r in caplog.records if "connector" in r.getMessage() and "CP-01" in r.getMessage()
        ]
        assert len(said) == 1, [r.getMessage() for r in said]


async def metrics_text(site: SimSite) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{site.url}/metrics") as response:
        return await response.text()


async def charger_json(site: SimSite, charger_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{site.url}/api/chargers/{charger_id}") as response,
    ):
        body = await response.json()
    assert isinstance(body, dict)
    return body


async def page_text(site: SimSite) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{site.url}/") as response:
        return await response.text()


async def test_a_charger_that_takes_no_profile_is_shown_uncontrollable_everywhere(
    tmp_path: Path,
) -> None:
    refuse = {"ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile"}
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(SimCharger201, site.ocpp_url, "CP-01", PASSWORD, refuse_purposes=refuse) as sim,
    ):
        await sim.boot()
        await sim.status(1, "Occupied")
        await eventually(lambda: len(sim.store.history) >= 2, what="safe layer tried")
        await sim.transaction_event(
            "Started", "tx-1", 0, 0.0, trigger_reason="Authorized", charging_state="Charging"
        )
        await eventually(lambda: site.agent.site.sessions, what="session")
        await post_dispatch(site)
        await eventually(
            lambda: any(p["charging_profile_purpose"] == "TxProfile" for p in sim.store.history),
            what="TxProfile tried",
        )

        async def answered() -> bool:
            return (await charger_json(site, "CP-01"))["controllable"] is not None

        await eventually(answered, what="the refusal answered")
        charger = await charger_json(site, "CP-01")
        assert charger["limit_source"] == "none"
        assert charger["controllable"] is False
        assert charger["limit_w"] is None
        assert 'flexbridge_charger_limit_watts{charger="CP-01"' not in await metrics_text(site)
        assert "flexbridge_charger_uncontrollable" in await metrics_text(site)
        assert "uncontrollable" in await page_text(site)
        assert sim.store.profiles == []
        # Not planned for: its EV draws what it likes, within the cap the others share.
        await post_dispatch(site)
        last = site.agent.dispatcher.last_round
        assert last is not None
        assert "CP-01" not in last.schedules


async def test_the_limit_shown_is_the_one_the_charger_took_and_read_back(tmp_path: Path) -> None:
    """A 1.6 charge point that refuses ChargePointMaxProfile takes the dynamic limit as a
    TxDefaultProfile: shown as a fallback with its purpose, and the watts the charger's own
    composite schedule reports."""
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(
            SimCharger16,
            site.ocpp_url,
            "CP-01",
            PASSWORD,
            refuse_purposes={"ChargePointMaxProfile"},
        ) as sim,
    ):
        await boot(site, sim)
        dispatcher = site.agent.dispatcher
        dispatcher._sent.clear()
        await post_dispatch(site)
        await eventually(lambda: "CP-01" in dispatcher.read_back, what="read-back")
        charger = await charger_json(site, "CP-01")
        assert charger["limit_source"] == "fallback"
        assert charger["limit_purpose"] == "TxDefault"
        assert charger["limit_read_back"] is True
        assert charger["controllable"] is True
        # An idle charger gets the minimum power: 6 A x 3 x 230 V, as the charger reports it.
        composite = await site.agent.bridge.composite_schedule("CP-01", 0, 60)
        assert charger["limit_w"] == round(composite.periods[0].limit_w) == 4_140
        metrics = await metrics_text(site)
        assert 'flexbridge_charger_limit_watts{charger="CP-01",source="fallback"} 4140.0' in metrics
