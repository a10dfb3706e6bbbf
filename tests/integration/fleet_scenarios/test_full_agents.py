"""Two whole site agents in fleet mode among the 200 hosted sites: each the agent as
`build_agent` makes it from its `[fleet]` configuration (its own NATS connection and user,
OCPP to two simulated chargers with an EV each, its forecaster, producers and dispatch), under
the same aggregator process. Their real producers' envelopes reach the centre, an order at
their congestion point gives them a share, they apply it and ack it like the hosted sites."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from agent.app import Agent, build_agent
from agent.fleet import store as fleet_store
from agent.fleet.producers import floor_isp
from agent.runtime.config import Config
from ocpp_bridge.simulator import SimCharger16, running
from tests.conftest import in_ci
from tests.integration.fleet.test_site_fleet import PASSWORD, fleet_site_raw, plug_in, started
from tests.integration.fleet_scenarios.world import (
    CP_A,
    World,
    eventually,
    isp_index,
    order,
    start_fleet,
    within_day,
)
from tests.support.everest import MISSING as EVEREST_MISSING
from tests.support.everest import PASSWORD as EVEREST_PASSWORD
from tests.support.everest import V16, Station, find_peer
from uftp.models import utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]


@contextlib.asynccontextmanager
async def fleet_agent(world: World, site: str) -> AsyncIterator[Agent]:
    directory = world.tmp_path / site
    directory.mkdir()
    raw = fleet_site_raw(directory, world.cluster, site)
    config = Config.model_validate(raw)
    agent = build_agent(config)
    assert agent.link is not None
    assert agent.producers is not None
    world.agent_files[site] = config.storage.database_path
    url = f"ws://127.0.0.1:{config.ocpp.port}/ocpp"
    async with (
        started(agent),
        running(SimCharger16, url, "CP-01", PASSWORD) as one,
        running(SimCharger16, url, "CP-02", PASSWORD) as two,
    ):
        for sim in (one, two):
            await plug_in(sim, agent)
        yield agent
        # Quiet: no new messages, the outbox published before the agent stops.
        await agent.producers.stop()

        async def published() -> bool:
            return not await agent.db.read(lambda c: fleet_store.pending(c, 1))

        await eventually(published, 60, f"{site}'s outbox published")


async def test_full_agents_take_part_in_an_order(world_with_agents: World) -> None:
    world = world_with_agents
    await start_fleet(world)
    async with fleet_agent(world, "depot-1") as one, fleet_agent(world, "depot-2") as two:
        agents = {"depot-1": one, "depot-2": two}

        async def envelopes() -> bool:
            rows = await world.rows(
                "SELECT DISTINCT site FROM site_flex WHERE site = ANY(%s)", list(agents)
            )
            return len(rows) == 2

        await eventually(envelopes, 60, "both agents' envelopes at the centre")
        # An order at their congestion point for the next ISPs (their envelopes reach a day
        # ahead from now, so tomorrow evening is beyond them).
        now = utc_now()
        first = floor_isp(now) + timedelta(minutes=15)
        if (first - now).total_seconds() < 90:
            first += timedelta(minutes=15)
        first = within_day(first, 2)
        period, index = isp_index(first)
        [order_id] = await order(world, period, index, 2, cps=[CP_A])
        await world.wait_acked(order_id)
        shares = await world.rows(
            "SELECT site, seq, ack_outcome FROM command WHERE order_id = %s AND site = ANY(%s) "
            "ORDER BY site",
            order_id,
            list(agents),
        )
        assert [tuple(r) for r in shares] == [("depot-1", 1, "applied"), ("depot-2", 1, "applied")]
        for agent in agents.values():
            assert agent.link is not None
            assert agent.link.received["applied"] == 1
            [command] = await agent.db.read(fleet_store.active_commands)
            assert command.order_id == order_id
            assert len(command.caps_w) == 2
            assert all(c is not None for c in command.caps_w)
    await world.drain()
    await world.wait_upstream_recorded()
    totals = await world.check_exactly_once()
    assert totals["applied"] == 102  # 100 hosted sites at the congestion point, 2 agents
    world.check_dso_answers()


async def test_an_agent_with_a_real_everest_charger_takes_part(world_with_agents: World) -> None:
    """depot-1 with one EVerest libocpp 1.6 charge point (a real OCPP stack) charging an EV:
    its envelope reaches the centre, its share of an order is applied once, and the charge
    point keeps getting the agent's profiles."""
    everest = find_peer()
    if everest is None:
        if in_ci():
            pytest.fail(EVEREST_MISSING)
        pytest.skip(EVEREST_MISSING)
    world = world_with_agents
    await start_fleet(world)
    site = "depot-1"
    directory = world.tmp_path / site
    directory.mkdir()
    raw = fleet_site_raw(directory, world.cluster, site)
    charger = "EV-FLEET-1"
    raw["ocpp"] = {
        **raw["ocpp"],
        "security_profile": 1,
        "chargers": [{"id": charger, "max_current_a": 16, "password": EVEREST_PASSWORD}],
    }
    config = Config.model_validate(raw)
    agent = build_agent(config)
    assert agent.link is not None
    assert agent.producers is not None
    world.agent_files[site] = config.storage.database_path
    station = Station(
        everest,
        charger,
        V16,
        world.tmp_path / "chargers" / charger,
        f"ws://127.0.0.1:{config.ocpp.port}/ocpp",
    )
    try:
        async with started(agent):
            await station.start()
            await eventually(
                lambda: agent.site.chargers[charger].online, 60, "the charge point online"
            )
            station.send("start_transaction", "power 11000")
            await eventually(
                lambda: any(s.info.charger_id == charger for s in agent.site.active_sessions()),
                60,
                "the EV's session",
            )
            agent.producers.wake_flex()

            async def envelope() -> bool:
                rows = await world.rows(
                    "SELECT max_w FROM site_flex WHERE site = %s ORDER BY made_at DESC", site
                )
                return bool(rows) and max(rows[0][0]) > 0

            await eventually(envelope, 60, "an envelope with the EV at the centre")
            now = utc_now()
            first = floor_isp(now) + timedelta(minutes=15)
            if (first - now).total_seconds() < 90:
                first += timedelta(minutes=15)
            first = within_day(first, 2)
            period, index = isp_index(first)
            since = station.mark()
            [order_id] = await order(world, period, index, 2, cps=[CP_A])
            await world.wait_acked(order_id)
            [row] = await world.rows(
                "SELECT seq, ack_outcome FROM command WHERE order_id = %s AND site = %s",
                order_id,
                site,
            )
            assert tuple(row) == (1, "applied")
            # The applied command runs a dispatch round: the charge point gets a profile.
            await station.wait_for_frame(
                lambda f: f.action == "SetChargingProfile" and not f.sent,
                since=since,
                what="a charging profile after the command",
            )
            await agent.producers.stop()

            async def published() -> bool:
                return not await agent.db.read(lambda c: fleet_store.pending(c, 1))

            await eventually(published, 60, "the agent's outbox published")
    finally:
        await station.stop()
    await world.drain()
    await world.wait_upstream_recorded()
    totals = await world.check_exactly_once()
    assert totals["applied"] == 101  # 100 hosted sites at the congestion point, the agent
    world.check_dso_answers()
