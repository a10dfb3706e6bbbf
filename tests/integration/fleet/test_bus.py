"""NatsBus against a real 3-node JetStream cluster: confirmed publishes survive the stream
leader's SIGKILL with nothing lost and nothing stored twice, a restarted node catches up, an
un-acked command comes back, and a site can touch only its own subjects."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StorageType

from agent.fleet.bus import (
    BusPermissionDenied,
    NatsBus,
    NatsDelivery,
    ensure_central_consumer,
    ensure_site_consumer,
    ensure_streams,
)
from agent.fleet.ports import BusPort, BusUnavailable
from agent.fleet.protocol import CMD_STREAM, UP_STREAM, cmd_subject, site_consumer, up_subject
from tests.support.nats_cluster import NatsCluster, site_password

pytestmark = pytest.mark.integration


@pytest.fixture
async def central(nats_cluster: NatsCluster) -> AsyncIterator[NatsBus]:
    """The centre's connection, streams and consumers for sites a and b made ahead of time."""
    bus = await NatsBus.connect_central(
        nats_cluster.client_urls, nats_cluster.central_password, publish_timeout_s=2.0
    )
    js = bus.jetstream
    await ensure_streams(js, replicas=3)
    for site in ("a", "b"):
        await ensure_site_consumer(js, site, ack_wait_s=1.0)
    await ensure_central_consumer(js)
    try:
        yield bus
    finally:
        await bus.close()


async def _site(cluster: NatsCluster, site: str) -> NatsBus:
    return await NatsBus.connect_site(
        cluster.client_urls, site, site_password(site), publish_timeout_s=2.0
    )


async def _publish_confirmed(bus: BusPort, subject: str, msg_id: str, payload: bytes) -> int:
    """What a sender's outbox loop does: publish until confirmed, same msg_id every time.
    Returns how many attempts went unconfirmed."""
    failures = 0
    while True:
        try:
            await bus.publish(subject, msg_id, payload)
            return failures
        except BusUnavailable:
            failures += 1
            assert failures < 200, f"{msg_id} never confirmed"
            await asyncio.sleep(0.1)


async def _stored_ids(bus: NatsBus, stream: str) -> list[str]:
    """Every message the stream holds, read one by one by sequence: duplicates would show."""
    js = bus.jetstream
    info = await js.stream_info(stream)
    ids: list[str] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        ids.append((msg.headers or {}).get("Nats-Msg-Id", "?"))
    return ids


async def test_leader_killed_mid_publish_loses_and_duplicates_nothing(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    leader = nats_cluster.stream_leader(CMD_STREAM)
    unconfirmed = 0
    confirmed: list[str] = []
    for i in range(1_000):
        if i == 300:
            nats_cluster.kill(leader)
        msg_id = f"order-1:a:{i}"
        unconfirmed += await _publish_confirmed(central, cmd_subject("a"), msg_id, b"%d" % i)
        confirmed.append(msg_id)
    new_leader = nats_cluster.stream_leader(CMD_STREAM)
    assert new_leader != leader

    stored = await _stored_ids(central, CMD_STREAM)
    counts = Counter(stored)
    assert [m for m in confirmed if counts[m] == 0] == []  # lost
    assert [m for m, n in counts.items() if n > 1] == []  # stored twice
    assert sorted(stored) == sorted(confirmed)
    print(f"unconfirmed attempts retried with the same msg_id: {unconfirmed}")


async def test_restarted_node_catches_up_while_others_take_writes(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    for i in range(200):
        await _publish_confirmed(central, cmd_subject("a"), f"x{i}", b"before")
    leader = nats_cluster.stream_leader(CMD_STREAM)
    follower = (leader + 1) % 3
    nats_cluster.kill(follower)
    for i in range(200, 500):
        await _publish_confirmed(central, cmd_subject("a"), f"x{i}", b"while down")

    async def writer() -> None:
        for i in range(500, 800):
            await _publish_confirmed(central, cmd_subject("b"), f"x{i}", b"during restart")

    writing = asyncio.create_task(writer())
    await asyncio.to_thread(nats_cluster.restart, follower, assets=False)
    await writing
    await asyncio.to_thread(nats_cluster.wait_caught_up, follower, CMD_STREAM)
    assert nats_cluster.stream_messages(follower, CMD_STREAM) == 800
    info = await central.jetstream.stream_info(CMD_STREAM)
    assert info.state.messages == 800
    assert info.cluster is not None
    replicas = {r.name: r for r in info.cluster.replicas or []}
    assert replicas[nats_cluster.nodes[follower].name].current

    # The consumers' replicas on the node follow with their next deliveries and acks (traffic
    # goes on, as it does in service); then the node's /healthz (every asset current) says OK.
    # nats-server 2.9.10 sometimes leaves a consumer replica on the restarted node "not
    # current" however much traffic flows, until that consumer's leader steps down
    # (docs/fleet.md, "Restarting a node"): after 10 s the centre does what an operator would.
    sites = {site: await _site(nats_cluster, site) for site in ("a", "b")}
    stepped_down = False
    try:
        for round_ in range(120):
            if nats_cluster.healthy(follower):
                break
            if round_ == 20:
                stepped_down = True
                for stream, durable in (
                    (CMD_STREAM, site_consumer("a")),
                    (CMD_STREAM, site_consumer("b")),
                    (UP_STREAM, "central"),
                ):
                    await central.step_down_consumer(stream, durable)
            await _traffic(central, sites, round_)
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"{nats_cluster.nodes[follower].name} not healthy in 60 s")
    finally:
        for bus in sites.values():
            await bus.close()
    print(
        f"healthy after {round_} rounds of traffic; consumer leaders stepped down: {stepped_down}"
    )


async def _traffic(central: NatsBus, sites: dict[str, NatsBus], round_: int) -> None:
    """One round of what a fleet does: a command to each site, fetched and acked, a heartbeat
    from each site, consumed and acked by the centre."""
    for site, bus in sites.items():
        await _publish_confirmed(central, cmd_subject(site), f"t{round_}-{site}", b"cmd")
        await _publish_confirmed(bus, up_subject(site, "heartbeat"), f"h{round_}-{site}", b"hb")
        for delivery in await bus.fetch(CMD_STREAM, site_consumer(site), 100, 1.0):
            await delivery.ack()
    for delivery in await central.fetch(UP_STREAM, "central", 100, 1.0):
        await delivery.ack()


async def test_unacked_command_is_redelivered(nats_cluster: NatsCluster, central: NatsBus) -> None:
    await central.publish(cmd_subject("a"), "cmd-1", b"command one")
    site = await _site(nats_cluster, "a")
    try:
        first = await site.fetch_deliveries(CMD_STREAM, site_consumer("a"), 10, 2.0)
        assert [(d.data, d.num_delivered, d.msg_id) for d in first] == [
            (b"command one", 1, "cmd-1")
        ]
        # Not acked (the site crashed before its transaction committed): back after ack_wait.
        again = await site.fetch_deliveries(CMD_STREAM, site_consumer("a"), 10, 5.0)
        assert [(d.data, d.num_delivered, d.stream_seq) for d in again] == [
            (b"command one", 2, first[0].stream_seq)
        ]
        await again[0].ack()
        assert await site.fetch(CMD_STREAM, site_consumer("a"), 10, 2.0) == []
    finally:
        await site.close()


async def test_nak_redelivers_after_delay_and_term_never(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    await central.publish(cmd_subject("b"), "cmd-2", b"later")
    site = await _site(nats_cluster, "b")
    try:
        (first,) = await site.fetch(CMD_STREAM, site_consumer("b"), 1, 2.0)
        await first.nak(0.2)
        (second,) = await site.fetch(CMD_STREAM, site_consumer("b"), 1, 3.0)
        assert (second.data, second.num_delivered) == (b"later", 2)
        await second.term()
        # ack_wait is 1 s: a terminated message would be back by now if term had been lost.
        assert await site.fetch(CMD_STREAM, site_consumer("b"), 1, 2.5) == []
    finally:
        await site.close()


async def test_site_upstream_reaches_central(nats_cluster: NatsCluster, central: NatsBus) -> None:
    site = await _site(nats_cluster, "a")
    try:
        await site.publish(up_subject("a", "heartbeat"), "hb-1", b"alive")
        await site.publish(up_subject("a", "heartbeat"), "hb-1", b"alive")  # a republish
    finally:
        await site.close()
    got = await central.fetch_deliveries(UP_STREAM, "central", 10, 2.0)
    assert [(d.subject, d.msg_id, d.data) for d in got] == [
        ("fleet.up.a.heartbeat", "hb-1", b"alive")
    ]
    for delivery in got:
        await delivery.ack()


async def test_site_may_touch_only_its_own_subjects(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    await central.publish(cmd_subject("b"), "for-b", b"b's command")
    site_a = await _site(nats_cluster, "a")
    try:
        # Its own: allowed.
        await site_a.publish(up_subject("a", "forecast"), "fa-1", b"{}")
        assert await site_a.fetch(CMD_STREAM, site_consumer("a"), 1, 1.0) == []
        # Another site's consumer and subjects: refused by the server, said so.
        with pytest.raises(BusPermissionDenied, match=r"(?i)permissions violation.*site-b"):
            await site_a.fetch(CMD_STREAM, site_consumer("b"), 1, 1.0)
        with pytest.raises(BusPermissionDenied, match=r"(?i)permissions violation.*fleet\.up\.b"):
            await site_a.publish(up_subject("b", "forecast"), "fb-1", b"{}")
    finally:
        await site_a.close()
    # b's command is still there for b, untouched.
    site_b = await _site(nats_cluster, "b")
    try:
        (delivery,) = await site_b.fetch(CMD_STREAM, site_consumer("b"), 1, 2.0)
        assert (delivery.data, delivery.num_delivered) == (b"b's command", 1)
        await delivery.ack()
    finally:
        await site_b.close()


async def test_site_cannot_subscribe_create_consumers_or_use_others_inbox(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        nats_cluster.client_urls,
        user="site-a",
        password=site_password("a"),
        inbox_prefix="_INBOX_a",
        error_cb=on_error,
    )
    try:
        await nc.subscribe("fleet.cmd.b")
        await nc.subscribe("_INBOX_b.>")
        js = nc.jetstream(timeout=1.0)
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(CMD_STREAM, durable_name="site-a-2", filter_subject="fleet.>")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_consumer(CMD_STREAM, site_consumer("b"))
        await nc.flush()
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert any('subscription to "fleet.cmd.b"' in e for e in errors), errors
    assert any('subscription to "_inbox_b.>"' in e for e in errors), errors
    assert any("$js.api.consumer.durable.create.fleet_cmd.site-a-2" in e for e in errors), errors
    assert any("$js.api.consumer.delete.fleet_cmd.site-b" in e for e in errors), errors
    info = await central.jetstream.consumer_info(CMD_STREAM, site_consumer("b"))
    assert info.name == "site-b"

    # The default reply prefix is not the site's: its replies are refused, and it says so.
    wrong = await NatsBus.connect(
        nats_cluster.client_urls,
        user="site-a",
        password=site_password("a"),
        name="misconfigured",
        publish_timeout_s=1.0,
    )
    try:
        with pytest.raises(BusPermissionDenied, match="replies cannot reach us"):
            await wrong.publish(up_subject("a", "forecast"), "fa-2", b"{}")
    finally:
        await wrong.close()


async def test_set_up_is_idempotent_and_consumers_are_never_made_by_fetch(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    js = central.jetstream
    await ensure_streams(js, replicas=3)
    await ensure_site_consumer(js, "a", ack_wait_s=1.0)
    await ensure_site_consumer(js, "a", ack_wait_s=2.0)  # an update, not a second consumer
    await ensure_central_consumer(js)
    before = _api_calls(nats_cluster)
    await ensure_site_consumer(js, "a", ack_wait_s=2.0)  # as it is: looked at, not rewritten
    assert _api_calls(nats_cluster) - before == 1
    consumers = [c.name for c in await js.consumers_info(CMD_STREAM)]
    assert sorted(consumers) == ["site-a", "site-b"]
    assert (await js.consumer_info(CMD_STREAM, "site-a")).config.ack_wait == 2.0
    for stream in (CMD_STREAM, UP_STREAM):
        info = await js.stream_info(stream)
        assert info.config.num_replicas == 3
        assert info.config.storage == StorageType.FILE

    # Site c has a user but never joined: no consumer, a clear error, and none made.
    site_c = await _site(nats_cluster, "c")
    try:
        with pytest.raises(BusUnavailable, match="does not exist"):
            await site_c.fetch(CMD_STREAM, site_consumer("c"), 1, 1.0)
    finally:
        await site_c.close()
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.consumer_info(CMD_STREAM, "site-c")


async def test_set_up_waits_for_a_cluster_without_quorum_and_names_what_it_waited_for(
    nats_cluster: NatsCluster,
) -> None:
    """Two of three nodes down: JetStream has no meta leader and answers nothing. Set-up
    with a short limit fails naming the stream; set-up with a longer one completes once the
    nodes are back, with no error in between."""
    bus = await NatsBus.connect_central(
        nats_cluster.client_urls[:1], nats_cluster.central_password, publish_timeout_s=2.0
    )
    try:
        nats_cluster.kill(1)
        nats_cluster.kill(2)
        with pytest.raises(BusUnavailable, match=r"setting up stream FLEET_UP: .* in 3 s"):
            await ensure_streams(bus.jetstream, replicas=3, timeout_s=3)
        waiting = asyncio.create_task(ensure_streams(bus.jetstream, replicas=3, timeout_s=240))
        await asyncio.sleep(2)
        assert not waiting.done()  # still asking, not failed
        for index in (1, 2):
            await asyncio.to_thread(nats_cluster.restart, index, 60.0, assets=False)
        await asyncio.wait_for(waiting, 240)
        for stream in (UP_STREAM, CMD_STREAM):
            assert (await bus.jetstream.stream_info(stream)).config.num_replicas == 3
    finally:
        await bus.close()


def _api_calls(cluster: NatsCluster) -> int:
    """JetStream API requests the nodes have served so far (each counts those it answered)."""
    total = 0
    for index in range(3):
        _status, jsz = cluster._get(index, "/jsz")
        total += int(jsz["api"]["total"])
    return total


async def test_wrong_password_is_a_clear_error(nats_cluster: NatsCluster) -> None:
    with pytest.raises(BusUnavailable, match=r"(?i)authorization violation"):
        await NatsBus.connect_site(
            nats_cluster.client_urls, "a", "not-the-password", connect_timeout_s=2.0
        )


async def test_publish_without_cluster_fails_then_reconnects_by_itself(
    nats_cluster: NatsCluster, central: NatsBus
) -> None:
    site = await _site(nats_cluster, "a")
    try:
        await asyncio.to_thread(nats_cluster.stop)
        with pytest.raises(BusUnavailable, match="not connected"):
            await site.publish(up_subject("a", "heartbeat"), "hb-2", b"x")
        assert not site.connected
        # Refused at once while down, not buffered: nothing piles up for the return.
        sent = site.messages_sent
        for attempt in range(20):
            with pytest.raises(BusUnavailable, match="not connected"):
                await site.publish(up_subject("a", "heartbeat"), f"stale-{attempt}", b"x")
        with pytest.raises(BusUnavailable, match="not connected"):
            await site.fetch(CMD_STREAM, site_consumer("a"), 1, 1.0)
        assert site.messages_sent == sent
        await asyncio.to_thread(nats_cluster.start)
        await _publish_confirmed(site, up_subject("a", "heartbeat"), "hb-2", b"x")
        assert site.connected
    finally:
        await site.close()
    got = await central.fetch_deliveries(UP_STREAM, "central", 100, 5.0)
    assert [d.msg_id for d in got] == ["hb-2"]  # none of the stale attempts went out
    assert isinstance(got[0], NatsDelivery)
