"""A simulated DSO: enough of the DSO role to drive every AGR use case in tests and the demo.

It sends FlexRequest, FlexOrder, FlexReservationUpdate and FlexSettlement (plain `send`, plus
`order_offer` to order an offer exactly as offered or partially activated), and validates and
answers what an AGR sends it: D-Prognosis (lacking ISPs, revisions), FlexOffer (request
reference, request mismatch, power bounds, expiry, MutEx), FlexOfferRevocation (flexibility
procured) and Metering. Its memory is uftp's own inbox and outbox, so it survives restarts.

Every handled message becomes a `Received` outcome (`wait_handled`), which is how tests and the
demo follow the conversation.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar

from uftp import store
from uftp.database import SqliteStore
from uftp.models import (
    DPrognosis,
    FlexOffer,
    FlexOfferRevocation,
    FlexOrder,
    FlexRequest,
    Metering,
    PayloadMessage,
    PowerISP,
    Role,
)
from uftp.participant import Participant
from uftp.responses import needs_response
from uftp.settings import ParticipantSettings
from uftp.validation import check_d_prognosis, check_flex_offer, check_flex_offer_revocation

M = TypeVar("M", bound=PayloadMessage)


@dataclass(frozen=True)
class Received:
    """One message the DSO handled and what it answered."""

    inbound: store.InboundMessage
    message: PayloadMessage
    rejections: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.rejections


def order_from_offer(
    offer: FlexOffer,
    *,
    option_reference: str | None = None,
    activation_factor: Decimal = Decimal("1.00"),
    order_reference: str | None = None,
    time_stamp: datetime | None = None,
) -> FlexOrder:
    """The FlexOrder for an offer option: its ISPs copied element by element (Start/Duration
    exactly as offered) and, with partial activation, powers and price scaled by the factor."""
    option = offer.option(option_reference) or offer.offer_options[0]
    factor = Decimal(activation_factor).quantize(Decimal("0.01"))
    isps = [
        PowerISP(
            power=int((Decimal(isp.power) * factor).to_integral_value(ROUND_HALF_UP)),
            start=isp.start,
            duration=isp.duration,
        )
        for isp in option.isps
    ]
    extra: dict[str, Any] = {} if time_stamp is None else {"time_stamp": time_stamp}
    return FlexOrder(
        sender_domain=offer.recipient_domain,
        recipient_domain=offer.sender_domain,
        conversation_id=offer.conversation_id,
        isp_duration=offer.isp_duration,
        time_zone=offer.time_zone,
        period=offer.period,
        congestion_point=offer.congestion_point,
        flex_offer_message_id=offer.message_id,
        contract_id=offer.contract_id,
        d_prognosis_message_id=offer.d_prognosis_message_id,
        baseline_reference=offer.baseline_reference,
        price=(option.price * factor).quantize(Decimal("0.0001"), ROUND_HALF_UP),
        currency=offer.currency,
        order_reference=order_reference or f"ORD-{uuid.uuid4().hex[:12]}",
        option_reference=option.option_reference,
        activation_factor=factor,
        isps=isps,
        **extra,
    )


class DsoParticipant(Participant):
    def __init__(
        self,
        settings: ParticipantSettings,
        database: Path | SqliteStore,
        *,
        mutex_offers_supported: bool = False,
        max_abs_power_w: int | None = None,
        **kwargs: Any,
    ) -> None:
        if settings.role is not Role.DSO:
            raise ValueError(f"a DsoParticipant needs role DSO, not {settings.role}")
        self.mutex_offers_supported = mutex_offers_supported
        self.max_abs_power_w = max_abs_power_w
        super().__init__(settings, database, handler=self._handle, **kwargs)

    # --- inbound ----------------------------------------------------------------------------------

    def _handle(self, conn: sqlite3.Connection, inbound: store.InboundMessage) -> Received:
        message = inbound.message()
        now = self.now()
        rejections: list[str] = []
        if isinstance(message, DPrognosis):
            rejections = check_d_prognosis(
                message,
                previous_revision=self._latest_revision(conn, message),
                max_abs_power_w=self.max_abs_power_w,
            )
        elif isinstance(message, FlexOffer):
            request = None
            if message.flex_request_message_id is not None:
                request = self._sent(conn, message.flex_request_message_id, FlexRequest)
            rejections = check_flex_offer(
                message, request, now, mutex_offers_supported=self.mutex_offers_supported
            )
        elif isinstance(message, FlexOfferRevocation):
            offer = self._accepted_offer(conn, message.flex_offer_message_id, message.sender_domain)
            rejections = check_flex_offer_revocation(
                message, offer, ordered=self.offer_ordered(conn, message.flex_offer_message_id)
            )
        elif isinstance(message, Metering):
            rejections = []
        if needs_response(message):
            self.respond(conn, inbound, rejections, request=message)
        else:
            self.mark_processed(conn, inbound)
        return Received(inbound, message, tuple(rejections))

    def _latest_revision(self, conn: sqlite3.Connection, prognosis: DPrognosis) -> int | None:
        revisions = [
            m.revision
            for row in store.inbound_messages(
                conn, message_type=DPrognosis.xml_name, status=store.InboundStatus.PROCESSED
            )
            if row.sender_domain == prognosis.sender_domain
            and isinstance(m := row.message(), DPrognosis)
            and m.congestion_point == prognosis.congestion_point
            and m.period == prognosis.period
        ]
        return max(revisions, default=None)

    @staticmethod
    def _sent(conn: sqlite3.Connection, message_id: str, kind: type[M]) -> M | None:
        row = store.find_outbound(conn, message_id)
        if row is None or row.message_type != kind.xml_name:
            return None
        message = row.message()
        return message if isinstance(message, kind) else None

    @staticmethod
    def _accepted_offer(
        conn: sqlite3.Connection, message_id: str, sender_domain: str
    ) -> FlexOffer | None:
        row = store.find_inbound(conn, message_id, sender_domain)
        if row is None or row.status is not store.InboundStatus.PROCESSED:
            return None
        offer = row.message()
        return offer if isinstance(offer, FlexOffer) else None

    @staticmethod
    def offer_ordered(conn: sqlite3.Connection, offer_message_id: str) -> bool:
        return bool(
            store.outbound_messages(
                conn, message_type=FlexOrder.xml_name, reference_id=offer_message_id
            )
        )

    # --- outbound ---------------------------------------------------------------------------------

    async def order_offer(
        self,
        offer: FlexOffer,
        *,
        option_reference: str | None = None,
        activation_factor: Decimal = Decimal("1.00"),
        order_reference: str | None = None,
    ) -> FlexOrder:
        order = order_from_offer(
            offer,
            option_reference=option_reference,
            activation_factor=activation_factor,
            order_reference=order_reference,
            time_stamp=self.now(),
        )
        await self.send(order)
        return order
