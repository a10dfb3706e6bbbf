"""FlexRequest -> FlexOffer -> FlexOrder -> per-site commands, with shapeshifter-uftp 2.4.0 as
the DSO over real HTTP, the aggregator on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from shapeshifter_uftp import FlexRequest as LibFlexRequest
from shapeshifter_uftp import FlexRequestISP as LibFlexRequestISP
from shapeshifter_uftp.uftp.enums import AvailableRequested as LibAvailableRequested
from xsdata.models.datatype import XmlDate

from agent.central import db
from agent.fleet import protocol
from tests.integration.central.conftest import CP_A, MARKET, Fleet, eventually
from tests.support import uftp as build
from uftp.models import utc_now

pytestmark = pytest.mark.integration


def library_request(
    period: date,
    min_power: int = -9000,
    max_power: int = -3000,
    expires: datetime | None = None,
) -> LibFlexRequest:
    """Reduce by 3..9 kW at CP_A in ISPs 69-72 tomorrow (17:00-18:00 local)."""
    return LibFlexRequest(
        isp_duration="PT15M",
        time_zone=build.TZ,
        period=XmlDate.from_date(period),
        congestion_point=CP_A,
        revision=1,
        expiration_date_time=(expires or utc_now() + timedelta(hours=2)).isoformat(),
        isps=[
            LibFlexRequestISP(
                disposition=LibAvailableRequested.AVAILABLE,
                min_power=0,
                max_power=20000,
                start=1,
                duration=68,
            ),
            LibFlexRequestISP(
                disposition=LibAvailableRequested.REQUESTED,
                min_power=min_power,
                max_power=max_power,
                start=69,
                duration=4,
            ),
        ],
    )


def tomorrows_forecast(fleet: Fleet, site: str, p50_w: float) -> protocol.Forecast:
    isps = MARKET.isps(fleet.tomorrow())
    now = utc_now()
    return protocol.Forecast(
        id=f"{site}-fc-tomorrow",
        site=site,
        sent_at=now,
        start=isps[0].start,
        congestion_point=CP_A,
        made_at=now,
        p10_w=[p50_w] * len(isps),
        p50_w=[p50_w] * len(isps),
        p90_w=[p50_w] * len(isps),
    )


async def test_request_offer_order_become_one_command_per_site(fleet: Fleet) -> None:
    aggregator = await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    # site-a1 and site-a2 at CP_A can each go from 6 kW down to 2 kW; site-b1 is elsewhere.
    await fleet.push_flex()
    await eventually(
        lambda: len([d for d in fleet.bus.delivered if d.outcome == "ack"]) == 3,
        what="the three envelopes recorded and acked",
    )
    client = fleet.dso.client(build.AGR)
    await asyncio.to_thread(client.send_flex_request, library_request(fleet.tomorrow()))

    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexRequestResponse")
    assert answer.result == "Accepted"
    offer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOffer")
    # Both CP_A sites together have 8 kW of room; the DSO takes at most 9 kW.
    assert [(i.start, i.duration, i.power) for i in offer.offer_options[0].isps] == [(69, 4, -8000)]
    order_answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    assert order_answer.result == "Accepted", order_answer.rejection_reason

    commands = await eventually(lambda: fleet.bus.commands(), what="commands published")
    await asyncio.sleep(0.5)  # nothing else follows
    commands = fleet.bus.commands()
    assert sorted(c.site for c in commands) == ["site-a1", "site-a2"]
    first = MARKET.start_of(fleet.tomorrow(), 69)
    for command in commands:
        assert command.seq == 1
        assert command.order_id == order_answer.flex_order_message_id
        assert command.start == first
        assert command.valid_until == first + timedelta(hours=1)
        assert command.cap_w == [2000.0] * 4  # 6 kW baseline, each gives its 4 kW
        assert command.congestion_point == CP_A
    msg_ids = sorted(m for s, m, _ in fleet.bus.published if s.startswith("fleet.cmd."))
    assert msg_ids == sorted(f"{c.order_id}:{c.site}:1" for c in commands)

    # The next D-prognosis of that day includes the order: the sites' 12 kW less 8 kW.
    for site in ("site-a1", "site-a2"):
        await fleet.bus.send_up(tomorrows_forecast(fleet, site, 6000))
    await eventually(lambda: fleet.bus.acked() == 5, what="forecasts recorded")
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            await aggregator.trader.prognosis_step(conn)
    finally:
        await session.close()
    aggregator.uftp.wake_outbox()

    def with_order(message: Any) -> bool:
        powers = {i.start: i.power for i in message.isps}
        return str(message.period) == str(fleet.tomorrow()) and powers.get(69) == 4000

    prognosis = await asyncio.to_thread(fleet.dso.wait_for, "DPrognosis", 15.0, with_order)
    powers = {i.start: i.power for i in prognosis.isps}
    assert [powers[i] for i in (68, 69, 72, 73)] == [12000, 4000, 4000, 12000]

    # The order, its response and its commands are in the database once each.
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT count(*), count(published_at) FROM command WHERE order_id = %s",
                (order_answer.flex_order_message_id,),
            )
        ).fetchone()
        assert rows == (2, 2)
        status = await (
            await conn.execute(
                "SELECT status FROM flex_order WHERE message_id = %s",
                (order_answer.flex_order_message_id,),
            )
        ).fetchone()
        assert status == ("accepted",)


async def test_a_request_beyond_the_sites_room_gets_no_offer(fleet: Fleet) -> None:
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    await fleet.push_flex(baseline_w=3_000, min_w=2_000)  # 1 kW room each: 2 kW at CP_A
    await eventually(
        lambda: len([d for d in fleet.bus.delivered if d.outcome == "ack"]) == 3,
        what="the envelopes recorded",
    )
    client = fleet.dso.client(build.AGR)
    await asyncio.to_thread(
        client.send_flex_request, library_request(fleet.tomorrow(), -9000, -3000)
    )
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexRequestResponse")
    assert answer.result == "Accepted"
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:

        async def declined() -> bool:
            row = await (await conn.execute("SELECT status, note FROM flex_request")).fetchone()
            return row is not None and row[0] == "declined"

        await eventually(declined, what="the request declined")
    assert [k for k, _ in fleet.dso.all_received if k == "FlexOffer"] == []
    assert fleet.bus.commands() == []
    assert protocol.CENTRAL_CONSUMER in fleet.bus.queues
