"""The configurations natsconf renders run on the real nats-server: passwords with awkward
characters authenticate (the quoting holds), a password one character short does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fleet.bus import NatsBus, ensure_streams
from agent.fleet.ports import BusUnavailable
from agent.fleet.protocol import up_subject
from tests.support.nats_cluster import NatsCluster, start_or_skip

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
