"""20 % of the fleet offline (their links stopped, their NATS connections closed) while an
order for the next ISPs is fanned out: their commands wait in their consumers, shortly before
the first ordered ISP their share moves to the online sites of their congestion point by newer
seqs (and they get a newer seq without it), and what they report meanwhile waits in their
outboxes until they are back.

Compressed: the aggregator runs on the wall clock, so the offline spell spans the order, the
reassignment and the return, a minute or more before the ordered ISPs begin, not two whole ISPs
of 15 minutes; the reassignment lead is set so that "shortly before" falls inside the test."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from agent.fleet.producers import floor_isp
from tests.integration.fleet_scenarios.conftest import write_config
from tests.integration.fleet_scenarios.world import (
    BASELINE_W,
    World,
    eventually,
    isp_index,
    order,
    read_site,
)
from uftp.models import utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

# When the reassignment falls due after the aggregator starts: enough for the online sites to
# have acked (they are then not taken for offline).
REASSIGN_AFTER_S = 60
# A site without an ack, a heartbeat or a command younger than this counts as offline.
OFFLINE_AFTER_S = 20


async def test_a_fifth_of_the_sites_offline_across_an_order(world: World) -> None:
    now = utc_now()
    first = floor_isp(now) + timedelta(minutes=15)
    if (first - now).total_seconds() < REASSIGN_AFTER_S + 75:
        first += timedelta(minutes=15)
    lead_s = int((first - now).total_seconds()) - REASSIGN_AFTER_S
    write_config(world, reassign_lead_s=lead_s, offline_after_s=OFFLINE_AFTER_S)
    await asyncio.to_thread(world.start_hosts)
    await asyncio.to_thread(world.start_aggregator)
    await world.sites_say("heartbeat", "flex")
    await world.drain()
    await world.wait_upstream_recorded()

    offline = world.sites[::5]  # 40 sites: 10 in each host, 20 per congestion point
    for host in world.hosts:
        await asyncio.to_thread(host.call, "offline", sites=[s for s in offline if s in host.sites])
    period, index = isp_index(first)
    orders = await order(world, period, index, 2)

    # The online sites apply their seq 1; the offline ones' wait in their consumers.
    async def online_acked() -> bool:
        rows = await world.rows(
            "SELECT site FROM command WHERE seq = 1 AND ack_outcome IS NULL ORDER BY site"
        )
        return sorted(r[0] for r in rows) == sorted(offline)

    await eventually(online_acked, 60, "every online site's seq 1 acked, no offline one's")
    # Meanwhile every site reports: the offline sites' messages stay in their outboxes.
    await world.sites_say("heartbeat", "forecast", period=period)
    await world.all_hosts("drain", timeout_s=30)
    waiting = {s: read_site(world.site_file(s)).outbox for s in offline}
    recorded = await world.recorded_upstream()
    for site, rows in waiting.items():
        unpublished = {i for i, at in rows.items() if at is None}
        assert len(unpublished) == 2, (site, unpublished)  # its heartbeat and forecast
        assert not unpublished & recorded.get(site, set())

    # Shortly before the first ordered ISP their shares move to the online sites (seq 2).
    async def reassigned() -> bool:
        rows = await world.rows(
            "SELECT count(*) FROM flex_order WHERE reassigned_at IS NOT NULL "
            "AND message_id = ANY(%s)",
            orders,
        )
        return bool(rows[0][0] == len(orders))

    await eventually(reassigned, REASSIGN_AFTER_S + 60, "the offline sites' shares moved")
    assert utc_now() < first
    newest = {
        (str(site), str(order_id)): int(seq)
        for site, order_id, seq in await world.rows(
            "SELECT site, order_id, max(seq) FROM command GROUP BY site, order_id"
        )
    }
    for site in offline:
        assert 2 in {newest.get((site, o)) for o in orders}, site
    online = [s for s in world.sites if s not in offline]
    moved_to = [s for s in online if 2 in {newest.get((s, o)) for o in orders}]
    assert moved_to, "no online site got a newer seq"
    # The ordered change is still all there, carried by the online sites.
    latest = await world.rows(
        "SELECT c.site, c.payload FROM command c JOIN (SELECT site, order_id, max(seq) AS seq "
        "FROM command GROUP BY site, order_id) n USING (site, order_id, seq)"
    )
    reduction = 0.0
    for site, payload in latest:
        caps = [c for c in payload["cap_w"] if c is not None]
        if site in offline:
            assert all(c >= BASELINE_W for c in caps), (site, caps)  # no share left
        reduction += sum(BASELINE_W - c for c in caps)
    assert reduction == pytest.approx(2 * 2 * 150_000)  # 2 orders x 2 ISPs x 150 kW

    for order_id in orders:

        async def acked(o: str = order_id) -> bool:
            return await _online_newest_acked(world, o, offline)

        await eventually(acked, 60, "the online sites' newest seq acked")
    # Back online: the newest command of each order is in force, their reports arrive.
    for host in world.hosts:
        await asyncio.to_thread(host.call, "online", sites=[s for s in offline if s in host.sites])
    for order_id in orders:
        await world.wait_acked(order_id)
    status = await world.status()
    for site in offline:
        in_force = status[site]["commands"]
        assert in_force == {o: newest[(site, o)] for o in orders if (site, o) in newest}, site
        assert all(v >= BASELINE_W for v in status[site]["caps"].values()), site
    await world.drain()
    await world.wait_upstream_recorded()
    assert utc_now() < first
    totals = await world.check_exactly_once()
    assert totals["expired"] == 0
    world.check_dso_answers()


async def _online_newest_acked(world: World, order_id: str, offline: list[str]) -> bool:
    rows = await world.rows(
        "SELECT DISTINCT ON (site) site, ack_outcome FROM command WHERE order_id = %s "
        "ORDER BY site, seq DESC",
        order_id,
    )
    return all(outcome is not None for site, outcome in rows if site not in offline)
