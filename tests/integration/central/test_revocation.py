"""The aggregator revokes an open offer its sites can no longer deliver: shapeshifter-uftp 2.4.0
as the DSO over real HTTP, the aggregator on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from shapeshifter_uftp import AcceptedRejected, FlexOfferResponse

from agent.central import db
from tests.integration.central.conftest import Fleet, OrderingDso, dso_fleet, eventually
from tests.integration.central.test_trading_round_trip import library_request
from tests.support import uftp as build
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


class HoldingDso(OrderingDso):
    """A DSO that accepts every offer and orders one only when the test says so (`order`)."""

    offer_result = AcceptedRejected.ACCEPTED
    offer_rejection_reason: str | None = None

    def process_flex_offer(self, message: Any) -> None:
        self._record("FlexOffer", message)
        self.client(message.sender_domain).send_flex_offer_response(
            FlexOfferResponse(
                conversation_id=message.conversation_id,
                flex_offer_message_id=message.message_id,
                result=self.offer_result,
                rejection_reason=self.offer_rejection_reason,
            )
        )


class RejectingDso(HoldingDso):
    """A DSO that turns every offer down in its FlexOfferResponse (and may order it later)."""

    offer_result = AcceptedRejected.REJECTED
    offer_rejection_reason = "Not needed"


@pytest.fixture
async def holding(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Fleet]:
    async with dso_fleet(tmp_path, postgres, HoldingDso) as fleet:
        yield fleet


@pytest.fixture
async def rejecting(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Fleet]:
    async with dso_fleet(tmp_path, postgres, RejectingDso) as fleet:
        yield fleet


async def offer_made(fleet: Fleet) -> Any:
    """Both CP_A sites can go from 6 kW down to 2 kW: 8 kW offered in ISPs 69-72 tomorrow."""
    await fleet.push_flex()
    await eventually(lambda: fleet.bus.acked() == 3, what="the three envelopes recorded")
    client = fleet.dso.client(build.AGR)
    await asyncio.to_thread(client.send_flex_request, library_request(fleet.tomorrow()))
    offer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOffer")
    assert [(i.start, i.duration, i.power) for i in offer.offer_options[0].isps] == [(69, 4, -8000)]
    return offer


async def offer_status(fleet: Fleet, message_id: str) -> tuple[Any, ...] | None:
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
        cursor = await conn.execute(
            "SELECT status, revocation_message_id, revocation_note FROM flex_offer "
            "WHERE message_id = %s",
            (message_id,),
        )
        return await cursor.fetchone()


async def revocation_step(fleet: Fleet) -> int:
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            return await fleet.aggregators[0].trader.revocation_step(conn)
    finally:
        await session.close()


def revocations(fleet: Fleet) -> list[Any]:
    return [m for kind, m in fleet.dso.all_received if kind == "FlexOfferRevocation"]


async def test_a_shrunk_envelope_revokes_the_offer_once_and_its_order_is_refused(
    holding: Fleet,
) -> None:
    fleet = holding
    await fleet.start_aggregator(port=fleet.agr_port, revocation_interval_s=5)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)
    # Each site can now go down by 1 kW only: 2 kW of the 8 kW offered.
    await fleet.push_flex(["site-a1", "site-a2"], min_w=5_000)
    await eventually(lambda: fleet.bus.acked() == 5, what="the smaller envelopes recorded")

    revocation = await asyncio.to_thread(fleet.dso.wait_for, "FlexOfferRevocation", 20.0)
    assert revocation.flex_offer_message_id == offer.message_id
    assert revocation.conversation_id == offer.conversation_id
    row = await offer_status(fleet, offer.message_id)
    assert row is not None
    assert row[:2] == ("revoked", revocation.message_id)
    assert "2000 W of 8000 W" in row[2]

    await asyncio.to_thread(fleet.dso.order, offer)
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    assert answer.result == "Rejected"
    assert answer.rejection_reason.startswith("Reference message revoked")
    assert await revocation_step(fleet) == 0  # already revoked
    assert fleet.bus.commands() == []
    assert len(revocations(fleet)) == 1


async def test_sites_gone_silent_revoke_the_offer(holding: Fleet) -> None:
    fleet = holding
    clock = build.Clock()
    await fleet.start_aggregator(clock=clock, port=fleet.agr_port)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)
    assert await revocation_step(fleet) == 0  # the sites were heard from just now
    clock.offset += timedelta(seconds=181)  # offline_after_s = 180: no word from either since
    assert await revocation_step(fleet) == 1
    fleet.aggregators[0].uftp.wake_outbox()
    revocation = await asyncio.to_thread(fleet.dso.wait_for, "FlexOfferRevocation")
    assert revocation.flex_offer_message_id == offer.message_id
    assert await revocation_step(fleet) == 0
    assert len(revocations(fleet)) == 1


async def test_an_ordered_offer_is_never_revoked(holding: Fleet) -> None:
    fleet = holding
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)
    await asyncio.to_thread(fleet.dso.order, offer)
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    assert answer.result == "Accepted", answer.rejection_reason
    await fleet.push_flex(["site-a1", "site-a2"], min_w=6_000)  # no room left at all
    await eventually(lambda: fleet.bus.acked() == 5, what="the empty envelopes recorded")
    assert await revocation_step(fleet) == 0
    row = await offer_status(fleet, offer.message_id)
    assert row == ("ordered", None, None)
    assert revocations(fleet) == []


async def test_an_order_holding_the_offer_wins_over_the_revocation(holding: Fleet) -> None:
    """An order handled while the step runs holds the offer's row (`_offer_for_order` locks it):
    the step passes the offer by, and once the order commits it is ordered, not revoked."""
    fleet = holding
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)
    await fleet.push_flex(["site-a1", "site-a2"], min_w=6_000)
    await eventually(lambda: fleet.bus.acked() == 5, what="the empty envelopes recorded")
    order_side = await psycopg.AsyncConnection.connect(fleet.dsn)
    async with order_side, order_side.transaction():
        await order_side.execute(
            "SELECT status FROM flex_offer WHERE message_id = %s FOR UPDATE",
            (offer.message_id,),
        )
        assert await revocation_step(fleet) == 0
        await order_side.execute(
            "UPDATE flex_offer SET status = 'ordered' WHERE message_id = %s",
            (offer.message_id,),
        )
    assert await revocation_step(fleet) == 0
    assert await offer_status(fleet, offer.message_id) == ("ordered", None, None)


async def test_an_order_arriving_during_the_revocation_waits_and_is_refused(
    holding: Fleet,
) -> None:
    fleet = holding
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)
    await fleet.push_flex(["site-a1", "site-a2"], min_w=6_000)
    await eventually(lambda: fleet.bus.acked() == 5, what="the empty envelopes recorded")
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            assert await fleet.aggregators[0].trader.revocation_step(conn) == 1
            await asyncio.to_thread(fleet.dso.order, offer)

            async def order_waits() -> bool:
                async with await psycopg.AsyncConnection.connect(fleet.dsn) as watcher:
                    cursor = await watcher.execute(
                        "SELECT count(*) FROM pg_locks "
                        "WHERE NOT granted AND locktype = 'transactionid'"
                    )
                    row = await cursor.fetchone()
                    return row is not None and row[0] > 0

            await eventually(order_waits, what="the order's handler waiting for the offer's row")
    finally:
        await session.close()
    fleet.aggregators[0].uftp.wake_outbox()
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    assert answer.result == "Rejected"
    assert answer.rejection_reason.startswith("Reference message revoked")
    await eventually(lambda: revocations(fleet), what="the revocation at the DSO")
    assert [r.flex_offer_message_id for r in revocations(fleet)] == [offer.message_id]
    assert (await offer_status(fleet, offer.message_id) or ("",))[0] == "revoked"


async def test_of_two_offers_the_newer_is_revoked_and_frees_the_older(holding: Fleet) -> None:
    fleet = holding
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    await fleet.push_flex()  # 8 kW of room at CP_A
    await eventually(lambda: fleet.bus.acked() == 3, what="the three envelopes recorded")
    client = fleet.dso.client(build.AGR)
    offers = []
    for revision in (1, 2):
        request = library_request(fleet.tomorrow(), -4000, -3000)
        request.revision = revision
        await asyncio.to_thread(client.send_flex_request, request)
        offers.append(await asyncio.to_thread(fleet.dso.wait_for, "FlexOffer"))
    assert [o.offer_options[0].isps[0].power for o in offers] == [-4000, -4000]
    # 4 kW of room left: enough for one of the two.
    await fleet.push_flex(["site-a1", "site-a2"], min_w=4_000)
    await eventually(lambda: fleet.bus.acked() == 5, what="the smaller envelopes recorded")
    assert await revocation_step(fleet) == 1
    assert await revocation_step(fleet) == 0
    older = await offer_status(fleet, offers[0].message_id)
    newer = await offer_status(fleet, offers[1].message_id)
    assert older is not None
    assert newer is not None
    assert (older[0], newer[0]) == ("accepted", "revoked")


async def test_an_order_for_an_offer_the_dso_rejected_is_refused(rejecting: Fleet) -> None:
    fleet = rejecting
    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    offer = await offer_made(fleet)

    async def rejected() -> bool:
        row = await offer_status(fleet, offer.message_id)
        return row is not None and row[0] == "rejected"

    await eventually(rejected, what="the DSO's rejection recorded")
    await asyncio.to_thread(fleet.dso.order, offer)
    answer = await asyncio.to_thread(fleet.dso.wait_for, "FlexOrderResponse")
    assert answer.result == "Rejected"
    assert answer.rejection_reason.startswith("Invalid Message"), answer.rejection_reason
    assert "rejected by the DSO" in answer.rejection_reason
    assert fleet.bus.commands() == []
    assert await offer_status(fleet, offer.message_id) == ("rejected", None, None)
