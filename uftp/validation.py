"""Message validation as pure functions: message (+ the state the caller passes) -> reasons.

Every function returns a list of rejection strings, empty when the message is acceptable. Each
string starts with the spec's RejectionReason text (`uftp.reasons`), optionally followed by
": explanation"; `reasons.join` makes one RejectionReason attribute of them.

- `check_inbound`: the generic checks every receiver performs after the signature verified and
  the XSD passed (the UFTP 3.1.0 specification's message validation, the
  steps after signature and schema).
- AGR use cases: `check_flex_request`, `check_flex_order` (against the offer and its state),
  `check_direct_flex_order`, `check_flex_reservation_update`, `assess_flex_settlement`
  (disputed items instead of rejection).
- DSO use cases (for the simulated DSO): `check_d_prognosis`, `check_flex_offer`,
  `check_flex_offer_revocation`.

No I/O, no clock: `now` is always a parameter.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from uftp import calendar, reasons
from uftp.calendar import CalendarError
from uftp.models import (
    AcceptedDisputed,
    AGRPortfolioQuery,
    AGRPortfolioQueryResponse,
    DPrognosis,
    DSOPortfolioQuery,
    DSOPortfolioQueryResponse,
    FlexMessage,
    FlexOffer,
    FlexOfferRevocation,
    FlexOrder,
    FlexOrderSettlementStatus,
    FlexRequest,
    FlexReservationUpdate,
    FlexSettlement,
    Metering,
    PayloadMessage,
    Role,
    SignedMessage,
    may_send,
)
from uftp.settings import MarketSettings

explain = reasons.explain

# A DSO rounds scaled values; anything closer than one unit of the last digit is the same value.
_POWER_TOLERANCE_W = 1
_PRICE_TOLERANCE = Decimal("0.0001")


@dataclass(frozen=True)
class InboundContext:
    """What the generic checks compare a message against."""

    own_domain: str
    own_role: Role
    market: MarketSettings
    supported_versions: frozenset[str]
    congestion_points: frozenset[str] | None = None
    period_horizon_days: int | None = None


# --- generic checks -----------------------------------------------------------------------------


def check_envelope(envelope: SignedMessage, message: PayloadMessage, own_role: Role) -> list[str]:
    """Inner sender equals the (authenticated) envelope sender; the role may send this type."""
    problems: list[str] = []
    if message.sender_domain != envelope.sender_domain:
        problems.append(
            explain(
                reasons.MISMATCH_SENDER_DOMAIN,
                f"envelope {envelope.sender_domain}, message {message.sender_domain}",
            )
        )
    if not may_send(envelope.sender_role, own_role, type(message)):
        problems.append(
            explain(
                reasons.INVALID_SENDER_ROLE,
                f"a {envelope.sender_role} does not send {message.xml_name} to a {own_role}",
            )
        )
    return problems


def check_metadata(message: PayloadMessage, ctx: InboundContext) -> list[str]:
    problems: list[str] = []
    if message.recipient_domain != ctx.own_domain:
        problems.append(
            explain(
                reasons.UNKNOWN_RECIPIENT_DOMAIN,
                f"{message.recipient_domain} is not {ctx.own_domain}",
            )
        )
    if message.version not in ctx.supported_versions:
        supported = ", ".join(sorted(ctx.supported_versions))
        problems.append(
            explain(
                reasons.UNSUPPORTED_VERSION,
                f"Version {message.version}; this endpoint speaks {supported}",
            )
        )
    return problems


def _calendar_problems(
    isp_duration: timedelta, time_zone: str, period: date, market: MarketSettings
) -> list[str]:
    problems: list[str] = []
    minutes = isp_duration.total_seconds() / 60
    if minutes != market.isp_minutes:
        problems.append(
            explain(
                reasons.ISP_DURATION_REJECTED,
                f"PT{minutes:g}M, the market uses PT{market.isp_minutes}M",
            )
        )
    problems.extend(_time_zone_problems(time_zone, period, market))
    return problems


def _time_zone_problems(time_zone: str, period: date, market: MarketSettings) -> list[str]:
    try:
        same = calendar.same_calendar(period, time_zone, market.time_zone, market.isp_minutes)
    except CalendarError:
        return [explain(reasons.TIMEZONE_REJECTED, f"unknown time zone {time_zone}")]
    if not same:
        return [
            explain(
                reasons.TIMEZONE_REJECTED,
                f"{time_zone} has another UTC offset than the market's {market.time_zone} "
                f"on {period}",
            )
        ]
    return []


def _period_problems(
    period: date, today: date, horizon_days: int | None, *, past_allowed: bool = False
) -> list[str]:
    if not past_allowed and period < today:
        return [explain(reasons.PERIOD_OUT_OF_BOUNDS, f"{period} is in the past")]
    if past_allowed and period > today:
        return [explain(reasons.PERIOD_OUT_OF_BOUNDS, f"{period} is in the future")]
    if horizon_days is not None and period > today + timedelta(days=horizon_days):
        return [
            explain(
                reasons.PERIOD_OUT_OF_BOUNDS, f"{period} is more than {horizon_days} days ahead"
            )
        ]
    return []


def _congestion_point_problems(address: str, ctx: InboundContext) -> list[str]:
    if ctx.congestion_points is not None and address not in ctx.congestion_points:
        return [explain(reasons.INVALID_CONGESTION_POINT, f"{address} is not ours")]
    return []


def isp_spans(message: PayloadMessage) -> list[list[tuple[int, int]]]:
    """The ISP element groups of a message that must each cover a day without overlap: one per
    message, per offer option, per metering profile."""
    if isinstance(message, FlexOffer):
        return [[(i.start, i.duration) for i in o.isps] for o in message.offer_options]
    if isinstance(message, DPrognosis | FlexRequest | FlexOrder | FlexReservationUpdate):
        return [[(i.start, i.duration) for i in message.isps]]
    if isinstance(message, Metering):
        return [[(i.start, 1) for i in p.isps] for p in message.profiles]
    return []


def _coverage(
    period: date, market: MarketSettings, groups: Iterable[list[tuple[int, int]]]
) -> list[str]:
    count = calendar.isp_count(period, market.time_zone, market.isp_minutes)
    problems: list[str] = []
    for spans in groups:
        problems.extend(p for p in calendar.coverage_problems(spans, count) if p not in problems)
    return problems


def _flex_message_problems(message: FlexMessage, ctx: InboundContext, today: date) -> list[str]:
    calendar_problems = _calendar_problems(
        message.isp_duration, message.time_zone, message.period, ctx.market
    )
    problems = calendar_problems + _period_problems(message.period, today, ctx.period_horizon_days)
    problems += _congestion_point_problems(message.congestion_point, ctx)
    if not calendar_problems:  # ISP numbers mean nothing in a calendar we do not share
        problems += _coverage(message.period, ctx.market, isp_spans(message))
    return problems


def _settlement_problems(settlement: FlexSettlement, ctx: InboundContext) -> list[str]:
    problems: list[str] = []
    for item in settlement.flex_order_settlements:
        if not settlement.period_start <= item.period <= settlement.period_end:
            problems.append(
                explain(
                    reasons.PERIOD_OUT_OF_BOUNDS,
                    f"order {item.order_reference} on {item.period} is outside "
                    f"{settlement.period_start}..{settlement.period_end}",
                )
            )
        problems += _congestion_point_problems(item.congestion_point, ctx)
        problems += _coverage(item.period, ctx.market, [[(i.start, i.duration) for i in item.isps]])
    for contract in settlement.contract_settlements:
        for entry in contract.periods:
            problems += _coverage(
                entry.period, ctx.market, [[(i.start, i.duration) for i in entry.isps]]
            )
    return list(dict.fromkeys(problems))


def check_inbound(
    envelope: SignedMessage, message: PayloadMessage, ctx: InboundContext, now: datetime
) -> list[str]:
    """Every generic check that needs no business state (the spec's generic steps, minus dedup)."""
    problems = check_envelope(envelope, message, ctx.own_role)
    problems += check_metadata(message, ctx)
    today = calendar.today(ctx.market.time_zone, now)
    if isinstance(message, FlexMessage):
        problems += _flex_message_problems(message, ctx, today)
    elif isinstance(message, Metering):
        calendar_problems = _calendar_problems(
            message.isp_duration, message.time_zone, message.period, ctx.market
        )
        problems += calendar_problems
        # Metering reports a day that has passed (or is passing).
        problems += _period_problems(message.period, today, None, past_allowed=True)
        if not calendar_problems:
            problems += _coverage(message.period, ctx.market, isp_spans(message))
    elif isinstance(message, FlexSettlement):
        problems += _settlement_problems(message, ctx)
    elif isinstance(
        message,
        AGRPortfolioQuery
        | AGRPortfolioQueryResponse
        | DSOPortfolioQuery
        | DSOPortfolioQueryResponse,
    ):
        problems += _time_zone_problems(message.time_zone, message.period, ctx.market)
    return problems


def _expiration_problems(expiration: datetime, last_isp_end: datetime, now: datetime) -> list[str]:
    if expiration <= now:
        return [explain(reasons.EXPIRATION_OUT_OF_BOUNDS, f"{expiration.isoformat()} has passed")]
    if expiration > last_isp_end:
        return [
            explain(
                reasons.EXPIRATION_OUT_OF_BOUNDS,
                f"{expiration.isoformat()} is after the last ISP ends ({last_isp_end.isoformat()})",
            )
        ]
    return []


def _reference_problems(message: FlexMessage, referenced: FlexMessage, attribute: str) -> list[str]:
    """A message answering an earlier one stays in its conversation, Period and congestion
    point (specification, message validation, "Reference Period mismatch"; the
    conversation as the reference implementation checks it)."""
    kind, own = referenced.xml_name, message.xml_name
    problems: list[str] = []
    if referenced.conversation_id != message.conversation_id:
        problems.append(
            explain(
                reasons.unknown_reference(attribute),
                f"the {kind} belongs to another ConversationID",
            )
        )
    if referenced.period != message.period:
        problems.append(
            explain(
                reasons.REFERENCE_PERIOD_MISMATCH,
                f"{own} Period {message.period}, {kind} Period {referenced.period}",
            )
        )
    if referenced.congestion_point != message.congestion_point:
        problems.append(
            explain(
                reasons.INVALID_CONGESTION_POINT,
                f"{own} {message.congestion_point}, {kind} {referenced.congestion_point}",
            )
        )
    return problems


def _last_isp_end(message: FlexMessage, spans: Iterable[tuple[int, int]]) -> datetime:
    return calendar.spans_end(message.period, message.time_zone, message.isp_minutes, spans)


# --- AGR: FlexRequest ("Exchange Flexibility Requests") ---------------------------------


def check_flex_request(
    request: FlexRequest, now: datetime, *, previous_revision: int | None = None
) -> list[str]:
    """Business checks of a FlexRequest after the generic ones.

    `previous_revision`: the highest Revision already accepted for the same congestion point and
    period from this DSO; a lower one is stale.
    """
    problems: list[str] = []
    requested = [isp for isp in request.isps if isp.requested]
    if not requested:
        problems.append(
            explain(reasons.LACKING_REQUESTED_DISPOSITION, "no ISP has Disposition=Requested")
        )
    problems.extend(
        explain(
            reasons.REQUESTED_POWER_DISCREPANCY,
            f"ISP {isp.start}: MinPower {isp.min_power} < 0 < MaxPower {isp.max_power}",
        )
        for isp in requested
        if isp.min_power < 0 < isp.max_power
    )
    problems.extend(
        explain(
            reasons.POWER_DISCREPANCY,
            f"ISP {isp.start}: MinPower {isp.min_power} > MaxPower {isp.max_power}",
        )
        for isp in request.isps
        if isp.min_power > isp.max_power
    )
    spans = [(i.start, i.duration) for i in request.isps]
    try:
        problems += _expiration_problems(
            request.expiration_date_time, _last_isp_end(request, spans), now
        )
    except CalendarError as exc:  # an unusable calendar was already rejected generically
        problems.append(explain(reasons.INVALID_MESSAGE, str(exc)))
    if previous_revision is not None and request.revision < previous_revision:
        problems.append(
            explain(
                reasons.SUBORDINATE_SEQUENCE_NUMBER,
                f"Revision {request.revision} is below {previous_revision}, already received",
            )
        )
    return problems


# --- AGR: FlexOrder ("Exchange Flexibility Orders") -----------------------------------


@dataclass(frozen=True)
class OfferState:
    """What the AGR knows about its own FlexOffer when an order for it arrives."""

    revoked: bool = False
    ordered: bool = False


def _scaled_power(power: int, factor: Decimal) -> Decimal:
    return Decimal(power) * factor


def check_flex_order(
    order: FlexOrder, offer: FlexOffer | None, state: OfferState, now: datetime
) -> list[str]:
    """A FlexOrder against the FlexOffer it names.

    The ISPs must be an exact copy of the chosen option, (Start, Duration) pair by pair: that is
    how DSOs compare them too. With partial activation (ActivationFactor f >= MinActivationFactor)
    every power and the price scale by f (UFTP validate phase); values are compared allowing the
    DSO's rounding to whole watts and 4 decimals. The spec rule is implemented, not the Java
    library's every-option price quirk.
    """
    if order.flex_offer_message_id is None:
        if order.unsolicited is True:
            return []  # a direct order: see check_direct_flex_order
        return [
            explain(
                reasons.INVALID_MESSAGE,
                "FlexOfferMessageID is required unless Unsolicited is true",
            )
        ]
    if offer is None:
        return [
            explain(
                reasons.unknown_reference("FlexOfferMessageID"),
                f"no FlexOffer {order.flex_offer_message_id} was sent",
            )
        ]
    problems: list[str] = []
    if offer.recipient_domain != order.sender_domain:
        problems.append(
            explain(
                reasons.unknown_reference("FlexOfferMessageID"),
                f"FlexOffer {order.flex_offer_message_id} was not offered to {order.sender_domain}",
            )
        )
    problems += _reference_problems(order, offer, "FlexOfferMessageID")
    # A revocation and an order crossing in flight: the revocation wins (UFTP validate phase).
    if state.revoked:
        problems.append(explain(reasons.REFERENCE_MESSAGE_REVOKED, "the FlexOffer was revoked"))
    if offer.expiration_date_time <= now:
        problems.append(
            explain(
                reasons.REFERENCE_MESSAGE_EXPIRED,
                f"the FlexOffer expired at {offer.expiration_date_time.isoformat()}",
            )
        )
    if state.ordered:
        problems.append(
            explain(reasons.OFFER_ALREADY_ORDERED, "a FlexOffer can be ordered only once")
        )
    option = offer.option(order.option_reference)
    if option is None:
        problems.append(
            explain(
                reasons.INVALID_MESSAGE,
                f"OptionReference {order.option_reference!r} names no option of the FlexOffer"
                if order.option_reference is not None
                else "the FlexOffer has several options and the order names none",
            )
        )
        return problems
    factor = order.activation_factor
    if factor < option.min_activation_factor:
        problems.append(
            explain(
                reasons.POWER_MISMATCH,
                f"ActivationFactor {factor} is below MinActivationFactor "
                f"{option.min_activation_factor}",
            )
        )
    offered = {(i.start, i.duration): i.power for i in option.isps}
    ordered = {(i.start, i.duration): i.power for i in order.isps}
    if set(offered) != set(ordered) or len(ordered) != len(order.isps):
        problems.append(
            explain(reasons.ISP_MISMATCH, "the ordered ISPs are not those of the offered option")
        )
    else:
        wrong = [
            span[0]
            for span, power in ordered.items()
            if abs(Decimal(power) - _scaled_power(offered[span], factor)) >= _POWER_TOLERANCE_W
        ]
        if wrong:
            problems.append(
                explain(
                    reasons.POWER_MISMATCH,
                    f"ISP(s) {', '.join(map(str, wrong[:10]))} differ from the offer x {factor}",
                )
            )
    if order.currency != offer.currency:
        problems.append(
            explain(reasons.PRICE_MISMATCH, f"currency {order.currency}, offer {offer.currency}")
        )
    elif abs(order.price - option.price * factor) >= _PRICE_TOLERANCE:
        problems.append(
            explain(
                reasons.PRICE_MISMATCH,
                f"price {order.price}, offer {option.price} x {factor} = {option.price * factor}",
            )
        )
    return problems


def check_direct_flex_order(order: FlexOrder, known_contracts: Collection[str] | None) -> list[str]:
    """A 3.1.0 direct order (Unsolicited, no FlexOffer) must rest on an existing agreement."""
    problems: list[str] = []
    if order.unsolicited is not True or order.flex_offer_message_id is not None:
        problems.append(
            explain(reasons.INVALID_MESSAGE, "a direct order is Unsolicited without FlexOffer")
        )
    if known_contracts is not None and order.contract_id not in known_contracts:
        problems.append(
            explain(
                reasons.INVALID_MESSAGE,
                f"no agreement {order.contract_id!r} for a direct order"
                if order.contract_id
                else "a direct order needs the ContractID of an existing agreement",
            )
        )
    return problems


# --- AGR: FlexReservationUpdate (UFTP plan phase) ------------------------------------------------


@dataclass(frozen=True)
class ReservationContract:
    """A bilateral FlexOption contract as the AGR holds it for one Period."""

    contract_id: str
    # Updates later than this are "Deadline expired"; None: no deadline.
    update_deadline: datetime | None
    # Reserved power per ISP index of the Period (W, signed).
    reserved_power: Mapping[int, int] = field(default_factory=dict)


def check_flex_reservation_update(
    update: FlexReservationUpdate, contract: ReservationContract | None, now: datetime
) -> list[str]:
    """Power still reserved may shrink towards 0 but never grow or change direction."""
    if contract is None or contract.contract_id != update.contract_id:
        return [explain(reasons.INVALID_MESSAGE, f"unknown ContractID {update.contract_id!r}")]
    problems: list[str] = []
    if contract.update_deadline is not None and now > contract.update_deadline:
        problems.append(
            explain(
                reasons.DEADLINE_EXPIRED,
                f"updates were due by {contract.update_deadline.isoformat()}",
            )
        )
    wrong: list[int] = []
    for isp in update.isps:
        for index in range(isp.start, isp.start + isp.duration):
            reserved = contract.reserved_power.get(index, 0)
            if isp.power * reserved < 0 or abs(isp.power) > abs(reserved):
                wrong.append(index)
    if wrong:
        problems.append(
            explain(
                reasons.POWER_VALUE_REJECTION,
                f"ISP(s) {', '.join(map(str, wrong[:10]))} exceed the reservation or reverse it",
            )
        )
    return problems


# --- AGR: FlexSettlement (UFTP settle phase) ------------------------------------------------------


@dataclass(frozen=True)
class SettledOrder:
    """An order the AGR accepted, as it remembers it, for checking settlement items."""

    order_reference: str
    period: date
    congestion_point: str
    price: Decimal
    # Ordered flex power per ISP index (W).
    ordered_power: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SettlementAssessment:
    """The AGR's answer: reasons to reject the whole message, and the per-item dispositions."""

    rejections: list[str]
    statuses: list[FlexOrderSettlementStatus]


def _item_disputes(
    item_price: Decimal,
    penalty: Decimal,
    net: Decimal,
    period: date,
    congestion_point: str,
    ordered_flex: Mapping[int, int],
    ours: SettledOrder,
) -> list[str]:
    disputes: list[str] = []
    if period != ours.period:
        disputes.append(f"Period {period}, ordered for {ours.period}")
    if congestion_point != ours.congestion_point:
        disputes.append(f"CongestionPoint {congestion_point}, ordered at {ours.congestion_point}")
    if item_price != ours.price:
        disputes.append(f"Price {item_price}, ordered at {ours.price}")
    if net != item_price - penalty:
        disputes.append(f"NetSettlement {net} is not Price {item_price} - Penalty {penalty}")
    differing = sorted(
        i
        for i in set(ordered_flex) | set(ours.ordered_power)
        if ordered_flex.get(i, 0) != ours.ordered_power.get(i, 0)
    )
    if differing:
        disputes.append(f"OrderedFlexPower differs in ISP(s) {', '.join(map(str, differing[:10]))}")
    return disputes


def assess_flex_settlement(
    settlement: FlexSettlement,
    orders: Sequence[SettledOrder],
    today: date,
    *,
    already_settled: bool = False,
) -> SettlementAssessment:
    """Check a FlexSettlement against the orders the AGR accepted from this DSO.

    Item disagreements are answered with Disposition=Disputed, not a rejection (UFTP settle phase:
    "the rejection of a FlexSettlement message is not a means of raising a dispute"). The whole
    message is rejected only for implausible bounds, missing items or an already settled period.
    `orders` are this DSO's accepted orders (any period; those in range must all be present).
    """
    rejections: list[str] = []
    start, end = settlement.period_start, settlement.period_end
    if start >= today:
        rejections.append(explain(reasons.PERIOD_START_REJECTED, f"{start} has not passed"))
    if end < start:
        rejections.append(explain(reasons.PERIOD_END_REJECTED, f"{end} is before {start}"))
    elif end >= today:
        rejections.append(explain(reasons.PERIOD_END_REJECTED, f"{end} has not passed"))
    if already_settled:
        rejections.append(explain(reasons.INVALID_MESSAGE, "this period was settled already"))
    listed = {item.order_reference for item in settlement.flex_order_settlements}
    missing = sorted(
        o.order_reference
        for o in orders
        if start <= o.period <= end and o.order_reference not in listed
    )
    if missing:
        rejections.append(
            explain(reasons.MISSING_SETTLEMENT_ITEMS, f"no item for order(s) {', '.join(missing)}")
        )
    by_reference = {o.order_reference: o for o in orders}
    seen: set[str | None] = set()
    statuses: list[FlexOrderSettlementStatus] = []
    for item in settlement.flex_order_settlements:
        ordered_flex = calendar.expand_runs(
            (i.start, i.duration, i.ordered_flex_power) for i in item.isps
        )
        ours = by_reference.get(item.order_reference or "")
        if item.order_reference in seen:
            disputes = ["the order is settled twice in this message"]
        elif ours is None:
            disputes = [f"unknown OrderReference {item.order_reference!r}"]
        else:
            disputes = _item_disputes(
                item.price,
                item.penalty,
                item.net_settlement,
                item.period,
                item.congestion_point,
                ordered_flex,
                ours,
            )
        seen.add(item.order_reference)
        statuses.append(
            FlexOrderSettlementStatus(
                order_reference=item.order_reference,
                disposition=AcceptedDisputed.DISPUTED if disputes else AcceptedDisputed.ACCEPTED,
                dispute_reason="; ".join(disputes) or None,
            )
        )
    return SettlementAssessment(rejections, statuses)


# --- DSO side (for the simulated DSO) -----------------------------------------------------------


def check_d_prognosis(
    prognosis: DPrognosis,
    *,
    previous_revision: int | None = None,
    max_abs_power_w: int | None = None,
) -> list[str]:
    """D-Prognosis as a DSO checks it (UFTP "Exchange D-Prognoses")."""
    problems: list[str] = []
    try:
        count = calendar.isp_count(prognosis.period, prognosis.time_zone, prognosis.isp_minutes)
    except CalendarError as exc:
        return [explain(reasons.INVALID_MESSAGE, str(exc))]
    missing = calendar.lacking_isps(((i.start, i.duration) for i in prognosis.isps), count)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        problems.append(explain(reasons.LACKING_ISPS, f"{len(missing)} ISP(s) missing: {shown}"))
    if max_abs_power_w is not None:
        implausible = [i.start for i in prognosis.isps if abs(i.power) > max_abs_power_w]
        if implausible:
            problems.append(
                explain(
                    reasons.POWER_VALUE_REJECTION,
                    f"ISP(s) {', '.join(map(str, implausible[:10]))} beyond {max_abs_power_w} W",
                )
            )
    if previous_revision is not None and prognosis.revision <= previous_revision:
        problems.append(
            explain(
                reasons.SUBORDINATE_SEQUENCE_NUMBER,
                f"Revision {prognosis.revision}, already received {previous_revision}",
            )
        )
    return problems


def check_flex_offer(
    offer: FlexOffer,
    request: FlexRequest | None,
    now: datetime,
    *,
    mutex_offers_supported: bool = False,
) -> list[str]:
    """FlexOffer as a DSO checks it (UFTP "Exchange Flexibility Offers").

    "Request mismatch" compares (Start, Duration) pairs exactly, like the Java DSO library does:
    an offer must answer with the request's own granularity.
    """
    problems: list[str] = []
    if offer.flex_request_message_id is None and offer.unsolicited is not True:
        problems.append(
            explain(
                reasons.INVALID_MESSAGE,
                "FlexRequestMessageID is required unless Unsolicited is true",
            )
        )
    if len(offer.offer_options) > 1 and not mutex_offers_supported:
        problems.append(
            explain(reasons.NO_MUTEX_OFFER_SUPPORT, f"{len(offer.offer_options)} options")
        )
    spans = [(i.start, i.duration) for o in offer.offer_options for i in o.isps]
    try:
        problems += _expiration_problems(
            offer.expiration_date_time, _last_isp_end(offer, spans), now
        )
    except CalendarError as exc:
        problems.append(explain(reasons.INVALID_MESSAGE, str(exc)))
    if offer.flex_request_message_id is None:
        return problems
    if request is None or request.sender_domain != offer.recipient_domain:
        problems.append(
            explain(
                reasons.unknown_reference("FlexRequestMessageID"),
                f"no FlexRequest {offer.flex_request_message_id} was sent to {offer.sender_domain}",
            )
        )
        return problems
    problems += _reference_problems(offer, request, "FlexRequestMessageID")
    if request.expiration_date_time <= now:
        problems.append(explain(reasons.REFERENCE_MESSAGE_EXPIRED, "the FlexRequest has expired"))
    requested = {(i.start, i.duration) for i in request.isps if i.requested}
    bounds = {
        index: (i.min_power, i.max_power)
        for i in request.isps
        for index in range(i.start, i.start + i.duration)
    }
    for option in offer.offer_options:
        if not requested & {(i.start, i.duration) for i in option.isps}:
            problems.append(
                explain(
                    reasons.REQUEST_MISMATCH,
                    f"option {option.option_reference} covers no Requested ISP of the request",
                )
            )
        outside = [
            index
            for isp in option.isps
            for index in range(isp.start, isp.start + isp.duration)
            if index in bounds and not bounds[index][0] <= isp.power <= bounds[index][1]
        ]
        if outside:
            problems.append(
                explain(
                    reasons.POWER_VALUE_REJECTION,
                    f"option {option.option_reference}: ISP(s) "
                    f"{', '.join(map(str, outside[:10]))} outside the requested MinPower..MaxPower",
                )
            )
    return problems


def check_flex_offer_revocation(
    revocation: FlexOfferRevocation, offer: FlexOffer | None, *, ordered: bool
) -> list[str]:
    """FlexOfferRevocation as a DSO checks it: known offer of the same AGR, not yet ordered."""
    if offer is None or offer.sender_domain != revocation.sender_domain:
        return [
            explain(
                reasons.unknown_reference("FlexOfferMessageID"),
                f"no FlexOffer {revocation.flex_offer_message_id} from {revocation.sender_domain}",
            )
        ]
    if ordered:
        return [explain(reasons.FLEXIBILITY_PROCURED, "the FlexOffer has been ordered")]
    return []
