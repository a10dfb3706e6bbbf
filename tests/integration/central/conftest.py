"""The aggregator's integration fixtures: a real PostgreSQL, shapeshifter-uftp 2.4.0 as the DSO,
and the aggregator built by its own composition root from a configuration file's text."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from shapeshifter_uftp import AcceptedRejected, FlexOfferResponse, FlexOrder, FlexOrderISP

from agent.central.app import Aggregator, build_aggregator
from agent.central.config import CentralConfig, parse_central_config
from agent.fleet import protocol
from agent.trading.market import Market
from tests.integration.central.fake_bus import FakeBus
from tests.support import uftp as build
from tests.support.ports import free_port
from tests.support.postgres import (
    PostgresServer,
    postgres,  # noqa: F401  (the fixture)
)
from tests.support.shapeshifter_peer import ShapeshifterDso
from uftp import keys
from uftp.models import utc_now

CP_A = build.CONGESTION_POINT
CP_B = "ean.871685900012636544"
SITES = {"site-a1": CP_A, "site-a2": CP_A, "site-b1": CP_B}
MARKET = Market(build.TZ, 15)


class OrderingDso(ShapeshifterDso):
    """The library's DSO, ordering every offer it accepts (an exact copy of option one).

    The library does not recognise a MessageID it has seen (an AGR's outbox sends a message
    again when it cannot know it arrived); a DSO must, so this one orders an offer once."""

    def process_flex_offer(self, message: Any) -> None:
        self._record("FlexOffer", message)
        seen: set[str] = self.__dict__.setdefault("_offers_seen", set())
        if message.message_id in seen:
            return
        seen.add(message.message_id)
        client = self.client(message.sender_domain)
        client.send_flex_offer_response(
            FlexOfferResponse(
                conversation_id=message.conversation_id,
                flex_offer_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )
        self.order(message)

    def order(self, message: Any, order_reference: str | None = None) -> None:
        """Order option one of the offer `message`, exactly as offered."""
        option = message.offer_options[0]
        self.client(message.sender_domain).send_flex_order(
            FlexOrder(
                conversation_id=message.conversation_id,
                flex_offer_message_id=message.message_id,
                isp_duration=message.isp_duration,
                time_zone=message.time_zone,
                period=message.period,
                congestion_point=message.congestion_point,
                isps=[
                    FlexOrderISP(power=i.power, start=i.start, duration=i.duration)
                    for i in option.isps
                ],
                price=option.price,
                currency=message.currency,
                order_reference=order_reference or f"ORD-{message.message_id[:8]}",
                option_reference=option.option_reference,
            )
        )


def config_text(
    *,
    dsn: str,
    key_file: Path,
    port: int,
    dso_key: SigningKey,
    dso_port: int,
    sites: dict[str, str] | None = None,
    http_port: int | None = None,
    reassign_lead_s: int = 600,
    revocation_interval_s: int = 60,
) -> str:
    listed = "\n".join(
        f'[[sites]]\nid = "{site}"\ncongestion_point = "{cp}"\n'
        for site, cp in (SITES if sites is None else sites).items()
    )
    http = (
        f"[http]\nenabled = true\nport = {http_port}\n"
        if http_port
        else "[http]\nenabled = false\n"
    )
    return f"""
[uftp]
domain = "{build.AGR}"
signing_key_file = "{key_file}"
host = "127.0.0.1"
port = {port}

[[uftp.peers]]
domain = "{build.DSO}"
role = "DSO"
public_keys = ["{keys.public_key_b64(dso_key)}"]
endpoint = "{build.url(dso_port)}"

[database]
dsn = "{dsn}"

[nats]
servers = ["nats://127.0.0.1:4222"]
password = "unused-with-the-in-memory-bus"

[[congestion_points]]
entity_address = "{CP_A}"
dso_domain = "{build.DSO}"

[[congestion_points]]
entity_address = "{CP_B}"
dso_domain = "{build.DSO}"

{listed}
[[metering]]
congestion_point = "{CP_A}"
ean = "E1234567890123456"

[trading]
reassign_lead_s = {reassign_lead_s}
revocation_interval_s = {revocation_interval_s}

{http}
"""


@dataclass
class Fleet:
    """One database, one DSO, the aggregator processes started on them."""

    tmp_path: Path
    dsn: str
    agr_key: SigningKey
    dso_key: SigningKey
    dso: OrderingDso
    dso_port: int
    bus: FakeBus = field(default_factory=FakeBus)
    aggregators: list[Aggregator] = field(default_factory=list)

    def config(self, port: int = 0, **kwargs: Any) -> CentralConfig:
        key_file = self.tmp_path / "agr.key"
        if not key_file.exists():
            keys.write_signing_key(key_file, self.agr_key)
        return parse_central_config(
            config_text(
                dsn=self.dsn,
                key_file=key_file,
                port=port or free_port(),
                dso_key=self.dso_key,
                dso_port=self.dso_port,
                **kwargs,
            ),
            environ={},
        )

    async def start_aggregator(
        self, clock: Callable[[], datetime] = utc_now, **kwargs: Any
    ) -> Aggregator:
        aggregator = build_aggregator(self.config(**kwargs), self.bus, clock=clock, poll_s=0.2)
        for component in aggregator.components:
            await component.start()
        self.aggregators.append(aggregator)
        return aggregator

    async def stop(self) -> None:
        for aggregator in reversed(self.aggregators):
            for component in reversed(aggregator.components):
                await component.stop()
        self.aggregators.clear()

    def tomorrow(self) -> date:
        return MARKET.today(utc_now()) + timedelta(days=1)

    async def push_flex(
        self,
        sites: Sequence[str] = tuple(SITES),
        *,
        baseline_w: float = 6_000,
        min_w: float = 2_000,
        max_w: float = 8_000,
        period: date | None = None,
        valid_for: timedelta = timedelta(hours=12),
    ) -> None:
        """Every site pushes its envelope for the whole of `period` (tomorrow)."""
        period = period or self.tomorrow()
        isps = MARKET.isps(period)
        now = utc_now()
        for site in sites:
            await self.bus.send_up(
                protocol.Flex(
                    id=f"{site}-flex-{now.timestamp()}",
                    site=site,
                    sent_at=now,
                    start=isps[0].start,
                    congestion_point=SITES[site],
                    made_at=now,
                    valid_until=now + valid_for,
                    baseline_w=[baseline_w] * len(isps),
                    min_w=[min_w] * len(isps),
                    max_w=[max_w] * len(isps),
                )
            )


async def eventually(predicate: Any, timeout_s: float = 20.0, what: str = "") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def dso_fleet(
    tmp_path: Path, server: PostgresServer, dso_class: type[OrderingDso] = OrderingDso
) -> AsyncIterator[Fleet]:
    """A `Fleet` whose DSO (a shapeshifter-uftp participant of `dso_class`) runs in a thread
    on a free port, the aggregator's port reserved for it as `agr_port`."""
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    dso_port = free_port()
    agr_port = free_port()
    dso = dso_class(
        build.DSO,
        dso_key,
        port=dso_port,
        peer_keys={(build.AGR, "AGR"): keys.public_key_b64(agr_key)},
        peer_endpoints={(build.AGR, "AGR"): build.url(agr_port)},
    )
    await asyncio.to_thread(dso.run_in_thread)
    state = Fleet(tmp_path, server.dsn("flexbridge"), agr_key, dso_key, dso, dso_port)
    state.agr_port = agr_port  # type: ignore[attr-defined]
    try:
        yield state
    finally:
        await state.stop()
        await asyncio.to_thread(dso.stop)


@pytest.fixture
async def fleet(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Fleet]:  # noqa: F811
    async with dso_fleet(tmp_path, postgres) as state:
        yield state
