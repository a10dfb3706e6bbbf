"""The dispatcher of a whole in-process agent against simulated chargers over real OCPP:
what the operator's endpoint answers after a round that pushed, what is logged about it, and
what every surface says about the limit a charger really holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from agent.app import Agent
from agent.storage import trades
from agent.trading.market import Market
from ocpp_bridge.simulator import ProfileStore, SimCharger16, SimCharger201, running
from tests.support.agent_env import CP, TZ, connection, make_env, order_row, running_agent
from tests.support.uftp import eventually
from uftp.dso import DsoParticipant, Received
from uftp.models import DPrognosis

pytestmark = pytest.mark.integration

PASSWORD = "dispatch-test-password-0123"
TOKEN = "operator-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class SimSite:
    agent: Agent
    dso: DsoParticipant

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
    async with running_agent(env) as (agent, dso):
        yield SimSite(agent, dso)


async def boot(site: SimSite, sim: Any) -> None:
    await sim.boot()
    await sim.status(1, "Available")
    bridge = site.agent.bridge
    await eventually(
        lambda: any(c.safe_purpose for c in bridge.snapshot() if c.charger_id == sim.id),
        what=f"safe layer on {sim.id}",
    )


async def post_dispatch(site: SimSite, *, resend: bool = False) -> dict[str, Any]:
    """The operator's round; `resend`: it pushes every schedule, changed or not."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{site.url}/api/dispatch", headers=BEARER, json={"resend": resend}) as response,
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
        body = await post_dispatch(site, resend=True)
        assert body["pushed"] == {"CP-01": "accepted"}
        assert body["chargers"] == 1
        assert any(p.stack_level > 0 for p in sim.store.profiles)  # the charger holds it


async def test_post_dispatch_refuses_a_resend_that_is_not_a_boolean(tmp_path: Path) -> None:
    async with (
        sim_site(tmp_path, "CP-01") as site,
        aiohttp.ClientSession() as http,
        http.post(f"{site.url}/api/dispatch", headers=BEARER, json={"resend": "yes"}) as response,
    ):
        assert response.status == 400
        assert "resend" in (await response.json())["error"]


class TwoEvse16(SimCharger16):  # type: ignore[misc]
    """A 1.6 charge point with two connectors."""

    @staticmethod
    def _default_store() -> ProfileStore:
        return ProfileStore((1, 2))


async def test_clearing_an_evse_limit_is_not_logged_as_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An EVSE whose EV left loses its own limit by ClearChargingProfile; the charger's
    Accepted is reported as such and never as a schedule the charger did not take."""
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(TwoEvse16, site.ocpp_url, "CP-01", PASSWORD) as sim,
    ):
        await boot(site, sim)
        await sim.status(2, "Available")
        # An EV on EVSE 1 of a two-EVSE station gets a limit of its own.
        await sim.status(1, "Charging")
        tx = await sim.start_transaction(1, 0)
        await eventually(lambda: site.agent.site.sessions, what="the session")
        await eventually(
            lambda: any(p.evse_id == 1 and p.stack_level > 0 for p in sim.store.profiles),
            what="EVSE 1's own limit on the charger",
        )
        caplog.set_level(logging.WARNING, logger="agent.control.dispatch")
        # The EV leaves: the round its session's end starts clears EVSE 1's limit.
        await sim.stop_transaction(tx, 1_000)
        await sim.status(1, "Available")
        await eventually(
            lambda: not any(p.evse_id == 1 for p in sim.store.profiles),
            what="EVSE 1's own limit cleared on the charger",
        )
        await post_dispatch(site)  # a round after the clearing one: nothing to say either
        assert "ClearChargingProfile" in sim.calls_received
        assert not [r for r in caplog.records if "did not take" in r.getMessage()]


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


async def test_read_back_falls_back_to_the_connectors_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.control.dispatch")
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(NoStationComposite16, site.ocpp_url, "CP-01", PASSWORD) as sim,
    ):
        await boot(site, sim)
        dispatcher = site.agent.dispatcher
        for _ in range(2):
            readbacks = sum(dispatcher.readbacks.values())
            await post_dispatch(site, resend=True)  # each round pushes, and reads back
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
        await post_dispatch(site, resend=True)
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


async def delivery_of(site: SimSite, isp: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{site.url}/api/trade") as response:
        trade = await response.json()
    (order,) = trade["delivery"]
    (item,) = [i for i in order["isps"] if i["isp"] == isp]
    assert isinstance(item, dict)
    return item


async def chart_of(site: SimSite, isp: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{site.url}/api/chart") as response:
        chart = await response.json()
    (item,) = [i for i in chart["isps"] if i["isp"] == isp]
    assert isinstance(item, dict)
    return item


async def test_delivery_is_measured_live_and_judged_once_complete(tmp_path: Path) -> None:
    """An EV draws 11 kW through an ordered ISP that has just finished: its energy shows at
    once (not 0 W until the site model's next write), and the ISP is judged only once the
    charger's meter has reported past its end."""
    market = Market(TZ, 15)
    now = datetime.now(UTC)
    today, current = market.locate(now)
    isps = market.isps(today)
    if isps[current - 1].end - now < timedelta(seconds=45):  # room before the next boundary
        await asyncio.sleep((isps[current - 1].end - now).total_seconds() + 1)
        now = datetime.now(UTC)
        today, current = market.locate(now)
        isps = market.isps(today)
    if current == 1:
        pytest.skip("the first ISP of the market day has no finished ISP before it")
    previous, running_isp = isps[current - 2], isps[current - 1]
    async with (
        sim_site(tmp_path, "CP-01") as site,
        running(SimCharger16, site.ocpp_url, "CP-01", PASSWORD) as sim,
    ):
        await site.dso.wait_handled(
            lambda o: isinstance(o, Received) and isinstance(o.message, DPrognosis), 60
        )
        conn = connection(site.agent.config)
        try:
            prognosis = trades.latest_prognosis(conn, CP, today)
            assert prognosis is not None
            conn.execute("BEGIN IMMEDIATE")
            trades.insert_order(
                conn,
                order_row(
                    today,
                    [[previous.index, 2, -1_000]],
                    reference="ORD-LIVE",
                    price="1.0000",
                    baseline_message_id=prognosis.message_id,
                    received_at=now,
                ),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        await boot(site, sim)
        began = previous.start + timedelta(minutes=1)
        tx = await sim.start_transaction(1, 0, timestamp=began)
        # 11 kW for 9 minutes of the finished ISP; no reading after its end yet.
        middle = began + timedelta(minutes=9)
        await sim.meter_values(1, tx, 0.0, 11_000.0, at=began)
        await sim.meter_values(1, tx, 1_650.0, 11_000.0, at=middle)
        await eventually(
            lambda: site.agent.site.sessions and site.agent.site.chargers["CP-01"].evses[1].at,
            what="the reading",
        )
        item = await delivery_of(site, previous.index)
        assert item["measured_w"] == 6_600  # 1650 Wh so far in a 15-minute ISP: 6.6 kW
        assert item["delivered"] is None  # the meter has not reported past the ISP's end
        assert (await chart_of(site, previous.index))["measured_w"] == 6_600

        # A reading in the ISP running now completes the finished one.
        late = datetime.now(UTC).replace(microsecond=0)
        wh = 1_650.0 + 11_000.0 * (late - middle).total_seconds() / 3600
        await sim.meter_values(1, tx, wh, 11_000.0, at=late)
        await eventually(
            lambda: site.agent.site.chargers["CP-01"].evses[1].at == late, what="the reading"
        )
        item = await delivery_of(site, previous.index)
        assert item["measured_w"] == round(11_000 * 14 / 15)  # charging from 1 min past its start
        assert item["delivered"] is not None
        chart = await chart_of(site, running_isp.index)
        assert chart["measured_w"] is not None  # the running ISP's power so far
        assert abs(chart["measured_w"] - 11_000) < 50
