"""Every AGR use case over real HTTP between our AGR and our simulated DSO (two participants,
two SQLite files, loopback sockets). The AGR application here is the protocol part of what the
agent does: validate with `uftp.validation`, answer with `respond`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.ports import free_port
from uftp import calendar, models, reasons, store
from uftp.dso import DsoParticipant, Received
from uftp.models import Role
from uftp.participant import AgrParticipant
from uftp.validation import (
    ReservationContract,
    SettledOrder,
    assess_flex_settlement,
    check_flex_order,
    check_flex_request,
    check_flex_reservation_update,
)

pytestmark = pytest.mark.integration


class AgrApp:
    """The AGR's business answers: what `agent.trading.trader` will do, minus forecasting."""

    def __init__(self) -> None:
        self.agr: AgrParticipant | None = None
        self.contract: ReservationContract | None = None

    def handle(
        self, conn: sqlite3.Connection, inbound: store.InboundMessage
    ) -> tuple[Any, list[str]]:
        agr = self.agr
        assert agr is not None
        message = inbound.message()
        now = agr.now()
        rejections: list[str] = []
        extra: dict[str, Any] = {}
        if isinstance(message, models.FlexRequest):
            rejections = check_flex_request(message, now)
        elif isinstance(message, models.FlexOrder):
            offer, state = agr.offer_for_order(conn, message)
            rejections = check_flex_order(message, offer, state, now)
        elif isinstance(message, models.FlexReservationUpdate):
            rejections = check_flex_reservation_update(message, self.contract, now)
        elif isinstance(message, models.FlexSettlement):
            assessment = assess_flex_settlement(
                message, self.accepted_orders(conn), calendar.today(build.TZ, now)
            )
            rejections = assessment.rejections
            extra["flex_order_settlement_statuses"] = assessment.statuses
        else:
            agr.mark_processed(conn, inbound)
            return message, []
        agr.respond(conn, inbound, rejections, request=message, **extra)
        return message, rejections

    @staticmethod
    def accepted_orders(conn: sqlite3.Connection) -> list[SettledOrder]:
        orders = []
        for row in store.inbound_messages(conn, message_type="FlexOrder"):
            answers = store.outbound_messages(
                conn, message_type="FlexOrderResponse", reference_id=row.message_id
            )
            if any(a.result == "Accepted" for a in answers):
                order = row.message()
                assert isinstance(order, models.FlexOrder)
                power = calendar.expand_runs((i.start, i.duration, i.power) for i in order.isps)
                orders.append(
                    SettledOrder(
                        order.order_reference,
                        order.period,
                        order.congestion_point,
                        order.price,
                        power,
                    )
                )
        return orders


@dataclass
class Market:
    agr: AgrParticipant
    dso: DsoParticipant
    app: AgrApp
    clock: build.Clock

    def now(self) -> datetime:
        return self.clock()

    def tomorrow(self) -> date:
        return calendar.today(build.TZ, self.now()) + timedelta(days=1)

    async def agr_outcome(self, kind: type[models.PayloadMessage]) -> tuple[Any, list[str]]:
        outcome = await self.agr.wait_handled(lambda o: isinstance(o[0], kind))  # type: ignore[index]
        assert isinstance(outcome, tuple)
        return outcome

    async def dso_outcome(
        self, kind: type[models.PayloadMessage], message_id: str | None = None
    ) -> Received:
        def matches(o: object) -> bool:
            return (
                isinstance(o, Received)
                and isinstance(o.message, kind)
                and (
                    message_id is None
                    or o.message.message_id == message_id
                    or getattr(o.message, getattr(o.message, "reference_field", ""), None)
                    == message_id
                )
            )

        outcome = await self.dso.wait_handled(matches)
        assert isinstance(outcome, Received)
        return outcome

    def request(self, **overrides: Any) -> models.FlexRequest:
        now = self.now()
        return build.flex_request(now, time_stamp=now, period=self.tomorrow(), **overrides)

    async def answer_reason(self, kind: type[models.PayloadMessage], message_id: str) -> str | None:
        """The spec reason of the AGR's answer to a DSO message (None when Accepted)."""
        answer = await self.dso_outcome(kind, message_id)
        assert isinstance(answer.message, models.PayloadMessageResponse)
        reason = answer.message.rejection_reason
        return None if reason is None else reasons.reason_of(reason)

    async def revoke(self, offer: models.FlexOffer) -> models.FlexOfferRevocation:
        revocation = models.FlexOfferRevocation(
            sender_domain=build.AGR,
            recipient_domain=build.DSO,
            time_stamp=self.now(),
            conversation_id=offer.conversation_id,
            flex_offer_message_id=offer.message_id,
        )
        await self.agr.send(revocation)
        return revocation

    async def requested_offer(self) -> models.FlexOffer:
        """The DSO requests, the AGR accepts the request and offers, the DSO accepts the offer."""
        request = self.request()
        await self.dso.send(request)
        await self.agr_outcome(models.FlexRequest)
        return await self.offer_for(request)

    async def offer_for(self, request: models.FlexRequest, **overrides: Any) -> models.FlexOffer:
        offer = build.flex_offer(request, self.now(), time_stamp=self.now(), **overrides)
        await self.agr.send(offer)
        answer = await self.dso_outcome(models.FlexOffer, offer.message_id)
        assert answer.accepted, answer.rejections
        response, _ = await self.agr_outcome(models.FlexOfferResponse)
        assert response.accepted
        return offer


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[Market]:
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    agr_port, dso_port = free_port(), free_port()
    clock, app = build.Clock(), AgrApp()
    agr = AgrParticipant(
        build.settings(
            build.AGR,
            Role.AGR,
            agr_key,
            agr_port,
            [build.peer(build.DSO, Role.DSO, dso_key, dso_port)],
            congestion_points=frozenset({build.CONGESTION_POINT}),
        ),
        tmp_path / "agr.sqlite",
        clock=clock,
        handler=app.handle,
    )
    app.agr = agr
    dso = DsoParticipant(
        build.settings(
            build.DSO,
            Role.DSO,
            dso_key,
            dso_port,
            [build.peer(build.AGR, Role.AGR, agr_key, agr_port)],
        ),
        tmp_path / "dso.sqlite",
        clock=clock,
        max_abs_power_w=1_000_000,
    )
    await agr.start()
    await dso.start()
    try:
        yield Market(agr, dso, app, clock)
    finally:
        await dso.stop()
        await agr.stop()


# --- Exchange D-Prognoses ------------------------------------------------------------------------


async def test_d_prognosis_revisions(market: Market) -> None:
    now = market.now()
    first = build.d_prognosis(now, time_stamp=now, period=market.tomorrow())
    await market.agr.send(first)
    assert (await market.dso_outcome(models.DPrognosis, first.message_id)).accepted
    response, _ = await market.agr_outcome(models.DPrognosisResponse)
    assert response.accepted

    same_revision = models.with_fields(first, message_id=models.new_message_id())
    await market.agr.send(same_revision)
    rejected = await market.dso_outcome(models.DPrognosis, same_revision.message_id)
    assert [reasons.reason_of(r) for r in rejected.rejections] == [
        reasons.SUBORDINATE_SEQUENCE_NUMBER
    ]

    second = models.with_fields(first, message_id=models.new_message_id(), revision=2)
    await market.agr.send(second)
    assert (await market.dso_outcome(models.DPrognosis, second.message_id)).accepted


async def test_d_prognosis_lacking_isps(market: Market) -> None:
    now = market.now()
    partial = build.d_prognosis(now, time_stamp=now, period=market.tomorrow(), powers=[100] * 90)
    await market.agr.send(partial)
    rejected = await market.dso_outcome(models.DPrognosis, partial.message_id)
    assert [reasons.reason_of(r) for r in rejected.rejections] == [reasons.LACKING_ISPS]
    response, _ = await market.agr_outcome(models.DPrognosisResponse)
    assert response.result is models.AcceptedRejected.REJECTED
    assert response.rejection_reason is not None
    assert response.rejection_reason.startswith(reasons.LACKING_ISPS)


# --- Exchange Flexibility Requests ---------------------------------------------------------------


async def test_flex_request_accepted_and_rejected(market: Market) -> None:
    good = market.request()
    await market.dso.send(good)
    assert (await market.agr_outcome(models.FlexRequest))[1] == []
    answer = await market.dso_outcome(models.FlexRequestResponse, good.message_id)
    assert isinstance(answer.message, models.FlexRequestResponse)
    assert answer.message.accepted

    bad = market.request(
        isps=[models.FlexRequestISP(disposition="Available", min_power=0, max_power=5000, start=69)]
    )
    await market.dso.send(bad)
    answer = await market.dso_outcome(models.FlexRequestResponse, bad.message_id)
    assert isinstance(answer.message, models.FlexRequestResponse)
    assert answer.message.rejection_reason is not None
    assert (
        reasons.reason_of(answer.message.rejection_reason) == reasons.LACKING_REQUESTED_DISPOSITION
    )


# --- Exchange Flexibility Offers and Orders -----------------------------------------------------


async def test_offer_and_full_order(market: Market) -> None:
    offer = await market.requested_offer()
    order = await market.dso.order_offer(offer, order_reference="ORD-FULL")
    _, rejections = await market.agr_outcome(models.FlexOrder)
    assert rejections == []
    answer = await market.dso_outcome(models.FlexOrderResponse, order.message_id)
    assert isinstance(answer.message, models.FlexOrderResponse)
    assert answer.message.accepted


async def test_partial_activation_and_ordering_twice(market: Market) -> None:
    offer = await market.requested_offer()  # MinActivationFactor 0.50
    order = await market.dso.order_offer(offer, activation_factor=Decimal("0.75"))
    assert order.isps[0].power == -6000
    assert order.price == Decimal("9.3750")
    _, rejections = await market.agr_outcome(models.FlexOrder)
    assert rejections == []

    again = await market.dso.order_offer(offer)
    assert (
        await market.answer_reason(models.FlexOrderResponse, again.message_id)
        == reasons.OFFER_ALREADY_ORDERED
    )


async def test_offer_in_the_wrong_granularity_is_a_request_mismatch(market: Market) -> None:
    request = market.request()
    await market.dso.send(request)
    await market.agr_outcome(models.FlexRequest)
    split = [
        models.FlexOfferOption(
            option_reference="A",
            price=Decimal("1"),
            isps=[models.PowerISP(power=-8000, start=i) for i in range(69, 73)],
        )
    ]
    offer = build.flex_offer(request, market.now(), time_stamp=market.now(), offer_options=split)
    await market.agr.send(offer)
    rejected = await market.dso_outcome(models.FlexOffer, offer.message_id)
    assert [reasons.reason_of(r) for r in rejected.rejections] == [reasons.REQUEST_MISMATCH]


# --- Revocation ---------------------------------------------------------------------------------


async def test_revocation_wins_over_a_crossing_order(market: Market) -> None:
    offer = await market.requested_offer()
    revocation = await market.revoke(offer)
    assert (await market.dso_outcome(models.FlexOfferRevocation, revocation.message_id)).accepted
    # The DSO orders anyway (the messages crossed): the AGR rejects it.
    order = await market.dso.order_offer(offer)
    assert (
        await market.answer_reason(models.FlexOrderResponse, order.message_id)
        == reasons.REFERENCE_MESSAGE_REVOKED
    )


async def test_revoking_an_ordered_offer_is_flexibility_procured(market: Market) -> None:
    offer = await market.requested_offer()
    await market.dso.order_offer(offer)
    await market.agr_outcome(models.FlexOrder)
    revocation = await market.revoke(offer)
    rejected = await market.dso_outcome(models.FlexOfferRevocation, revocation.message_id)
    assert [reasons.reason_of(r) for r in rejected.rejections] == [reasons.FLEXIBILITY_PROCURED]


# --- Flexibility reservation update -----------------------------------------------------------


async def test_flex_reservation_update(market: Market) -> None:
    market.app.contract = ReservationContract(
        "C-1", market.now() + timedelta(hours=1), dict.fromkeys(range(69, 73), -8000)
    )
    now = market.now()
    update = build.flex_reservation_update(now, time_stamp=now, period=market.tomorrow())
    await market.dso.send(update)
    answer = await market.dso_outcome(models.FlexReservationUpdateResponse, update.message_id)
    assert isinstance(answer.message, models.FlexReservationUpdateResponse)
    assert answer.message.accepted

    too_much = build.flex_reservation_update(
        now, time_stamp=now, period=market.tomorrow(), isps=[models.PowerISP(power=-9000, start=69)]
    )
    await market.dso.send(too_much)
    assert (
        await market.answer_reason(models.FlexReservationUpdateResponse, too_much.message_id)
        == reasons.POWER_VALUE_REJECTION
    )


# --- Settlement and metering --------------------------------------------------------------------


async def test_settlement_with_a_disputed_item(market: Market) -> None:
    offer = await market.requested_offer()
    order = await market.dso.order_offer(offer, order_reference="ORD-S1")
    await market.agr_outcome(models.FlexOrder)

    market.clock.offset = timedelta(days=3)  # the ordered day has passed
    now = market.now()
    settlement = build.flex_settlement([order], order.period, order.period, now, time_stamp=now)
    await market.dso.send(settlement)
    answer = await market.dso_outcome(models.FlexSettlementResponse, settlement.message_id)
    assert isinstance(answer.message, models.FlexSettlementResponse)
    assert answer.message.accepted
    assert [s.disposition for s in answer.message.flex_order_settlement_statuses] == [
        models.AcceptedDisputed.ACCEPTED
    ]

    item = settlement.flex_order_settlements[0]
    overpriced = models.with_fields(
        settlement,
        message_id=models.new_message_id(),
        flex_order_settlements=[
            models.with_fields(item, price=Decimal("20"), net_settlement=Decimal("20"))
        ],
    )
    await market.dso.send(overpriced)
    answer = await market.dso_outcome(models.FlexSettlementResponse, overpriced.message_id)
    assert isinstance(answer.message, models.FlexSettlementResponse)
    assert answer.message.accepted  # a dispute, not a rejection
    (status,) = answer.message.flex_order_settlement_statuses
    assert status.disposition is models.AcceptedDisputed.DISPUTED
    assert status.dispute_reason is not None
    assert "Price" in status.dispute_reason


async def test_metering(market: Market) -> None:
    now = market.now()
    yesterday = calendar.today(build.TZ, now) - timedelta(days=1)
    count = calendar.isp_count(yesterday, build.TZ, 15)
    profile = models.MeteringProfile(
        profile_type=models.MeteringProfileType.POWER,
        unit=models.MeteringUnit.KW,
        isps=[models.MeteringISP(start=i, value=Decimal("2.25")) for i in range(1, count + 1)],
    )
    metering = build.metering(now, time_stamp=now, period=yesterday, profiles=[profile])
    await market.agr.send(metering)
    assert (await market.dso_outcome(models.Metering, metering.message_id)).accepted
    response, _ = await market.agr_outcome(models.MeteringResponse)
    assert response.accepted


async def test_test_message_between_our_roles(market: Market) -> None:
    message = models.TestMessage(
        sender_domain=build.DSO, recipient_domain=build.AGR, time_stamp=market.now()
    )
    await market.dso.send(message)

    async def answered() -> list[store.InboundMessage]:
        return await market.dso.database.read(
            lambda c: store.inbound_messages(c, message_type="TestMessageResponse")
        )

    await build.eventually(answered)
    (answer,) = await answered()
    # The transport answers and files TestMessageResponses itself; the application never sees them.
    assert answer.status is store.InboundStatus.PROCESSED
    assert answer.message().conversation_id == message.conversation_id
