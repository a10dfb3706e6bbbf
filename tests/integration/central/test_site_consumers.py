"""The sites' command consumers made at the aggregator's start, on a real 3-node JetStream
cluster: several at once but never more than the bound, every site tried, and each site whose
consumer could not be made named."""

from __future__ import annotations

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agent.central.app import ensure_site_consumers
from agent.central.config import NatsConfig
from agent.central.natsbus import CentralNatsBus
from agent.fleet.bus import NatsBus, ensure_streams
from agent.fleet.protocol import CMD_STREAM, cmd_subject, site_consumer
from agent.runtime.service import StartError
from tests.support.nats_cluster import (
    NatsCluster,
    nats_cluster,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration


class CountingBus:
    """The aggregator's bus, counting how many consumer requests are in flight at once."""

    def __init__(self, bus: CentralNatsBus) -> None:
        self._bus = bus
        self.in_flight = 0
        self.most_in_flight = 0
        self.asked: list[str] = []

    async def ensure_site_consumer(self, site: str) -> None:
        self.asked.append(site)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._bus.ensure_site_consumer(site)
        finally:
            self.in_flight -= 1


async def test_consumers_are_made_concurrently_and_failures_name_their_sites(
    nats_cluster: NatsCluster,  # noqa: F811
) -> None:
    sites = [f"s{i:02d}" for i in range(12)]
    broken = ["s03", "s10"]
    admin = await NatsBus.connect_central(nats_cluster.client_urls, nats_cluster.central_password)
    central = CentralNatsBus(
        NatsConfig.model_validate(
            {"servers": nats_cluster.client_urls, "password": nats_cluster.central_password}
        )
    )
    try:
        js = admin.jetstream
        await ensure_streams(js, replicas=3)
        # A consumer by a broken site's name that filters another subject: an operator's
        # mistake that `ensure_site_consumer` refuses to paper over.
        for site in broken:
            await js.add_consumer(
                CMD_STREAM,
                ConsumerConfig(
                    durable_name=site_consumer(site),
                    filter_subject=cmd_subject("elsewhere"),
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                ),
            )
        await central.start()
        bus = CountingBus(central)

        with pytest.raises(StartError) as raised:
            await ensure_site_consumers(bus, sites, in_flight=4)

        message = str(raised.value)
        assert "2 of 12 sites" in message
        for site in broken:
            assert f"{site}: consumer {site_consumer(site)}" in message
        assert sorted(bus.asked) == sites  # a failure stops no other site
        assert bus.most_in_flight == 4
        for site in sites:
            info = await js.consumer_info(CMD_STREAM, site_consumer(site))
            expected = cmd_subject("elsewhere") if site in broken else cmd_subject(site)
            assert info.config.filter_subject == expected

        # Once the operator removed the wrong consumers, a start makes them and passes.
        for site in broken:
            await js.delete_consumer(CMD_STREAM, site_consumer(site))
        await ensure_site_consumers(bus, sites, in_flight=4)
        for site in broken:
            info = await js.consumer_info(CMD_STREAM, site_consumer(site))
            assert info.config.filter_subject == cmd_subject(site)
    finally:
        await central.stop()
        await admin.close()
