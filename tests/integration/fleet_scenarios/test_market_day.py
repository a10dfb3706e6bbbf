"""A market day of 200 sites under one aggregator, from the sites' forecasts to the settlement.

Every part (the aggregator process, the 4 site host processes, the DSO in the test) reads one
shared clock (`agent.runtime.clock.OffsetClock`, FLEXBRIDGE_CLOCK_OFFSET_FILE): the trading
runs within minutes on today's time, then the test skips the clock past the end of tomorrow,
as if that time had passed at once. In order: the sites' forecasts and envelopes, the
D-prognoses per congestion point, a FlexRequest per congestion point for tomorrow's evening
ISPs, the offer, the order, its split into one command per site, every site applying its
command, the acks back; then the skip (the sites ran through the ordered ISPs at their caps,
the other ISPs at their baseline), every site's metering of the day recorded once at the
centre, the aggregator's Metering for the congestion point with a metering EAN at the DSO, and
the DSO's FlexSettlement of both orders answered: Accepted where the DSO's meter agrees with
the sites' metering, Disputed where it claims an ISP at the baseline that the sites' metering
shows delivered.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import timedelta

import pytest
from shapeshifter_uftp import (
    ContractSettlement,
    ContractSettlementISP,
    ContractSettlementPeriod,
    FlexOrderSettlement,
    FlexOrderSettlementISP,
    FlexSettlement,
)
from xsdata.models.datatype import XmlDate

from tests.integration.fleet_scenarios.world import (
    BASELINE_W,
    CP_A,
    CP_B,
    MARKET,
    MIN_W,
    World,
    congestion_point_of,
    eventually,
    flex_request,
)
from tests.support import uftp as build

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

FIRST, COUNT = 69, 4  # tomorrow 17:00-18:00 local
REDUCE_W = 150_000  # of 100 sites x 4 kW at each congestion point


async def start(world: World) -> None:
    await asyncio.to_thread(world.start_aggregator)
    await asyncio.to_thread(world.start_hosts)


async def test_a_market_day_of_200_sites(world: World) -> None:
    await start(world)
    today = MARKET.today(world.now())
    tomorrow = today + timedelta(days=1)
    await world.sites_say("heartbeat", "flex")
    await world.sites_say("forecast", period=today)
    await world.sites_say("forecast", period=tomorrow)
    await world.drain()
    await world.wait_upstream_recorded()

    # D-prognoses per congestion point from all its sites' forecasts (the first revision may
    # have gone out before the forecasts were in, with every site flagged missing).
    async def prognoses() -> list[tuple[str, str, list[int]]]:
        rows = await world.rows(
            "SELECT congestion_point, message_id, power_w FROM prognosis WHERE period = %s "
            "AND missing_sites = '{}' AND substituted_sites = '{}'",
            tomorrow,
        )
        return [(str(r[0]), str(r[1]), list(r[2])) for r in rows]

    async def both() -> list[tuple[str, str, list[int]]] | None:
        rows = await prognoses()
        return rows if {cp for cp, _, _ in rows} == {CP_A, CP_B} else None

    complete = await eventually(both, 150, "complete D-prognoses for both congestion points")
    per_cp = sum(1 for s in world.sites if congestion_point_of(s) == CP_A)
    for _cp, _message_id, power in complete:
        assert power == [round(per_cp * BASELINE_W)] * len(MARKET.isps(tomorrow))

    def at_the_dso() -> bool:
        received = {m.message_id for k, m in world.dso.all_received if k == "DPrognosis"}
        return {message_id for _, message_id, _ in complete} <= received

    await eventually(at_the_dso, 30, "the complete D-prognoses at the DSO")

    # A FlexRequest per congestion point -> FlexOffer -> FlexOrder (the DSO orders at once).
    client = world.dso.client(build.AGR)
    for cp in (CP_A, CP_B):
        request = flex_request(
            tomorrow, FIRST, COUNT, min_power=-REDUCE_W, max_power=-REDUCE_W // 2, cp=cp
        )
        await asyncio.to_thread(client.send_flex_request, request)
    answers = [
        await asyncio.to_thread(world.dso.wait_for, "FlexOrderResponse", 60.0) for _ in (CP_A, CP_B)
    ]
    assert [a.result for a in answers] == ["Accepted", "Accepted"], [
        a.rejection_reason for a in answers
    ]
    offers = [m for k, m in world.dso.all_received if k == "FlexOffer"]
    assert sorted(o.congestion_point for o in offers) == [CP_A, CP_B]
    for offer in offers:
        assert [(i.start, i.duration, i.power) for i in offer.offer_options[0].isps] == [
            (FIRST, COUNT, -REDUCE_W)
        ]
    orders = await world.orders()
    assert len(orders) == 2
    for order in orders:
        await world.wait_acked(order)

    # Every site applied its share: 1.5 kW of its 4 kW room, a cap of 4.5 kW in the 4 ISPs.
    status = await world.status()
    first = MARKET.start_of(tomorrow, FIRST)
    for site, state in status.items():
        assert len(state["commands"]) == 1, (site, state)
        caps = state["caps"]
        assert sorted(caps) == [(first + timedelta(minutes=15 * k)).isoformat() for k in range(4)]
        assert set(caps.values()) == {BASELINE_W - REDUCE_W / 100}, (site, caps)
        assert all(v >= MIN_W for v in caps.values())
    rows = await world.rows(
        "SELECT congestion_point, count(*), count(DISTINCT site) FROM command "
        "WHERE ack_outcome = 'applied' GROUP BY congestion_point ORDER BY congestion_point"
    )
    assert [(str(r[0]), r[1], r[2]) for r in rows] == sorted([(CP_A, 100, 100), (CP_B, 100, 100)])

    # What the sites report after the order arrives like everything before it: heartbeats with
    # the live power, metering of any ISP they ran through (each queued in the sites' outboxes,
    # published, recorded once).
    await world.sites_say("heartbeat", "metering")
    await world.drain()
    await world.wait_upstream_recorded()
    view = json.loads(
        await asyncio.to_thread(
            lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{world.http_port}/api/fleet", timeout=10
            ).read()
        )
    )
    assert (view["sites_total"], view["sites_online"]) == (200, 200)
    assert {s["commands_acked"] for s in view["sites"]} == {1}

    # Delivery: the shared clock skips past the ordered day. The sites ran through all of it,
    # at their caps in the ordered ISPs, and report their metering of it.
    isps = MARKET.isps(tomorrow)
    # Less than the 2 days a site keeps its published outbox rows, which check_exactly_once
    # compares with the centre's records.
    world.skip_to(MARKET.bounds(tomorrow)[1] + timedelta(minutes=5))
    assert MARKET.today(world.now()) == tomorrow + timedelta(days=1)
    await world.sites_say("metering")
    await world.drain()
    await world.wait_upstream_recorded()
    ordered = {MARKET.start_of(tomorrow, FIRST + k) for k in range(COUNT)}
    metered = await world.rows(
        "SELECT site, isp_start, energy_wh FROM site_metering WHERE isp_start >= %s "
        "AND isp_start < %s",
        *MARKET.bounds(tomorrow),
    )
    assert len(metered) == 200 * len(isps)
    for site, isp_start, energy_wh in metered:
        expected = (BASELINE_W - REDUCE_W / 100 if isp_start in ordered else BASELINE_W) / 4
        assert energy_wh == expected, (site, isp_start, energy_wh)

    # The aggregator's Metering of the congestion point with an EAN, as soon as the last of
    # its sites metered the day (not on the metering loop's next round, minutes away).
    sent = await asyncio.to_thread(world.dso.wait_for, "Metering", 60.0)
    assert (sent.ean, sent.period.to_date()) == ("E1234567890123456", tomorrow)
    energy = next(p for p in sent.profiles if p.profile_type.value == "ImportEnergy")
    per_isp = {i.start: float(i.value) for i in energy.isps}
    assert sorted(per_isp) == [i.index for i in isps]
    for index, kwh in per_isp.items():
        site_kw = BASELINE_W - REDUCE_W / 100 if FIRST <= index < FIRST + COUNT else BASELINE_W
        assert kwh == per_cp * site_kw / 4 / 1000, (index, kwh)

    # Settlement: the DSO settles both orders from its own meter. At CP_A it measured what
    # the sites metered; at CP_B it claims the last ordered ISP stayed at the baseline, which
    # the sites' metering contradicts: that item is disputed, the message accepted.
    reduced_w = round(per_cp * (BASELINE_W - REDUCE_W / 100))
    baseline_w = round(per_cp * BASELINE_W)

    def delivered(start: int, duration: int) -> FlexOrderSettlementISP:
        return FlexOrderSettlementISP(
            start=start,
            duration=duration,
            baseline_power=baseline_w,
            ordered_flex_power=-REDUCE_W,
            actual_power=reduced_w,
            delivered_flex_power=-REDUCE_W,
        )

    last = FIRST + COUNT - 1
    items = []
    for offer in offers:
        option = offer.offer_options[0]
        if offer.congestion_point == CP_A:
            settled = [delivered(FIRST, COUNT)]
        else:
            settled = [
                delivered(FIRST, COUNT - 1),
                FlexOrderSettlementISP(
                    start=last,
                    duration=1,
                    baseline_power=baseline_w,
                    ordered_flex_power=-REDUCE_W,
                    actual_power=baseline_w,
                    delivered_flex_power=0,
                    power_deficiency=REDUCE_W,
                ),
            ]
        items.append(
            FlexOrderSettlement(
                order_reference=f"ORD-{offer.message_id[:8]}",  # as the DSO ordered it
                period=XmlDate.from_date(tomorrow),
                congestion_point=offer.congestion_point,
                price=option.price,
                net_settlement=option.price,
                isps=settled,
            )
        )
    settlement = FlexSettlement(
        period_start=XmlDate.from_date(tomorrow),
        period_end=XmlDate.from_date(tomorrow),
        currency="EUR",
        flex_order_settlements=items,
        contract_settlements=[
            ContractSettlement(
                contract_id="C-1",
                periods=[
                    ContractSettlementPeriod(
                        period=XmlDate.from_date(tomorrow),
                        isps=[ContractSettlementISP(start=1, reserved_power=0)],
                    )
                ],
            )
        ],
    )
    await asyncio.to_thread(client.send_flex_settlement, settlement)
    answer = await asyncio.to_thread(world.dso.wait_for, "FlexSettlementResponse", 60.0)
    assert answer.result == "Accepted", answer.rejection_reason
    by_cp = {
        item.congestion_point: status
        for item, status in zip(items, answer.flex_order_settlement_statuses, strict=True)
    }
    assert [s.order_reference for s in answer.flex_order_settlement_statuses] == [
        i.order_reference for i in items
    ]
    assert by_cp[CP_A].disposition == "Accepted", by_cp[CP_A].dispute_reason
    assert by_cp[CP_B].disposition == "Disputed"
    assert by_cp[CP_B].dispute_reason == (
        f"ActualPower differs from the AGR's metering: ISP {last}: {baseline_w} W, "
        f"we measured {reduced_w} W"
    )
    assert await world.rows("SELECT items, disputed, status FROM flex_settlement") == [
        (2, 1, "accepted")
    ]

    for host in world.hosts:
        await asyncio.to_thread(host.stop)
    totals = await world.check_exactly_once()
    assert totals["applied"] == 200
    assert totals["commands"] == 200
    assert totals["expired"] == 0
    world.check_dso_answers()
