"""20 % of the fleet offline (their links stopped, their NATS connections closed) for two whole
ordered ISPs, on the world's shared clock, with the trading settings an operator would use
(`reassign_lead_s` 10 minutes, `offline_after_s` 3 minutes).

The order for two ISPs an hour ahead is fanned out while 40 sites are offline: their commands
wait in their consumers. The clock skips to just outside the reassignment lead, the online
sites send heartbeats (recorded at the centre), then it skips into the lead: the offline
sites' last heartbeat is far older than `offline_after_s`, the online ones' a minute or two,
so the aggregator moves the offline sites' share to the online sites of their congestion
point by newer seqs (the offline ones get a newer seq without it). The clock then skips past
both ordered ISPs (the sites run through them, the online ones at their new caps, the offline
ones at their baseline), and only then do the offline sites come back: both their seqs are
expired, none is applied, and what they queued meanwhile (heartbeats, a forecast, their
metering) is published and recorded once."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from agent.fleet.producers import floor_isp
from tests.integration.fleet_scenarios.conftest import write_config
from tests.integration.fleet_scenarios.world import (
    BASELINE_W,
    CP_A,
    CP_B,
    World,
    congestion_point_of,
    eventually,
    isp_index,
    order,
    read_site,
    within_day,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

# As an operator sets them (the defaults of agent/central/config.py).
REASSIGN_LEAD = timedelta(minutes=10)
OFFLINE_AFTER = timedelta(minutes=3)
ISP = timedelta(minutes=15)
REDUCE_W = 150_000  # per order: 100 sites at each congestion point


async def test_a_fifth_of_the_sites_offline_for_two_ordered_isps(world: World) -> None:
    write_config(
        world,
        reassign_lead_s=int(REASSIGN_LEAD.total_seconds()),
        offline_after_s=int(OFFLINE_AFTER.total_seconds()),
    )
    await asyncio.to_thread(world.start_hosts)
    await asyncio.to_thread(world.start_aggregator)
    await world.sites_say("heartbeat", "flex")
    await world.drain()
    await world.wait_upstream_recorded()

    # The first ordered ISP an hour ahead: the order is made and fanned out well before its
    # reassignment falls due.
    first = within_day(floor_isp(world.now()) + timedelta(hours=1), 2)
    ordered = [first, first + ISP]
    offline = world.sites[::5]  # 40 sites: 10 in each host, 20 per congestion point
    online = [s for s in world.sites if s not in offline]
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
    recorded = await world.recorded_upstream()
    for site in offline:
        unpublished = _unpublished(world, site)
        assert len(unpublished) == 2, (site, unpublished)  # its heartbeat and forecast
        assert not unpublished & recorded.get(site, set())
    assert await _not_reassigned(world, orders) == set(orders)

    # Just outside the reassignment lead, half an hour or more on: every site's last heartbeat
    # is older than offline_after; the online sites send theirs, the offline ones' wait.
    await _skip_and_beat(world, first - REASSIGN_LEAD - timedelta(minutes=2), online)
    view = await _fleet_view(world)
    assert (view["sites_total"], view["sites_online"]) == (200, 160)
    assert {s["site"] for s in view["sites"] if not s["online"]} == set(offline)
    assert await _not_reassigned(world, orders) == set(orders)

    # Into the lead: the online sites' heartbeats are 2.5 minutes old (younger than
    # offline_after), the offline ones' recorded ones half an hour or more. Shortly before the
    # first ordered ISP the offline sites' shares move to the online sites (seq 2).
    lets_it_fall_due = first - REASSIGN_LEAD + timedelta(seconds=30)
    await _skip_and_beat(world, lets_it_fall_due, online)

    async def reassigned() -> bool:
        return not await _not_reassigned(world, orders)

    await eventually(reassigned, 90, "the offline sites' shares moved")
    for (at,) in await world.rows(
        "SELECT reassigned_at FROM flex_order WHERE message_id = ANY(%s)", orders
    ):
        assert lets_it_fall_due <= at < first, at
    assert world.now() < first
    view = await _fleet_view(world)
    assert view["sites_online"] == 160
    newest = {
        (str(site), str(order_id)): int(seq)
        for site, order_id, seq in await world.rows(
            "SELECT site, order_id, max(seq) FROM command GROUP BY site, order_id"
        )
    }
    for site in offline:
        assert 2 in {newest.get((site, o)) for o in orders}, site
    moved_to = [s for s in online if 2 in {newest.get((s, o)) for o in orders}]
    assert moved_to, "no online site got a newer seq"
    # The ordered change is still all there, carried by the online sites.
    caps_of = await _newest_caps(world)
    reduction = 0.0
    for site, caps in caps_of.items():
        if site in offline:
            assert all(c >= BASELINE_W for c in caps.values()), (site, caps)  # no share left
        reduction += sum(BASELINE_W - c for c in caps.values())
    assert reduction == pytest.approx(2 * 2 * REDUCE_W)  # 2 orders x 2 ISPs x 150 kW

    for order_id in orders:

        async def acked(o: str = order_id) -> bool:
            return await _online_newest_acked(world, o, offline)

        await eventually(acked, 60, "the online sites' newest seq acked")
    status = await world.status()
    for site in moved_to:
        held = {datetime.fromisoformat(k): v for k, v in status[site]["caps"].items()}
        assert held == caps_of[site], site

    # Through both ordered ISPs: the sites ran through them, the offline ones still offline.
    # Every site reports; the offline sites' heartbeat and metering join their outbox.
    await asyncio.to_thread(world.skip_to, ordered[-1] + ISP + timedelta(minutes=5))
    await world.sites_say("heartbeat", "metering")
    await world.drain()
    await _online_recorded(world, online)
    for site in offline:
        kinds = Counter(i.split(".")[1] for i in _unpublished(world, site))
        # One heartbeat at the order, one after each skip; the forecast; its metering.
        assert (kinds["heartbeat"], kinds["forecast"]) == (4, 1), (site, kinds)
        assert kinds["metering"] >= 1, (site, kinds)
        assert kinds.total() == 5 + kinds["metering"], (site, kinds)
    # The online sites' metering shows the moved share: each ran at its caps, and per
    # congestion point the 80 of them drew the whole ordered reduction less.
    metered = await _metering(world, ordered)
    for site in online:
        for t in ordered:
            expected = caps_of[site].get(t, BASELINE_W) / 4
            assert metered[site, t] == pytest.approx(expected), (site, t)
    per_cp = sum(1 for s in online if congestion_point_of(s) == CP_A)
    for cp in (CP_A, CP_B):
        for t in ordered:
            drawn_wh = sum(metered[s, t] for s in online if congestion_point_of(s) == cp)
            assert drawn_wh == pytest.approx((per_cp * BASELINE_W - REDUCE_W) / 4), (cp, t)

    # Back online after both ISPs: their seq 1 and seq 2 are past valid_until, neither applied;
    # their outboxes go out.
    waiting = {site: _unpublished(world, site) for site in offline}
    for host in world.hosts:
        await asyncio.to_thread(host.call, "online", sites=[s for s in offline if s in host.sites])
    for order_id in orders:
        await world.wait_acked(order_id)
    status = await world.status()
    for site in offline:
        assert status[site]["commands"] == {}, site
        assert all(v >= BASELINE_W for v in status[site]["caps"].values()), site
        outcomes = {(o, s): r for o, s, r, _ in read_site(world.site_file(site)).log}
        assert set(outcomes.values()) == {"expired"}, (site, outcomes)
        assert sorted(s for _, s in outcomes) == [1, 2], (site, outcomes)
    await world.drain()
    await world.wait_upstream_recorded()
    counts = await world.rows(
        "SELECT site, msg_id, count(*) FROM site_inbox WHERE site = ANY(%s) GROUP BY site, msg_id",
        offline,
    )
    recorded_once = {(str(s), str(m)) for s, m, n in counts if n == 1}
    for site, ids in waiting.items():
        assert {(site, i) for i in ids} <= recorded_once, site
    # A heartbeat from each now: the operator view has the whole fleet online again.
    await world.sites_say("heartbeat")
    await world.drain()
    await world.wait_upstream_recorded()
    view = await _fleet_view(world)
    assert view["sites_online"] == 200
    # Their metering of the ordered ISPs: at their baseline, no command reached them in time.
    metered = await _metering(world, ordered)
    for site in offline:
        for t in ordered:
            assert metered[site, t] == BASELINE_W / 4, (site, t)

    for host in world.hosts:
        await asyncio.to_thread(host.stop)
    totals = await world.check_exactly_once()
    assert totals["expired"] == 2 * len(offline)
    assert totals["applied"] == len(online) + len(moved_to)
    assert totals["superseded"] == 0
    assert totals["commands"] == len(world.sites) + len(offline) + len(moved_to)
    world.check_dso_answers()


def _unpublished(world: World, site: str) -> set[str]:
    return {i for i, at in read_site(world.site_file(site)).outbox.items() if at is None}


async def _not_reassigned(world: World, orders: list[str]) -> set[str]:
    rows = await world.rows(
        "SELECT message_id FROM flex_order WHERE reassigned_at IS NULL AND message_id = ANY(%s)",
        orders,
    )
    return {str(r[0]) for r in rows}


async def _skip_and_beat(world: World, moment: datetime, online: list[str]) -> None:
    """Skip the shared clock to `moment`; every site queues a heartbeat, and the online
    sites' ones are recorded at the centre before this returns (the offline ones' wait)."""
    await asyncio.to_thread(world.skip_to, moment)
    await world.sites_say("heartbeat")
    await world.drain()

    async def beating() -> bool:
        rows = await world.rows(
            "SELECT site FROM site_status WHERE last_heartbeat_at >= %s", moment
        )
        return {str(r[0]) for r in rows} == set(online)

    await eventually(beating, 60, f"the online sites' heartbeats of {moment} recorded")


async def _online_recorded(world: World, online: list[str]) -> None:
    async def done() -> bool:
        recorded = await world.recorded_upstream()
        return all(
            set(read_site(world.site_file(s)).outbox) <= recorded.get(s, set()) for s in online
        )

    await eventually(done, 90, "the online sites' outboxes recorded at the centre")


async def _newest_caps(world: World) -> dict[str, dict[datetime, float]]:
    """Per site its caps (W) in the newest command of each order; an ISP without one absent."""
    rows = await world.rows(
        "SELECT c.site, c.payload FROM command c JOIN (SELECT site, order_id, max(seq) AS seq "
        "FROM command GROUP BY site, order_id) n USING (site, order_id, seq)"
    )
    out: dict[str, dict[datetime, float]] = {}
    for site, payload in rows:
        start = datetime.fromisoformat(payload["start"])
        caps = out.setdefault(str(site), {})
        for k, cap in enumerate(payload["cap_w"]):
            if cap is not None:
                caps[start + k * ISP] = float(cap)
    return out


async def _metering(world: World, isps: list[datetime]) -> dict[tuple[str, datetime], float]:
    rows = await world.rows(
        "SELECT site, isp_start, energy_wh FROM site_metering WHERE isp_start = ANY(%s)", isps
    )
    return {(str(s), t): float(e) for s, t, e in rows}


async def _fleet_view(world: World) -> dict[str, Any]:
    """GET /api/fleet: the aggregator's liveness, judged on its (the shared) clock."""
    url = f"http://127.0.0.1:{world.http_port}/api/fleet"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    view: dict[str, Any] = json.loads(body)
    return view


async def _online_newest_acked(world: World, order_id: str, offline: list[str]) -> bool:
    rows = await world.rows(
        "SELECT DISTINCT ON (site) site, ack_outcome FROM command WHERE order_id = %s "
        "ORDER BY site, seq DESC",
        order_id,
    )
    return all(outcome is not None for site, outcome in rows if site not in offline)
