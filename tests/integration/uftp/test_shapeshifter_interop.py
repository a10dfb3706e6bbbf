"""Interop with shapeshifter-uftp 2.4.0 as the DSO, over real HTTP on loopback, both ways.

Our messages must be accepted (parsed and answered Accepted) by the library; the library's
messages must pass our strict validation (XSD, signature, generic checks) and be answered.
Exchanged: D-Prognosis/Response, FlexRequest/Response, FlexOffer/Response, FlexOrder/Response,
FlexOfferRevocation/Response, Metering/Response, TestMessage/Response in both directions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from shapeshifter_uftp import FlexRequest as LibFlexRequest
from shapeshifter_uftp import FlexRequestISP as LibFlexRequestISP
from shapeshifter_uftp import TestMessage as LibTestMessage
from shapeshifter_uftp.uftp.enums import AvailableRequested as LibAvailableRequested
from xsdata.models.datatype import XmlDate

from tests.support import uftp as build
from tests.support.ports import free_port
from tests.support.shapeshifter_peer import ShapeshifterDso
from tests.support.uftp import eventually
from uftp import calendar, codec, keys, models, store
from uftp.participant import AgrParticipant

pytestmark = pytest.mark.integration


@dataclass
class Interop:
    agr: AgrParticipant
    dso: ShapeshifterDso

    def tomorrow(self) -> Any:
        return calendar.today(build.TZ, self.agr.now()) + timedelta(days=1)

    async def handled(self, kind: type[models.PayloadMessage]) -> tuple[Any, list[str]]:
        outcome = await self.agr.wait_handled(lambda o: isinstance(o[0], kind), wait_s=15)  # type: ignore[index]
        assert isinstance(outcome, tuple)
        return outcome

    async def inbox(self) -> list[store.InboundMessage]:
        return await self.agr.database.read(lambda c: store.inbound_messages(c))


@pytest.fixture
async def interop(tmp_path: Path) -> AsyncIterator[Interop]:
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    agr_port, dso_port = free_port(), free_port()
    dso = ShapeshifterDso(
        build.DSO,
        dso_key,
        port=dso_port,
        peer_keys={(build.AGR, "AGR"): keys.public_key_b64(agr_key)},
        peer_endpoints={(build.AGR, "AGR"): build.url(agr_port)},
    )
    settings = build.settings(
        build.AGR,
        models.Role.AGR,
        agr_key,
        agr_port,
        [build.peer(build.DSO, models.Role.DSO, dso_key, dso_port)],
        congestion_points=frozenset({build.CONGESTION_POINT}),
    )
    participants: list[AgrParticipant] = []
    # The agent's part, reduced to protocol checks.
    handler = build.agr_handler(lambda: participants[0])
    agr = AgrParticipant(settings, tmp_path / "agr.sqlite", handler=handler)
    participants.append(agr)
    await agr.start()
    await asyncio.to_thread(dso.run_in_thread)
    try:
        yield Interop(agr, dso)
    finally:
        await asyncio.to_thread(dso.stop)
        await agr.stop()


async def assert_nothing_rejected(interop: Interop) -> None:
    """Everything the library sent passed our strict validation."""
    inbox = await interop.inbox()
    rejected = [
        (m.message_type, m.rejection_reason)
        for m in inbox
        if m.status is store.InboundStatus.REJECTED
    ]
    assert rejected == []


async def test_d_prognosis_accepted_by_the_library(interop: Interop) -> None:
    prognosis = build.d_prognosis(
        interop.agr.now(), time_stamp=interop.agr.now(), period=interop.tomorrow()
    )
    await interop.agr.send(prognosis)
    received = await asyncio.to_thread(interop.dso.wait_for, "DPrognosis")
    assert received.message_id == prognosis.message_id
    assert [(i.power, i.start) for i in received.isps] == [
        (i.power, i.start) for i in prognosis.isps
    ]
    response, rejections = await interop.handled(models.DPrognosisResponse)
    assert rejections == []
    assert response.accepted
    assert response.d_prognosis_message_id == prognosis.message_id
    await assert_nothing_rejected(interop)


async def test_flex_request_offer_order_conversation(interop: Interop) -> None:
    now = interop.agr.now()
    request = LibFlexRequest(
        isp_duration="PT15M",
        time_zone=build.TZ,
        period=XmlDate.from_date(interop.tomorrow()),
        congestion_point=build.CONGESTION_POINT,
        revision=1,
        expiration_date_time=(now + timedelta(hours=2)).isoformat(),
        isps=[
            LibFlexRequestISP(
                disposition=LibAvailableRequested.AVAILABLE,
                min_power=0,
                max_power=20000,
                start=1,
                duration=68,
            ),
            LibFlexRequestISP(
                disposition=LibAvailableRequested.REQUESTED,
                min_power=-50000,
                max_power=-6000,
                start=69,
                duration=4,
            ),
        ],
    )
    await asyncio.to_thread(interop.dso.client(build.AGR).send_flex_request, request)

    # The library's FlexRequest passes our checks and we answer Accepted.
    ours, rejections = await interop.handled(models.FlexRequest)
    assert rejections == []
    assert ours.isps[1].requested
    assert ours.isps[1].max_power == -6000
    answer = await asyncio.to_thread(interop.dso.wait_for, "FlexRequestResponse")
    assert answer.result == "Accepted"
    assert answer.flex_request_message_id == ours.message_id

    # Our FlexOffer, in the request's granularity, is accepted and ordered.
    offer = build.flex_offer(
        ours,
        now,
        time_stamp=now,
        expiration_date_time=now + timedelta(hours=1),
        offer_options=[
            models.FlexOfferOption(
                option_reference="order-A",
                price=Decimal("12.5"),
                isps=[models.PowerISP(power=-8000, start=69, duration=4)],
            )
        ],
    )
    await interop.agr.send(offer)
    got_offer = await asyncio.to_thread(interop.dso.wait_for, "FlexOffer")
    assert got_offer.message_id == offer.message_id
    assert got_offer.offer_options[0].price == Decimal("12.5")
    offer_response, rejections = await interop.handled(models.FlexOfferResponse)
    assert rejections == []
    assert offer_response.accepted

    order, rejections = await interop.handled(models.FlexOrder)
    # An exact copy of the option: it passes the ISP, power and price checks.
    assert rejections == []
    assert order.flex_offer_message_id == offer.message_id
    order_answer = await asyncio.to_thread(interop.dso.wait_for, "FlexOrderResponse")
    assert order_answer.result == "Accepted"
    assert order_answer.flex_order_message_id == order.message_id
    await assert_nothing_rejected(interop)


async def test_offer_revocation_accepted_by_the_library(interop: Interop) -> None:
    now = interop.agr.now()
    request = build.flex_request(now, time_stamp=now, period=interop.tomorrow())
    offer = build.flex_offer(
        request,
        now,
        time_stamp=now,
        flex_request_message_id=None,
        unsolicited=True,
        expiration_date_time=now + timedelta(hours=1),
    )
    await interop.agr.send(offer)
    response, _ = await interop.handled(models.FlexOfferResponse)
    assert response.accepted  # revoke only after the DSO acknowledged the offer
    revocation = models.FlexOfferRevocation(
        sender_domain=build.AGR,
        recipient_domain=build.DSO,
        conversation_id=offer.conversation_id,
        flex_offer_message_id=offer.message_id,
    )
    await interop.agr.send(revocation)
    got = await asyncio.to_thread(interop.dso.wait_for, "FlexOfferRevocation")
    assert got.flex_offer_message_id == offer.message_id
    answer, rejections = await interop.handled(models.FlexOfferRevocationResponse)
    assert rejections == []
    assert answer.accepted
    await assert_nothing_rejected(interop)


async def test_metering_accepted_by_the_library(interop: Interop) -> None:
    now = interop.agr.now()
    yesterday = calendar.today(build.TZ, now) - timedelta(days=1)
    metering = build.metering(now, time_stamp=now, period=yesterday)
    metering = models.with_fields(
        metering,
        profiles=[
            models.with_fields(
                metering.profiles[0],
                isps=[
                    models.MeteringISP(start=i, value=Decimal("1.5"))
                    for i in range(1, calendar.isp_count(yesterday, build.TZ, 15) + 1)
                ],
            )
        ],
    )
    await interop.agr.send(metering)
    got = await asyncio.to_thread(interop.dso.wait_for, "Metering")
    assert got.ean == metering.ean
    answer, rejections = await interop.handled(models.MeteringResponse)
    assert rejections == []
    assert answer.accepted


async def test_test_messages_both_ways(interop: Interop) -> None:
    ours = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
    await interop.agr.send(ours)
    await asyncio.to_thread(interop.dso.wait_for, "TestMessage")

    # The library's TestMessageResponse carries Result (not in 3.1.0): tolerated, not rejected.
    async def response_stored() -> store.InboundMessage | None:
        found = [m for m in await interop.inbox() if m.message_type == "TestMessageResponse"]
        return found[0] if found else None

    await eventually(response_stored, 15, "the TestMessageResponse stored")
    stored = await response_stored()
    assert stored is not None
    assert stored.status is store.InboundStatus.PROCESSED
    assert b"Result=" in stored.xml  # the peer's quirk, kept as received
    assert codec.from_xml(stored.xml).conversation_id == ours.conversation_id

    # The library's TestMessage is answered by our endpoint itself.
    theirs = LibTestMessage()
    await asyncio.to_thread(interop.dso.client(build.AGR).send_test_message, theirs)
    answer = await asyncio.to_thread(interop.dso.wait_for, "TestMessageResponse")
    assert answer.conversation_id == theirs.conversation_id
    await assert_nothing_rejected(interop)
