"""A site that has not confirmed its command shortly before the first ordered ISP loses its share
to the other sites of the congestion point, by newer commands; it gets a newer one too."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from agent.central import db
from agent.fleet import protocol
from tests.integration.central.conftest import MARKET, Fleet, eventually
from tests.integration.central.test_trading_round_trip import library_request
from tests.support import uftp as build
from uftp.models import utc_now

pytestmark = pytest.mark.integration


async def test_an_offline_sites_share_moves_to_the_online_site(fleet: Fleet) -> None:
    clock = build.Clock()
    aggregator = await fleet.start_aggregator(clock=clock, port=fleet.agr_port)  # type: ignore[attr-defined]
    week = timedelta(days=7)
    # a1 can give 8 kW (10 -> 2 kW), a2 4 kW (6 -> 2 kW).
    await fleet.push_flex(["site-a1"], baseline_w=10_000, max_w=12_000, valid_for=week)
    await fleet.push_flex(["site-a2"], baseline_w=6_000, valid_for=week)
    await eventually(lambda: fleet.bus.acked() == 2, what="envelopes")
    request = library_request(fleet.tomorrow(), min_power=-6000, max_power=-3000)
    await asyncio.to_thread(fleet.dso.client(build.AGR).send_flex_request, request)
    first = await eventually(lambda: len(fleet.bus.commands()) == 2 and fleet.bus.commands())
    caps = {c.site: c.cap_w for c in first}
    # 6 kW ordered, shared 2:1 by room: a1 gives 4 kW, a2 2 kW.
    assert caps == {"site-a1": [6000.0] * 4, "site-a2": [4000.0] * 4}
    a1 = next(c for c in first if c.site == "site-a1")
    await fleet.bus.send_up(
        protocol.Ack(
            id="ack-a1",
            site="site-a1",
            sent_at=utc_now(),
            order_id=a1.order_id,
            seq=1,
            outcome="applied",
            applied_at=utc_now(),
        )
    )
    await eventually(lambda: fleet.bus.acked() == 3, what="a1's ack")
    await asyncio.sleep(0.3)

    # Nothing moves while the first ISP is further away than the lead (10 min) ...
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            assert await aggregator.trader.reassign_step(conn) == 0
        # ... and at 5 minutes before it, a2 (no ack) gives its share to a1.
        first_isp = MARKET.start_of(fleet.tomorrow(), 69)
        clock.offset = first_isp - timedelta(minutes=5) - utc_now()
        async with session.transaction() as conn:
            assert await aggregator.trader.reassign_step(conn) == 2
        async with session.transaction() as conn:
            assert await aggregator.trader.reassign_step(conn) == 0  # once per order
    finally:
        await session.close()
    aggregator.publisher.wake()
    commands = await eventually(lambda: len(fleet.bus.commands()) == 4 and fleet.bus.commands())
    newer = {c.site: c for c in commands if c.seq == 2}
    assert newer["site-a1"].cap_w == [4000.0] * 4
    assert newer["site-a2"].cap_w == [None] * 4  # back online, it applies this, not seq 1
    assert newer["site-a1"].order_id == a1.order_id
    assert newer["site-a2"].valid_until == first_isp + timedelta(hours=1)


async def test_a_live_site_gets_time_to_confirm_before_its_share_moves(fleet: Fleet) -> None:
    first_isp = MARKET.start_of(fleet.tomorrow(), 69)
    clock = build.Clock(first_isp - timedelta(minutes=8) - utc_now())
    aggregator = await fleet.start_aggregator(clock=clock, port=fleet.agr_port)  # type: ignore[attr-defined]
    week = timedelta(days=7)
    await fleet.push_flex(["site-a1"], baseline_w=10_000, max_w=12_000, valid_for=week)
    await fleet.push_flex(["site-a2"], baseline_w=6_000, valid_for=week)
    await eventually(lambda: fleet.bus.acked() == 2, what="envelopes")
    request = library_request(fleet.tomorrow(), -6000, -3000, expires=clock() + timedelta(hours=1))
    await asyncio.to_thread(fleet.dso.client(build.AGR).send_flex_request, request)
    first = await eventually(lambda: len(fleet.bus.commands()) == 2 and fleet.bus.commands())
    a1 = next(c for c in first if c.site == "site-a1")
    await fleet.bus.send_up(
        protocol.Ack(
            id="ack-a1",
            site="site-a1",
            sent_at=clock(),
            order_id=a1.order_id,
            seq=1,
            outcome="applied",
            applied_at=clock(),
        )
    )
    # a2 is alive (a heartbeat now) but has not confirmed yet.
    await fleet.bus.send_up(
        protocol.Heartbeat(
            id="a2-hb",
            site="site-a2",
            sent_at=clock(),
            chargers_connected=1,
            power_w=0,
            safe_limit_w=11_000,
        )
    )
    await eventually(lambda: fleet.bus.acked() == 4, what="ack and heartbeat recorded")
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            assert await aggregator.trader.reassign_step(conn) == 0  # a2 may still confirm
        clock.offset += timedelta(minutes=4)  # no word from a2 for longer than 180 s
        async with session.transaction() as conn:
            assert await aggregator.trader.reassign_step(conn) == 2
    finally:
        await session.close()
    aggregator.publisher.wake()
    commands = await eventually(lambda: len(fleet.bus.commands()) == 4 and fleet.bus.commands())
    assert {c.site: c.cap_w for c in commands if c.seq == 2} == {
        "site-a1": [4000.0] * 4,
        "site-a2": [None] * 4,
    }
