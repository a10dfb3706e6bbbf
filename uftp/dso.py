"""A simulated DSO: enough of the DSO role to drive every AGR use case in tests and the demo.

It sends FlexRequest, FlexOrder, FlexReservationUpdate and FlexSettlement (plain `send`, plus
`order_offer` to order an offer exactly as offered or partially activated, and `settle` to settle
orders from its own metering, as the DSO does in UFTP's settle phase), and validates and
answers what an AGR sends it: D-Prognosis (lacking ISPs, revisions), FlexOffer (request
reference, request mismatch, power bounds, expiry, MutEx), FlexOfferRevocation (flexibility
procured) and Metering. Its memory is uftp's own inbox and outbox, so it survives restarts.

Every handled message becomes a `Received` outcome (`wait_handled`), which is how tests and the
demo follow the conversation.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar

from uftp import calendar, store
from uftp.database import SqliteStore
from uftp.models import (
    ContractSettlement,
    ContractSettlementISP,
    ContractSettlementPeriod,
    DPrognosis,
    FlexOffer,
    FlexOfferRevocation,
    FlexOrder,
    FlexOrderSettlement,
    FlexOrderSettlementISP,
    FlexRequest,
    FlexSettlement,
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


class SettlementError(ValueError):
    """An order cannot be settled from the data given (an ISP without baseline or measurement)."""


def prognosis_power(prognosis: DPrognosis) -> dict[int, int]:
    """The power a D-Prognosis states per ISP index: the baseline an order refers to."""
    return calendar.expand_runs((i.start, i.duration, i.power) for i in prognosis.isps)


def power_deficiency(ordered_w: int, delivered_w: int) -> int:
    """UFTP PowerDeficiency, "flex power sold but not delivered": the part of the ordered change
    that did not happen, counted in the ordered direction. Delivering more than ordered is no
    deficiency, and no ISP can fall short by more than was sold in it."""
    short = delivered_w - ordered_w if ordered_w < 0 else ordered_w - delivered_w
    return min(abs(ordered_w), max(0, short))


def settle_order(
    order: FlexOrder,
    baseline_w: Mapping[int, int],
    actual_w: Mapping[int, int],
    *,
    penalty: Decimal = Decimal(0),
) -> FlexOrderSettlement:
    """The settlement item of one order, one element per ordered ISP.

    `baseline_w` is the power of the D-Prognosis the order refers to and `actual_w` what the DSO
    measured and allocated to the AGR, both per ISP index; the delivered flexibility is their
    difference. Raises SettlementError for an ordered ISP that either lacks: a DSO cannot settle
    what it did not measure, and must not settle it as zero.
    """
    ordered = calendar.expand_runs((i.start, i.duration, i.power) for i in order.isps)
    for name, data in (("baseline", baseline_w), ("measurement", actual_w)):
        missing = sorted(set(ordered) - set(data))
        if missing:
            raise SettlementError(
                f"order {order.order_reference}: no {name} for ISP(s) "
                + ", ".join(map(str, missing[:10]))
            )
    items = []
    for index, flex in sorted(ordered.items()):
        delivered = actual_w[index] - baseline_w[index]
        items.append(
            FlexOrderSettlementISP(
                start=index,
                baseline_power=baseline_w[index],
                ordered_flex_power=flex,
                actual_power=actual_w[index],
                delivered_flex_power=delivered,
                power_deficiency=power_deficiency(flex, delivered),
            )
        )
    return FlexOrderSettlement(
        order_reference=order.order_reference,
        period=order.period,
        contract_id=order.contract_id,
        d_prognosis_message_id=order.d_prognosis_message_id,
        baseline_reference=order.baseline_reference,
        congestion_point=order.congestion_point,
        price=order.price,
        penalty=penalty,
        net_settlement=order.price - penalty,
        isps=tuple(items),
    )


@dataclass(frozen=True)
class OrderOutcome:
    """What the DSO settles one order on (see `settle_order`)."""

    order: FlexOrder
    baseline_w: Mapping[int, int]
    actual_w: Mapping[int, int]
    penalty: Decimal = Decimal(0)


def flex_settlement(
    outcomes: Sequence[OrderOutcome],
    *,
    period_start: date | None = None,
    period_end: date | None = None,
    time_stamp: datetime | None = None,
) -> FlexSettlement:
    """The FlexSettlement of orders to one AGR, over their days unless a period is given.

    The 3.1.0 schema needs at least one ContractSettlement: one per contract the orders name
    (or none named), with nothing reserved, as this DSO settles no reservations.
    """
    if not outcomes:
        raise SettlementError("a FlexSettlement needs at least one order")
    orders = [o.order for o in outcomes]
    for attribute in ("sender_domain", "recipient_domain", "currency"):
        values = {getattr(o, attribute) for o in orders}
        if len(values) > 1:
            raise SettlementError(f"the orders differ in {attribute}: {sorted(values)}")
    days = sorted({o.period for o in orders})
    start = period_start or days[0]
    end = period_end or days[-1]
    outside = [o.order_reference for o in orders if not start <= o.period <= end]
    if outside:
        raise SettlementError(f"order(s) {', '.join(outside)} outside {start}..{end}")
    contracts: dict[str | None, list[date]] = {}
    for order in orders:
        periods = contracts.setdefault(order.contract_id, [])
        if order.period not in periods:
            periods.append(order.period)
    extra: dict[str, Any] = {} if time_stamp is None else {"time_stamp": time_stamp}
    return FlexSettlement(
        sender_domain=orders[0].sender_domain,
        recipient_domain=orders[0].recipient_domain,
        period_start=start,
        period_end=end,
        currency=orders[0].currency,
        flex_order_settlements=tuple(
            settle_order(o.order, o.baseline_w, o.actual_w, penalty=o.penalty) for o in outcomes
        ),
        contract_settlements=tuple(
            ContractSettlement(
                contract_id=contract_id,
                periods=tuple(
                    ContractSettlementPeriod(
                        period=day, isps=(ContractSettlementISP(start=1, reserved_power=0),)
                    )
                    for day in sorted(periods)
                ),
            )
            for contract_id, periods in contracts.items()
        ),
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

    async def baseline_of(self, order: FlexOrder) -> dict[int, int] | None:
        """The power per ISP of the D-Prognosis the order refers to, as this DSO received it
        from the AGR; None when the order names none or it never came."""
        message_id = order.d_prognosis_message_id
        if message_id is None:
            return None
        row = await self.database.read(
            lambda c: store.find_inbound(c, message_id, order.recipient_domain)
        )
        prognosis = None if row is None else row.message()
        return prognosis_power(prognosis) if isinstance(prognosis, DPrognosis) else None

    async def settle(
        self,
        outcomes: Sequence[OrderOutcome],
        *,
        period_start: date | None = None,
        period_end: date | None = None,
    ) -> FlexSettlement:
        """Send the FlexSettlement of these orders (see `flex_settlement`)."""
        settlement = flex_settlement(
            outcomes, period_start=period_start, period_end=period_end, time_stamp=self.now()
        )
        await self.send(settlement)
        return settlement
