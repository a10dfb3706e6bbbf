"""The aggregator process under the fleet: SIGKILLed between an order's commit and the
commands' publish, and the DSO POSTing one message several times to two aggregator
processes. 200 sites in 4 host processes, every part real."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import aiohttp
import psycopg
import pytest

from agent.central import uftp_store
from agent.central.app import AFTER_ORDER_COMMIT
from tests.integration.fleet_scenarios.world import (
    CP_A,
    MARKET,
    World,
    eventually,
    flex_request,
    start_fleet,
)
from tests.support import uftp as build
from tests.support.ports import free_port
from uftp.models import FlexOffer, Role, utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

FIRST, COUNT = 69, 4  # tomorrow 17:00-18:00 local


async def test_aggregator_killed_between_order_commit_and_publish(world: World) -> None:
    await asyncio.to_thread(world.start_hosts)
    killed = await asyncio.to_thread(world.start_aggregator, AFTER_ORDER_COMMIT)
    await world.sites_say("heartbeat", "flex")
    await world.drain()
    await world.wait_upstream_recorded()
    client = world.dso.client(build.AGR)
    tomorrow = MARKET.today(utc_now()) + timedelta(days=1)
    request = flex_request(tomorrow, FIRST, COUNT, min_power=-150_000, max_power=-75_000, cp=CP_A)
    await asyncio.to_thread(client.send_flex_request, request)

    # The order, its 100 commands and its response committed; the process dies before any
    # publish.
    code = await asyncio.to_thread(killed.proc.wait, 90)
    assert code == -signal.SIGKILL
    [order_id] = await world.orders()
    assert await world.rows(
        "SELECT count(*) FILTER (WHERE published_at IS NULL), count(*) FROM command"
    ) == [(100, 100)]
    pending = await world.rows(
        "SELECT status FROM uftp_outbox WHERE message_type = 'FlexOrderResponse'"
    )
    assert pending == [("pending",)]
    await asyncio.sleep(1.0)
    assert all(not s["commands"] for s in (await world.status()).values())

    # Started again, it publishes what it committed: every site applies its command once.
    await asyncio.to_thread(world.start_aggregator)
    await world.wait_acked(order_id)
    answer = await asyncio.to_thread(world.dso.wait_for, "FlexOrderResponse", 60.0)
    assert answer.result == "Accepted"
    assert answer.flex_order_message_id == order_id
    await world.drain()
    await world.wait_upstream_recorded()
    totals = await world.check_exactly_once()
    assert (totals["commands"], totals["applied"]) == (100, 100)
    await asyncio.sleep(1.0)  # a second FlexOrderResponse would have arrived by now
    world.check_dso_answers()
    assert [k for k, _ in world.dso.all_received].count("FlexOrderResponse") == 1


async def post(session: aiohttp.ClientSession, port: int, body: bytes) -> int:
    async with session.post(
        build.url(port), data=body, headers={"Content-Type": "text/xml; charset=utf-8"}
    ) as response:
        return response.status


async def test_duplicate_posts_from_the_dso_have_one_effect(world: World) -> None:
    await start_fleet(world)
    other_port = free_port()
    await asyncio.to_thread(
        world.start_aggregator,
        env={"FLEXBRIDGE_UFTP__PORT": str(other_port), "FLEXBRIDGE_HTTP__ENABLED": "false"},
    )
    ports = [world.agr_port, other_port]
    tomorrow = MARKET.today(utc_now()) + timedelta(days=1)
    world.dso.hold_orders = True
    request = build.flex_request(
        utc_now(),
        time_stamp=utc_now(),
        period=tomorrow,
        congestion_point=CP_A,
        expiration_date_time=utc_now() + timedelta(hours=4),
    )
    body = build.signed_body(request, world.dso_key, build.DSO, Role.DSO)
    async with aiohttp.ClientSession() as session:
        # The same FlexRequest four times at once, to both aggregator processes.
        statuses = await asyncio.gather(*(post(session, ports[i % 2], body) for i in range(4)))
        assert statuses == [200] * 4
        offer_seen = await asyncio.to_thread(world.dso.wait_for, "FlexOffer", 60.0)
        async with await psycopg.AsyncConnection.connect(world.dsn) as conn:
            sent = await uftp_store.find_outbound(conn, offer_seen.message_id)
        assert sent is not None
        offer = sent.message()
        assert isinstance(offer, FlexOffer)
        # The DSO's order for it, four times at once to both processes, then once more.
        now = utc_now()
        flex_order = build.flex_order(offer, now, time_stamp=now, order_reference="ORD-DUP")
        order_body = build.signed_body(flex_order, world.dso_key, build.DSO, Role.DSO)
        statuses = await asyncio.gather(
            *(post(session, ports[i % 2], order_body) for i in range(4))
        )
        assert statuses == [200] * 4
        await world.wait_acked(flex_order.message_id)
        assert await post(session, ports[0], order_body) == 200
        assert await post(session, ports[1], body) == 200

    async def handled() -> bool:
        pending = await world.scalar("SELECT count(*) FROM uftp_inbox WHERE status = 'pending'")
        return bool(pending == 0)

    await eventually(handled, 30, "every POST handled")
    await asyncio.sleep(2.0)  # time for a second effect to show, if there were one
    counts = await world.rows(
        "SELECT message_type, count(*) FROM uftp_inbox WHERE message_id IN (%s, %s) "
        "GROUP BY message_type ORDER BY message_type",
        request.message_id,
        flex_order.message_id,
    )
    assert counts == [("FlexOrder", 1), ("FlexRequest", 1)]
    assert await world.orders() == [flex_order.message_id]
    kinds = [k for k, _ in world.dso.all_received]
    assert (kinds.count("FlexRequestResponse"), kinds.count("FlexOffer")) == (1, 1)
    assert kinds.count("FlexOrderResponse") == 1
    await world.drain()
    await world.wait_upstream_recorded()
    totals = await world.check_exactly_once()
    assert (totals["commands"], totals["applied"]) == (100, 100)
    world.check_dso_answers()
