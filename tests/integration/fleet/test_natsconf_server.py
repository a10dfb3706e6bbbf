"""The configurations natsconf renders run on the real nats-server: passwords with awkward
characters authenticate (the quoting holds), a password one character short does not; a
site's gateway leaf node carries the site's traffic with the site's permissions."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fleet.bus import BusPermissionDenied, NatsBus, ensure_site_consumer, ensure_streams
from agent.fleet.natsconf import SiteCredentials, render_leaf
from agent.fleet.ports import BusUnavailable
from agent.fleet.protocol import CMD_STREAM, cmd_subject, site_consumer, up_subject
from tests.support.nats_cluster import NatsCluster, find_nats_server, start_or_skip
from tests.support.ports import free_port, wait_for_port

pytestmark = pytest.mark.integration

AWKWARD = {"a": "$2x#{}[]'=;:,&*!~`|<>?/%^()+-_.@", "b": "p" * 8}


@pytest.fixture
def awkward_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    workdir = tmp_path / "nats"
    workdir.mkdir()
    # start_or_skip with these passwords: the same skip/fail rule as the standard fixture.
    start_or_skip(workdir, []).stop()
    cluster = NatsCluster(workdir / "awkward", ["a", "b"], passwords=AWKWARD)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_awkward_passwords_authenticate(awkward_cluster: NatsCluster) -> None:
    central = await NatsBus.connect_central(
        awkward_cluster.client_urls, awkward_cluster.central_password
    )
    try:
        await ensure_streams(central.jetstream)
        site = await NatsBus.connect_site(awkward_cluster.client_urls, "a", AWKWARD["a"])
        await site.publish(up_subject("a", "heartbeat"), "hb", b"x")
        await site.close()
        with pytest.raises(BusUnavailable, match=r"(?i)authorization violation"):
            await NatsBus.connect_site(
                awkward_cluster.client_urls, "a", AWKWARD["a"][:-1], connect_timeout_s=2.0
            )
    finally:
        await central.close()


@pytest.fixture
def domain_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    workdir = tmp_path / "nats"
    workdir.mkdir()
    start_or_skip(workdir, []).stop()
    cluster = NatsCluster(workdir / "domain", ["a", "b"], domain="fleet")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def leaf(domain_cluster: NatsCluster, tmp_path: Path) -> Iterator[str]:
    """A leaf node as on site a's gateway; yields the URL the site agent connects to."""
    binary = find_nats_server()
    assert binary is not None
    nats_cluster = domain_cluster
    port = free_port()
    conf = tmp_path / "leaf.conf"
    conf.write_text(
        render_leaf(
            SiteCredentials("a", "pw-a-secret"),
            nats_cluster.leaf_urls,
            listen_port=port,
            local_password="local-secret",
        )
    )
    log = (tmp_path / "leaf.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def test_leaf_node_carries_the_sites_traffic_with_its_permissions(
    domain_cluster: NatsCluster, leaf: str
) -> None:
    nats_cluster = domain_cluster
    central = await NatsBus.connect_central(nats_cluster.client_urls, nats_cluster.central_password)
    try:
        await ensure_streams(central.jetstream)
        await ensure_site_consumer(central.jetstream, "a")
        await ensure_site_consumer(central.jetstream, "b")
        await central.publish(cmd_subject("a"), "cmd-a", b"for a")
        await central.publish(cmd_subject("b"), "cmd-b", b"for b")
        agent = await NatsBus.connect(
            [leaf],
            user="agent",
            password="local-secret",
            name="site-a-agent",
            inbox_prefix="_INBOX_a",
            publish_timeout_s=2.0,
            domain="fleet",
        )
        try:
            deliveries = await _fetch_when_leaf_is_up(agent)
            assert [(d.data, d.num_delivered) for d in deliveries] == [(b"for a", 1)]
            await deliveries[0].ack()
            await agent.publish(up_subject("a", "heartbeat"), "hb-a", b"alive")
            # Through the leaf, the cluster refuses silently (the leaf's user has no say):
            # no answer, so unavailable, and b's command stays b's.
            with pytest.raises(BusUnavailable) as refused:
                await agent.publish(up_subject("b", "heartbeat"), "hb-b", b"not yours")
            assert not isinstance(refused.value, BusPermissionDenied)
            with pytest.raises(BusUnavailable):
                await agent.fetch(CMD_STREAM, site_consumer("b"), 1, 1.0)
        finally:
            await agent.close()
        info = await central.jetstream.consumer_info(CMD_STREAM, site_consumer("b"))
        assert (info.num_pending, info.num_ack_pending) == (1, 0)
        up = await central.jetstream.stream_info("FLEET_UP")
        assert up.state.messages == 1
    finally:
        await central.close()


async def _fetch_when_leaf_is_up(agent: NatsBus) -> list:  # type: ignore[type-arg]
    """The leaf connects to the cluster a moment after it listens locally."""
    for _ in range(50):
        try:
            got = await agent.fetch(CMD_STREAM, site_consumer("a"), 10, 1.0)
        except BusUnavailable:
            continue
        if got:
            return got
    raise AssertionError("nothing came through the leaf node")
