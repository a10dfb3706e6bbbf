"""Settlement checked against the sites' metering summed per congestion point, and Metering per
congestion point, with shapeshifter-uftp 2.4.0 as the DSO."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import aiohttp
import psycopg
import pytest

from agent.central import db
from agent.fleet import protocol
from tests.integration.central.conftest import CP_A, MARKET, Fleet, eventually
from tests.integration.central.test_trading_round_trip import library_request
from tests.support import uftp as build
from uftp.codec import from_xml
from uftp.models import FlexOrder, Role, utc_now
from uftp.sealing import SIGNATURE_BYTES

pytestmark = pytest.mark.integration


def metering(site: str, period: date, energy_wh: float) -> protocol.Metering:
    isps = MARKET.isps(period)
    return protocol.Metering(
        id=f"{site}-m-{period}",
        site=site,
        sent_at=utc_now(),
        start=isps[0].start,
        congestion_point=CP_A,
        energy_wh=[energy_wh] * len(isps),
    )


async def the_order(dsn: str) -> FlexOrder:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT sealed FROM uftp_inbox WHERE message_type = 'FlexOrder'")
        ).fetchone()
    assert row is not None
    order = from_xml(bytes(row[0])[SIGNATURE_BYTES:])
    assert isinstance(order, FlexOrder)
    return order


async def test_settlement_disputes_what_the_sites_meters_contradict(fleet: Fleet) -> None:
    clock = build.Clock()
    aggregator = await fleet.start_aggregator(clock=clock, port=fleet.agr_port)  # type: ignore[attr-defined]
    await fleet.push_flex(["site-a1", "site-a2"])
    await eventually(lambda: fleet.bus.acked() == 2, what="envelopes")
    await asyncio.to_thread(
        fleet.dso.client(build.AGR).send_flex_request, library_request(fleet.tomorrow())
    )
    await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    order = await the_order(fleet.dsn)
    day = fleet.tomorrow()
    # Each site metered 500 Wh per ISP of the day: 4 kW at the congestion point.
    await fleet.bus.send_up(metering("site-a1", day, 500))
    await fleet.bus.send_up(metering("site-a2", day, 500))
    await eventually(lambda: fleet.bus.acked() == 4, what="metering recorded")

    clock.offset = timedelta(days=2)  # the ordered day is over
    settlement = build.flex_settlement([order], day, day, clock(), time_stamp=clock())
    item = settlement.flex_order_settlements[0]
    isps = [i.model_copy(update={"actual_power": 4000}) for i in item.isps]
    # The order is one element of 4 ISPs; the DSO's meter says ISP 72 was at 9 kW.
    assert [(i.start, i.duration) for i in isps] == [(69, 4)]
    isps = [
        isps[0].model_copy(update={"duration": 3}),
        isps[0].model_copy(update={"start": 72, "duration": 1, "actual_power": 9000}),
    ]
    settlement = settlement.model_copy(
        update={"flex_order_settlements": (item.model_copy(update={"isps": tuple(isps)}),)}
    )
    body = build.signed_body(settlement, fleet.dso_key, build.DSO, Role.DSO)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            aggregator.uftp.url, data=body, headers={"Content-Type": "text/xml"}
        ) as response,
    ):
        assert response.status == 200
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexSettlementResponse")
    assert answer.result == "Accepted", answer.rejection_reason
    (status,) = answer.flex_order_settlement_statuses
    assert status.disposition == "Disputed"
    assert "ISP 72: 9000 W, we measured 4000 W" in status.dispute_reason
    assert "ISP 69" not in status.dispute_reason

    # Metering for the congestion point with an EAN, once every site metered the whole day:
    # sent once, by this step or by the metering loop (woken by each site's metering) if its
    # step saw the clock moved first.
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            await aggregator.trader.metering_step(conn)
        aggregator.uftp.wake_outbox()
        sent = await asyncio.to_thread(fleet.dso.wait_for, "Metering")
        async with session.transaction() as conn:
            again = await aggregator.trader.metering_step(conn)
            cursor = await conn.execute("SELECT count(*) FROM metering_sent")
            row = await cursor.fetchone()
    finally:
        await session.close()
    assert again == 0
    assert row is not None
    assert row[0] == 1
    assert sent.ean == "E1234567890123456"
    energy = next(p for p in sent.profiles if p.profile_type.value == "ImportEnergy")
    assert {float(i.value) for i in energy.isps} == {1.0}  # kWh per ISP: 2 x 500 Wh
    assert len(energy.isps) == MARKET.count(day)


async def test_the_metering_goes_out_when_the_last_site_has_reported_the_day(fleet: Fleet) -> None:
    """The metering loop's round is 300 s; the recorded metering of a site wakes it, so the
    day's Metering leaves once the last site of the congestion point reported the day."""
    clock = build.Clock(offset=timedelta(days=2))  # tomorrow is over
    await fleet.start_aggregator(clock=clock)
    day = fleet.tomorrow()
    assert MARKET.today(clock()) == day + timedelta(days=1)
    await fleet.bus.send_up(metering("site-a1", day, 500))
    await eventually(lambda: fleet.bus.acked() == 1, what="the first site's metering recorded")
    await fleet.bus.send_up(metering("site-a2", day, 250))
    sent = await asyncio.to_thread(fleet.dso.wait_for, "Metering", 60.0)
    assert (sent.ean, sent.period.to_date()) == ("E1234567890123456", day)
    energy = next(p for p in sent.profiles if p.profile_type.value == "ImportEnergy")
    assert {float(i.value) for i in energy.isps} == {0.75}  # kWh per ISP: 500 + 250 Wh
    assert len(energy.isps) == MARKET.count(day)
