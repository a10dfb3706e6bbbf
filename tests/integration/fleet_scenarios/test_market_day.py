"""A market day of 200 sites under one aggregator, compressed: the parts run on the wall clock
(the aggregator process and shapeshifter-uftp have no scaled clock), so the day's phases run
one after the other within minutes instead of at their times of day: the sites' forecasts and
envelopes, the D-prognoses per congestion point, a FlexRequest per congestion point for
tomorrow's evening ISPs, the offer, the order, its split into one command per site, every site
applying its command, the acks back.

Not in it: the ordered ISPs' delivery and the settlement. Both need tomorrow evening to have
passed on the aggregator's and the DSO's clocks; the sites report metering only for ISPs they
ran through, which within the test's minutes is at most the one a quarter-hour boundary
closed (often none)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import timedelta

import pytest

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
from uftp.models import utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

FIRST, COUNT = 69, 4  # tomorrow 17:00-18:00 local
REDUCE_W = 150_000  # of 100 sites x 4 kW at each congestion point


async def start(world: World) -> None:
    await asyncio.to_thread(world.start_aggregator)
    await asyncio.to_thread(world.start_hosts)


async def test_a_market_day_of_200_sites(world: World) -> None:
    await start(world)
    today = MARKET.today(utc_now())
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

    for host in world.hosts:
        await asyncio.to_thread(host.stop)
    totals = await world.check_exactly_once()
    assert totals["applied"] == 200
    assert totals["commands"] == 200
    assert totals["expired"] == 0
    world.check_dso_answers()
