"""The aggregator's trading: UFTP conversations for many sites, over PostgreSQL.

Every inbound message is handled in the one transaction `CentralUftp.handle_one` opened for
it, together with its answer:

- FlexRequest: checked (`uftp.validation.check_flex_request`), answered, and offered at once
  from the flexibility the sites last pushed (no call to any site): the FlexOffer and each
  site's share of it are stored and queued in the same transaction.
- FlexOrder: checked against the offer as we sent it (`check_flex_order`); accepted, it is
  split into one command per site (seq 1) in the same transaction as the FlexOrderResponse,
  so an order is never answered without its commands or commanded without its answer.
- FlexSettlement: checked (`assess_flex_settlement`) and each item compared with the sites'
  metering summed per congestion point (`agent.trading.settlement.dispute_by_metering`).
- Responses to what we sent update the trade records.

Background steps (`prognosis_step`, `revocation_step`, `reassign_step`, `metering_step`) each
hold an advisory lock for their transaction, so with two aggregator processes only one does each
at a time. `revocation_step` revokes open offers the sites can no longer deliver
(`agent.central.revocation.offer_shortfall`); it and the FlexOrder handler lock the offer's row,
so an order and a revocation never both take effect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from agent.central import db
from agent.central import uftp_store as pg
from agent.central.config import CentralTradingConfig
from agent.central.portfolio import (
    CongestionPointMetering,
    PortfolioOffer,
    SiteContribution,
    aggregate_prognosis,
    check_settlement,
    congestion_point_metering,
    offer_from_flex,
    request_elements,
)
from agent.central.revocation import offer_shortfall
from agent.central.split import (
    SiteShare,
    Split,
    cap_series,
    order_changes,
    reassign,
    split_order,
)
from agent.central.uftp_shell import CentralUftp
from agent.fleet import protocol
from agent.trading.market import Market
from agent.trading.metering import metering_message
from agent.trading.offers import Pricing
from uftp import reasons
from uftp.models import (
    AcceptedRejected,
    DPrognosis,
    DPrognosisISP,
    DPrognosisResponse,
    FlexOffer,
    FlexOfferOption,
    FlexOfferResponse,
    FlexOfferRevocation,
    FlexOrder,
    FlexRequest,
    FlexSettlement,
    PayloadMessageResponse,
    PowerISP,
)
from uftp.responses import needs_response
from uftp.store import InboundMessage
from uftp.validation import (
    OfferState,
    SettledOrder,
    assess_flex_settlement,
    check_flex_order,
    check_flex_request,
)

log = logging.getLogger(__name__)

OPTION_REFERENCE = "reduce"
SETTLEMENT_TOLERANCE_W = 500.0
SETTLEMENT_TOLERANCE_FRACTION = 0.05
# Forecasts per site read for a D-prognosis (the newest first; older ones fill gaps).
FORECASTS_KEPT = 4


@dataclass(frozen=True)
class OrderAccepted:
    """A FlexOrder accepted and split: `commands` rows were committed with its response."""

    order_message_id: str
    commands: int


@dataclass(frozen=True)
class Handled:
    message_type: str
    message_id: str
    rejections: tuple[str, ...]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class CentralTrader:
    """The AGR's decisions for all congestion points; the UFTP handler of the aggregator."""

    def __init__(
        self,
        uftp: CentralUftp,
        market: Market,
        trading: CentralTradingConfig,
        metering_eans: Mapping[str, str] | None = None,
    ) -> None:
        self.uftp = uftp
        self.market = market
        self.trading = trading
        self.pricing = Pricing(
            Decimal(str(trading.price_fixed)), Decimal(str(trading.price_per_kwh))
        )
        self.metering_eans = dict(metering_eans or {})

    def now(self) -> datetime:
        return self.uftp.now()

    # --- inbound --------------------------------------------------------------------------------

    async def handle(self, conn: db.Connection, inbound: InboundMessage) -> object:
        message = inbound.message()
        if isinstance(message, FlexRequest):
            return await self._flex_request(conn, inbound, message)
        if isinstance(message, FlexOrder):
            return await self._flex_order(conn, inbound, message)
        if isinstance(message, FlexSettlement):
            return await self._flex_settlement(conn, inbound, message)
        if isinstance(message, DPrognosisResponse):
            status = "accepted" if message.result is AcceptedRejected.ACCEPTED else "rejected"
            await conn.execute(
                "UPDATE prognosis SET status = %s, rejection_reason = %s WHERE message_id = %s",
                (status, message.rejection_reason, message.d_prognosis_message_id),
            )
        elif isinstance(message, FlexOfferResponse):
            status = "accepted" if message.result is AcceptedRejected.ACCEPTED else "rejected"
            await conn.execute(
                "UPDATE flex_offer SET status = %s WHERE message_id = %s AND status = 'sent'",
                (status, message.flex_offer_message_id),
            )
        elif isinstance(message, PayloadMessageResponse):
            if message.result is AcceptedRejected.REJECTED:
                log.warning(
                    "the DSO rejected a message",
                    extra={"message_type": message.xml_name, "reason": message.rejection_reason},
                )
        elif needs_response(message):
            problems = [
                reasons.explain(
                    reasons.INVALID_MESSAGE, f"{message.xml_name} is not supported by this AGR"
                )
            ]
            await self.uftp.respond(conn, inbound, problems, request=message)
            return Handled(message.xml_name, message.message_id, tuple(problems))
        return Handled(message.xml_name, message.message_id, ())

    async def _flex_request(
        self, conn: db.Connection, inbound: InboundMessage, request: FlexRequest
    ) -> Handled:
        now = self.now()
        cursor = await conn.execute(
            "SELECT max(revision) FROM flex_request WHERE dso_domain = %s AND "
            "congestion_point = %s AND period = %s AND status <> 'rejected'",
            (inbound.sender_domain, request.congestion_point, request.period),
        )
        row = await cursor.fetchone()
        previous = None if row is None or row[0] is None else int(row[0])
        problems = check_flex_request(request, now, previous_revision=previous)
        await self.uftp.respond(conn, inbound, problems, request=request)
        await conn.execute(
            "INSERT INTO flex_request (message_id, inbox_id, dso_domain, conversation_id, "
            "congestion_point, period, revision, expires_at, status, note, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                request.message_id,
                inbound.id,
                inbound.sender_domain,
                request.conversation_id,
                request.congestion_point,
                request.period,
                request.revision,
                request.expiration_date_time,
                "rejected" if problems else "todo",
                reasons.join(problems) or None,
                now,
            ),
        )
        if not problems:
            await self._offer(conn, inbound, request, now)
        return Handled(request.xml_name, request.message_id, tuple(problems))

    async def _offer(
        self, conn: db.Connection, inbound: InboundMessage, request: FlexRequest, now: datetime
    ) -> None:
        cp = request.congestion_point
        elements = request_elements(request)
        plan = offer_from_flex(
            cp,
            elements,
            await latest_flexes(conn, cp),
            await reservations(conn, cp, now),
            now,
        )
        if not plan.elements:
            why = "; ".join(f"{t.isoformat()}: {reason}" for t, reason in plan.not_offered)
            log.info(
                "no offer for a FlexRequest",
                extra={"message_id": request.message_id, "reason": why},
            )
            await conn.execute(
                "UPDATE flex_request SET status = 'declined', note = %s WHERE message_id = %s",
                (why or "no site has flexibility", request.message_id),
            )
            return
        # The offer keeps the request's granularity: one ISP element per Requested element.
        index_of = {
            element: (isp.start, isp.duration)
            for element, isp in zip(elements, request.isps, strict=True)
        }
        option_isps = tuple(
            PowerISP(
                power=offered.change_w,
                start=index_of[offered.element][0],
                duration=index_of[offered.element][1],
            )
            for offered in plan.elements
        )
        kwh = sum(abs(i.power) * i.duration for i in option_isps) * self.market.isp_minutes / 60e3
        # An offer is ordered before its first ISP starts, never later (the DSO refuses an
        # ExpirationDateTime beyond the offered ISPs, and a late order could not be dispatched).
        first_start = self.market.start_of(request.period, min(i.start for i in option_isps))
        expires = min(
            now + timedelta(seconds=self.trading.offer_validity_s),
            request.expiration_date_time,
            first_start,
        )
        if expires <= now:
            await conn.execute(
                "UPDATE flex_request SET status = 'declined', note = %s WHERE message_id = %s",
                ("the offered ISPs begin before an order could come", request.message_id),
            )
            return
        offer = FlexOffer(
            sender_domain=self.uftp.settings.domain,
            recipient_domain=inbound.sender_domain,
            time_stamp=now,
            conversation_id=request.conversation_id,
            isp_duration=timedelta(minutes=self.market.isp_minutes),
            time_zone=self.market.time_zone,
            period=request.period,
            congestion_point=cp,
            expiration_date_time=expires,
            flex_request_message_id=request.message_id,
            currency=self.trading.currency,
            offer_options=(
                FlexOfferOption(
                    option_reference=OPTION_REFERENCE,
                    price=self.pricing.price(kwh),
                    min_activation_factor=Decimal("1.00"),
                    isps=option_isps,
                ),
            ),
        )
        await conn.execute(
            "INSERT INTO flex_offer (message_id, request_message_id, dso_domain, "
            "conversation_id, congestion_point, period, expires_at, shares, status, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'sent', %s)",
            (
                offer.message_id,
                request.message_id,
                inbound.sender_domain,
                offer.conversation_id,
                cp,
                offer.period,
                expires,
                Jsonb(_contributions_json(plan)),
                now,
            ),
        )
        await conn.execute(
            "UPDATE flex_request SET status = 'offered' WHERE message_id = %s",
            (request.message_id,),
        )
        await self.uftp.enqueue(conn, offer, recipient_role=inbound.sender_role)

    async def _offer_for_order(
        self, conn: db.Connection, order: FlexOrder
    ) -> tuple[FlexOffer | None, OfferState, str | None]:
        """The offer an order refers to, what validation needs to know of it, and its row's
        status (None when there is no such offer)."""
        if order.flex_offer_message_id is None:
            return None, OfferState(), None
        sent = await pg.find_outbound(conn, order.flex_offer_message_id)
        if sent is None or sent.message_type != FlexOffer.xml_name:
            return None, OfferState(), None
        offer = sent.message()
        assert isinstance(offer, FlexOffer)
        # The row lock orders this against `revocation_step`: whichever commits first wins,
        # and the other sees its outcome (a revoked offer here, an ordered one there).
        cursor = await conn.execute(
            "SELECT status FROM flex_offer WHERE message_id = %s FOR UPDATE", (offer.message_id,)
        )
        row = await cursor.fetchone()
        status = None if row is None else str(row[0])
        revoked = status == "revoked"
        cursor = await conn.execute(
            "SELECT 1 FROM flex_order WHERE offer_message_id = %s AND status = 'accepted' "
            "AND message_id <> %s",
            (offer.message_id, order.message_id),
        )
        ordered = await cursor.fetchone() is not None
        return offer, OfferState(revoked=revoked, ordered=ordered), status

    async def _flex_order(
        self, conn: db.Connection, inbound: InboundMessage, order: FlexOrder
    ) -> object:
        now = self.now()
        offer, state, offer_status = await self._offer_for_order(conn, order)
        problems = check_flex_order(order, offer, state, now)
        if offer_status == "rejected" and not problems:
            # The DSO's own FlexOfferResponse turned the offer down; its flexibility may have
            # gone to another offer since, so an order for it now cannot be honoured.
            problems = [
                reasons.explain(
                    reasons.INVALID_MESSAGE,
                    "the FlexOffer it orders was rejected by the DSO's FlexOfferResponse",
                )
            ]
        if order.flex_offer_message_id is None and not problems:
            problems = [
                reasons.explain(
                    reasons.INVALID_MESSAGE, "this AGR has no contracts for direct orders"
                )
            ]
        ordered_w = order_changes(order)
        await self.uftp.respond(conn, inbound, problems, request=order)
        await conn.execute(
            "INSERT INTO flex_order (message_id, inbox_id, dso_domain, offer_message_id, "
            "congestion_point, period, order_reference, option_reference, first_isp_start, "
            "status, rejection_reason, price, currency, isps, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                order.message_id,
                inbound.id,
                inbound.sender_domain,
                order.flex_offer_message_id,
                order.congestion_point,
                order.period,
                order.order_reference,
                order.option_reference,
                min(ordered_w, default=None),
                "rejected" if problems else "accepted",
                reasons.join(problems) or None,
                order.price,
                order.currency,
                Jsonb([[i.start, i.duration, i.power] for i in order.isps]),
                now,
            ),
        )
        if problems:
            return Handled(order.xml_name, order.message_id, tuple(problems))
        cursor = await conn.execute(
            "SELECT shares FROM flex_offer WHERE message_id = %s", (order.flex_offer_message_id,)
        )
        row = await cursor.fetchone()
        assert row is not None, "an offer we sent without its contributions"
        contributions = _contributions_from_json(row[0])
        held = await held_by_orders(conn, order.congestion_point, exclude=order.message_id)
        split = split_order(order.congestion_point, contributions, ordered_w, held_w=held)
        if split.shortfall_w:
            log.warning(
                "the sites cannot carry all of an order",
                extra={
                    "message_id": order.message_id,
                    "shortfall_w": round(max(abs(v) for v in split.shortfall_w.values())),
                },
            )
        await conn.execute(
            "UPDATE flex_order SET allocation = %s WHERE message_id = %s",
            (Jsonb(_split_json(split)), order.message_id),
        )
        await conn.execute(
            "UPDATE flex_offer SET status = 'ordered' WHERE message_id = %s",
            (order.flex_offer_message_id,),
        )
        count = 0
        for site in sorted(split.shares):
            await insert_command(
                conn, order.message_id, site, 1, order.congestion_point, split.caps(site), now
            )
            count += 1
        log.info(
            "order accepted and split",
            extra={"message_id": order.message_id, "sites": count},
        )
        return OrderAccepted(order.message_id, count)

    async def _flex_settlement(
        self, conn: db.Connection, inbound: InboundMessage, settlement: FlexSettlement
    ) -> Handled:
        now = self.now()
        cursor = await conn.execute(
            "SELECT order_reference, period, congestion_point, price, isps FROM flex_order "
            "WHERE dso_domain = %s AND status = 'accepted'",
            (inbound.sender_domain,),
        )
        orders = [
            SettledOrder(
                order_reference=r[0],
                period=r[1],
                congestion_point=r[2],
                price=Decimal(r[3]),
                ordered_power={
                    i: int(p) for s, d, p in r[4] for i in range(int(s), int(s) + int(d))
                },
            )
            for r in await cursor.fetchall()
        ]
        cursor = await conn.execute(
            "SELECT 1 FROM flex_settlement WHERE dso_domain = %s AND status = 'accepted' AND "
            "period_start <= %s AND period_end >= %s",
            (inbound.sender_domain, settlement.period_end, settlement.period_start),
        )
        already = await cursor.fetchone() is not None
        assessment = assess_flex_settlement(
            settlement, orders, self.market.today(now), already_settled=already
        )
        statuses = []
        for item, status in zip(
            settlement.flex_order_settlements, assessment.statuses, strict=True
        ):
            metering = await self._metering(conn, item.congestion_point, item.period)
            checked = check_settlement(
                item,
                status,
                metering,
                self.market.time_zone,
                tolerance_w=SETTLEMENT_TOLERANCE_W,
                tolerance_fraction=SETTLEMENT_TOLERANCE_FRACTION,
            )
            if checked.unjudged:
                log.warning(
                    "settlement ISPs without every site's metering were not judged",
                    extra={"order": item.order_reference, "isps": len(checked.unjudged)},
                )
            statuses.append(checked.status)
        await self.uftp.respond(
            conn,
            inbound,
            assessment.rejections,
            request=settlement,
            flex_order_settlement_statuses=statuses,
        )
        disputed = sum(1 for s in statuses if s.disposition == "Disputed")
        await conn.execute(
            "INSERT INTO flex_settlement (message_id, inbox_id, dso_domain, period_start, "
            "period_end, items, disputed, status, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                settlement.message_id,
                inbound.id,
                inbound.sender_domain,
                settlement.period_start,
                settlement.period_end,
                len(statuses),
                disputed,
                "rejected" if assessment.rejections else "accepted",
                now,
            ),
        )
        return Handled(settlement.xml_name, settlement.message_id, tuple(assessment.rejections))

    async def _metering(
        self, conn: db.Connection, congestion_point: str, period: date
    ) -> CongestionPointMetering:
        """The congestion point's metering of a day, summed over its sites."""
        isps = [isp.start for isp in self.market.isps(period)]
        start, end = self.market.bounds(period)
        members = await sites_of(conn, congestion_point)
        cursor = await conn.execute(
            "SELECT i.site, i.payload FROM site_inbox i WHERE i.id IN ("
            "SELECT DISTINCT m.inbox_id FROM site_metering m WHERE m.congestion_point = %s "
            "AND m.isp_start >= %s AND m.isp_start < %s)",
            (congestion_point, start, end),
        )
        meterings: dict[str, list[protocol.Metering]] = {}
        for site, payload in await cursor.fetchall():
            meterings.setdefault(site, []).append(protocol.Metering.model_validate(payload))
        return congestion_point_metering(congestion_point, members, meterings, isps)

    # --- background -----------------------------------------------------------------------------

    async def prognosis_step(self, conn: db.Connection) -> int:
        """Send the D-prognoses that are due, in the caller's transaction; returns how many.

        Due: today's for every congestion point without one, tomorrow's from the day-ahead
        time on, a new revision when a flagged site's data for the day improved, and one
        for every accepted order the latest revision of its day does not include (the DSO's
        baseline then shows the order). ISPs that have begun keep the previous revision's
        values."""
        if not await db.try_xact_lock(conn, db.PROGNOSIS_LOCK):
            return 0
        now = self.now()
        today = self.market.today(now)
        periods = [today]
        if now >= self.market.local(today, self.trading.prognosis_time):
            periods.append(today + timedelta(days=1))
        cursor = await conn.execute("SELECT ean, dso_domain FROM congestion_point ORDER BY ean")
        points = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT DISTINCT congestion_point, period FROM flex_order "
            "WHERE status = 'accepted' AND period >= %s",
            (today,),
        )
        ordered = {(str(r[0]), r[1]) for r in await cursor.fetchall()}
        sent = 0
        for ean, dso in points:
            wanted = sorted({*periods, *(p for cp, p in ordered if cp == ean)})
            for period in wanted:
                if await self._prognosis(conn, ean, dso, period, now):
                    sent += 1
        return sent

    async def _prognosis(
        self, conn: db.Connection, ean: str, dso: str, period: date, now: datetime
    ) -> bool:
        isps = self.market.isps(period)
        members = await sites_of(conn, ean)
        if not members:
            return False
        cursor = await conn.execute(
            "SELECT x.site, i.payload FROM (SELECT site, inbox_id, row_number() OVER ("
            "PARTITION BY site ORDER BY made_at DESC, inbox_id DESC) AS n FROM site_forecast "
            "WHERE site = ANY(%s)) x JOIN site_inbox i ON i.id = x.inbox_id WHERE x.n <= %s",
            (members, FORECASTS_KEPT),
        )
        forecasts: dict[str, list[protocol.Forecast]] = {}
        for site, payload in await cursor.fetchall():
            forecasts.setdefault(site, []).append(protocol.Forecast.model_validate(payload))
        prognosis = aggregate_prognosis(ean, members, forecasts, [i.start for i in isps], now)
        substituted = sorted(prognosis.substituted_sites)
        missing = sorted(prognosis.missing_sites)
        cursor = await conn.execute(
            "SELECT revision, power_w, substituted_sites, missing_sites, status, "
            "rejection_reason, orders FROM prognosis WHERE congestion_point = %s AND period = %s "
            "ORDER BY revision DESC LIMIT 1",
            (ean, period),
        )
        previous = await cursor.fetchone()
        orders, change = await _ordered_change(conn, ean, period)
        if (
            previous is not None
            and not _improved(previous[2], previous[3], substituted, missing)
            and set(orders) <= set(previous[6])
        ):
            return False  # nothing new: no flagged site's data improved, no new order
        power = [max(0, round(i.p50_w + change.get(i.start, 0.0))) for i in prognosis.isps]
        revision = 1
        if previous is not None:
            for i, isp in enumerate(isps):
                if isp.start <= now and i < len(previous[1]):
                    power[i] = int(previous[1][i])  # the past is not re-forecast
            revision = int(previous[0]) + 1
            if previous[4] == "rejected" and reasons.SUBORDINATE_SEQUENCE_NUMBER in (
                previous[5] or ""
            ):
                revision = max(revision, int(now.timestamp()))
        message = DPrognosis(
            sender_domain=self.uftp.settings.domain,
            recipient_domain=dso,
            time_stamp=now,
            isp_duration=timedelta(minutes=self.market.isp_minutes),
            time_zone=self.market.time_zone,
            period=period,
            congestion_point=ean,
            revision=revision,
            isps=tuple(
                DPrognosisISP(power=p, start=isp.index, duration=1)
                for isp, p in zip(isps, power, strict=True)
            ),
        )
        await conn.execute(
            "INSERT INTO prognosis (congestion_point, period, revision, message_id, power_w, "
            "substituted_sites, missing_sites, orders, status, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'sent', %s)",
            (ean, period, revision, message.message_id, power, substituted, missing, orders, now),
        )
        await self.uftp.enqueue(conn, message)
        if substituted or missing:
            log.warning(
                "D-prognosis with sites substituted from older forecasts or missing",
                extra={
                    "congestion_point": ean,
                    "period": str(period),
                    "substituted": substituted,
                    "missing": missing,
                },
            )
        return True

    async def revocation_step(self, conn: db.Connection) -> int:
        """Revoke the open offers the sites can no longer deliver (`offer_shortfall`); returns
        how many FlexOfferRevocations were queued.

        Open: sent or accepted by the DSO, not expired (an offer expires at its first ISP at
        the latest), and not ordered. Each offer is locked with SKIP LOCKED: one an order is
        being handled for is left alone (the order commits it 'ordered'), and an order that
        arrives while it is being revoked waits for the lock and then finds it revoked. The
        newest offers go first, so an older one sees the room a revoked newer one freed."""
        if not await db.try_xact_lock(conn, db.REVOCATION_LOCK):
            return 0
        now = self.now()
        cursor = await conn.execute(
            "SELECT o.message_id, o.dso_domain, o.conversation_id, o.congestion_point, o.shares "
            "FROM flex_offer o WHERE o.status IN ('sent', 'accepted') AND o.expires_at > %s "
            "AND NOT EXISTS (SELECT 1 FROM flex_order r WHERE r.offer_message_id = o.message_id "
            "AND r.status = 'accepted') ORDER BY o.created_at DESC, o.message_id "
            "FOR UPDATE OF o SKIP LOCKED",
            (now,),
        )
        silent_after = timedelta(seconds=self.trading.offline_after_s)
        queued = 0
        # Read once per congestion point: what all open offers and orders reserve, the latest
        # envelopes, when each site was last heard from. Per offer its own share is taken out
        # of the reservations while it is judged, and stays out once it is revoked.
        per_point: dict[
            str,
            tuple[dict[str, dict[datetime, float]], dict[str, protocol.Flex], dict[str, datetime]],
        ] = {}
        for message_id, dso, conversation_id, cp, stored in await cursor.fetchall():
            if cp not in per_point:
                per_point[cp] = (
                    await reservations(conn, cp, now),
                    await latest_flexes(conn, cp),
                    await last_seen(conn, cp),
                )
            reserved, flexes, seen = per_point[cp]
            contributions = _contributions_from_json(stored)
            _add_shares(reserved, contributions, -1.0)
            found = offer_shortfall(
                cp, contributions, flexes, reserved, seen, now, silent_after=silent_after
            )
            if found is None:
                _add_shares(reserved, contributions, 1.0)
                continue
            revocation = FlexOfferRevocation(
                sender_domain=self.uftp.settings.domain,
                recipient_domain=dso,
                time_stamp=now,
                conversation_id=conversation_id,
                flex_offer_message_id=message_id,
            )
            note = (
                f"{found.isp.isoformat()}: {found.achievable_w:.0f} W of "
                f"{found.offered_w:.0f} W achievable"
            )
            await conn.execute(
                "UPDATE flex_offer SET status = 'revoked', revoked_at = %s, "
                "revocation_message_id = %s, revocation_note = %s "
                "WHERE message_id = %s AND status IN ('sent', 'accepted')",
                (now, revocation.message_id, note, message_id),
            )
            await self.uftp.enqueue(conn, revocation)
            queued += 1
            log.warning(
                "offer %s revoked: ISP %s short by %.0f W",
                message_id,
                found.isp.isoformat(),
                found.missing_w,
                extra={
                    "congestion_point": cp,
                    "offered_w": round(found.offered_w),
                    "achievable_w": round(found.achievable_w),
                },
            )
        return queued

    async def reassign_step(self, conn: db.Connection) -> int:
        """Move the shares of offline sites to the other sites of the congestion point, for
        orders whose first ISP is less than `reassign_lead_s` away; returns how many commands
        were queued. Offline: no ack for its latest command, and no heartbeat within
        `offline_after_s` or a command published longer ago than that. Each order is
        reassigned once, when no site without an ack may still confirm."""
        if not await db.try_xact_lock(conn, db.REASSIGN_LOCK):
            return 0
        now = self.now()
        lead = timedelta(seconds=self.trading.reassign_lead_s)
        cursor = await conn.execute(
            "SELECT message_id, congestion_point, allocation FROM flex_order "
            "WHERE status = 'accepted' AND reassigned_at IS NULL AND allocation IS NOT NULL "
            "AND first_isp_start - %s <= %s AND first_isp_start > %s FOR UPDATE",
            (lead, now, now),
        )
        queued = 0
        for order_id, congestion_point, allocation in await cursor.fetchall():
            made = await self._reassign_order(conn, order_id, congestion_point, allocation, now)
            if made is None:
                continue  # looked at again at the next step
            queued += made
            await conn.execute(
                "UPDATE flex_order SET reassigned_at = %s WHERE message_id = %s", (now, order_id)
            )
        return queued

    async def _reassign_order(
        self,
        conn: db.Connection,
        order_id: str,
        congestion_point: str,
        allocation: Mapping[str, Any],
        now: datetime,
    ) -> int | None:
        """Commands queued, or None when a site without an ack may still confirm (it is alive
        and its command is younger than `offline_after_s`): then the order waits."""
        split = _split_from_json(congestion_point, allocation)
        cursor = await conn.execute(
            "SELECT DISTINCT ON (c.site) c.site, c.seq, c.ack_outcome, c.published_at, "
            "st.last_heartbeat_at FROM command c LEFT JOIN site_status st ON st.site = c.site "
            "WHERE c.order_id = %s ORDER BY c.site, c.seq DESC",
            (order_id,),
        )
        rows = await cursor.fetchall()
        latest = {str(r[0]): (int(r[1]), r[2]) for r in rows}
        grace = timedelta(seconds=self.trading.offline_after_s)
        unconfirmed = {str(r[0]): (r[3], r[4]) for r in rows if r[2] is None}
        offline = frozenset(
            site
            for site, (published, heartbeat) in unconfirmed.items()
            if heartbeat is None
            or now - heartbeat > grace
            or (published is not None and now - published > grace)
        )
        if len(offline) < len(unconfirmed):
            return None
        if not offline:
            return 0
        moved = reassign(
            split,
            offline,
            await latest_flexes(conn, congestion_point),
            await held_by_orders(conn, congestion_point, exclude=order_id),
            now,
        )
        if moved.unplaced_w:
            log.warning(
                "an offline site's share found no room at the other sites",
                extra={
                    "order": order_id,
                    "unplaced_w": round(max(abs(v) for v in moved.unplaced_w.values())),
                },
            )
        for site, caps in sorted(moved.changed.items()):
            seq = latest.get(site, (0, None))[0] + 1
            await insert_command(conn, order_id, site, seq, congestion_point, caps, now)
        await conn.execute(
            "UPDATE flex_order SET allocation = %s WHERE message_id = %s",
            (Jsonb(_split_json(moved.split)), order_id),
        )
        log.info(
            "offline sites' shares reassigned",
            extra={"order": order_id, "offline": sorted(offline), "commands": len(moved.changed)},
        )
        return len(moved.changed)

    async def metering_step(self, conn: db.Connection) -> int:
        """Metering per congestion point (those with a metering EAN) for yesterday, once every
        site metered every ISP of it; returns how many were queued."""
        if not self.metering_eans or not await db.try_xact_lock(conn, db.METERING_LOCK):
            return 0
        now = self.now()
        period = self.market.today(now) - timedelta(days=1)
        isps = self.market.isps(period)
        queued = 0
        for cp, ean in sorted(self.metering_eans.items()):
            cursor = await conn.execute(
                "SELECT 1 FROM metering_sent WHERE congestion_point = %s AND period = %s",
                (cp, period),
            )
            if await cursor.fetchone() is not None:
                continue
            # Every site's metering arrival wakes this step: an index lookup per site tells
            # whether each one reached the day's last ISP before all of the day is summed.
            cursor = await conn.execute(
                "SELECT count(*) FILTER (WHERE m.site IS NULL) FROM site s "
                "LEFT JOIN site_metering m ON m.site = s.id AND m.isp_start = %s "
                "WHERE s.congestion_point = %s",
                (isps[-1].start, cp),
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                continue  # a site has not sent the end of the day yet
            metering = await self._metering(conn, cp, period)
            energy = {
                int(i.start.timestamp()): i.energy_wh
                for i in metering.isps
                if i.energy_wh is not None
            }
            if len(energy) < len(isps):
                continue  # a site has not sent all of the day yet
            cursor = await conn.execute(
                "SELECT dso_domain FROM congestion_point WHERE ean = %s", (cp,)
            )
            row = await cursor.fetchone()
            start, end = self.market.bounds(period)
            message = metering_message(
                sender=self.uftp.settings.domain,
                recipient=str(row[0]) if row else "",
                ean=ean,
                period=period,
                revision=1,
                time_zone=self.market.time_zone,
                isps=isps,
                energy_wh=energy,
                measured=[(start, end)],
                now=now,
            )
            if message is None:
                continue
            await conn.execute(
                "INSERT INTO metering_sent (congestion_point, period, revision, message_id, "
                "created_at) VALUES (%s, %s, 1, %s, %s)",
                (cp, period, message.message_id, now),
            )
            await self.uftp.enqueue(conn, message)
            queued += 1
        return queued


async def _ordered_change(
    conn: db.Connection, congestion_point: str, period: date
) -> tuple[list[str], dict[datetime, float]]:
    """The accepted orders of a day and the change their per-site shares make per ISP."""
    cursor = await conn.execute(
        "SELECT message_id, allocation FROM flex_order WHERE congestion_point = %s "
        "AND period = %s AND status = 'accepted' AND allocation IS NOT NULL ORDER BY message_id",
        (congestion_point, period),
    )
    orders: list[str] = []
    change: dict[datetime, float] = {}
    for message_id, allocation in await cursor.fetchall():
        orders.append(str(message_id))
        for per_isp in allocation["shares"].values():
            for key, values in per_isp.items():
                isp = datetime.fromisoformat(key)
                change[isp] = change.get(isp, 0.0) + float(values[3])
    return orders, change


def _improved(
    was_substituted: list[str], was_missing: list[str], substituted: list[str], missing: list[str]
) -> bool:
    """Whether some site's data for the day got better (missing -> substituted -> fresh)."""
    rank_before = dict.fromkeys(was_missing, 2) | dict.fromkeys(was_substituted, 1)
    rank_now = dict.fromkeys(missing, 2) | dict.fromkeys(substituted, 1)
    return any(rank_now.get(site, 0) < rank for site, rank in rank_before.items())


async def sites_of(conn: db.Connection, congestion_point: str) -> list[str]:
    cursor = await conn.execute(
        "SELECT id FROM site WHERE congestion_point = %s ORDER BY id", (congestion_point,)
    )
    return [str(r[0]) for r in await cursor.fetchall()]


async def latest_flexes(conn: db.Connection, congestion_point: str) -> dict[str, protocol.Flex]:
    """Each portfolio site's latest flexibility envelope at the congestion point (validity
    is the pure functions' to judge)."""
    cursor = await conn.execute(
        "SELECT DISTINCT ON (f.site) f.site, i.payload FROM site_flex f "
        "JOIN site s ON s.id = f.site JOIN site_inbox i ON i.id = f.inbox_id "
        "WHERE s.congestion_point = %s ORDER BY f.site, f.made_at DESC, f.inbox_id DESC",
        (congestion_point,),
    )
    return {
        str(site): protocol.Flex.model_validate(payload)
        for site, payload in await cursor.fetchall()
    }


def _add_shares(
    reserved: dict[str, dict[datetime, float]],
    contributions: Mapping[str, Mapping[datetime, SiteContribution]],
    sign: float,
) -> None:
    for site, per_isp in contributions.items():
        own = reserved.setdefault(site, {})
        for isp, contribution in per_isp.items():
            own[isp] = own.get(isp, 0.0) + sign * contribution.change_w


async def last_seen(conn: db.Connection, congestion_point: str) -> dict[str, datetime]:
    """When each site of the congestion point last sent anything."""
    cursor = await conn.execute(
        "SELECT st.site, st.last_seen_at FROM site_status st JOIN site s ON s.id = st.site "
        "WHERE s.congestion_point = %s",
        (congestion_point,),
    )
    return {str(site): seen for site, seen in await cursor.fetchall()}


async def held_by_orders(
    conn: db.Connection, congestion_point: str, *, exclude: str
) -> dict[str, dict[datetime, float]]:
    """What the other accepted orders at the congestion point ask of each site per ISP."""
    cursor = await conn.execute(
        "SELECT allocation FROM flex_order WHERE congestion_point = %s AND status = 'accepted' "
        "AND allocation IS NOT NULL AND message_id <> %s",
        (congestion_point, exclude),
    )
    held: dict[str, dict[datetime, float]] = {}
    for (allocation,) in await cursor.fetchall():
        for site, per_isp in allocation["shares"].items():
            for key, values in per_isp.items():
                isp = datetime.fromisoformat(key)
                held.setdefault(site, {})[isp] = held.get(site, {}).get(isp, 0.0) + values[3]
    return held


async def reservations(
    conn: db.Connection, congestion_point: str, now: datetime
) -> dict[str, dict[datetime, float]]:
    """What outstanding offers (not expired, not ordered or rejected) and accepted orders
    already take from each site per ISP."""
    cursor = await conn.execute(
        "SELECT shares FROM flex_offer WHERE congestion_point = %s "
        "AND status IN ('sent', 'accepted') AND expires_at > %s",
        (congestion_point, now),
    )
    taken = await held_by_orders(conn, congestion_point, exclude="")
    for (stored,) in await cursor.fetchall():
        for site, per_isp in _contributions_from_json(stored).items():
            for isp, contribution in per_isp.items():
                taken.setdefault(site, {})[isp] = (
                    taken.get(site, {}).get(isp, 0.0) + contribution.change_w
                )
    return taken


async def insert_command(
    conn: db.Connection,
    order_id: str,
    site: str,
    seq: int,
    congestion_point: str,
    caps: Mapping[datetime, float | None],
    now: datetime,
) -> None:
    """Queue a site's command for the publisher: caps from the first to the last ISP of the
    order (None: no cap from this order there), valid until the last ISP ends."""
    start, series = cap_series(caps)
    command = protocol.Command(
        id=f"{order_id}:{site}:{seq}",
        site=site,
        sent_at=now,
        start=start,
        order_id=order_id,
        seq=seq,
        valid_until=start + timedelta(seconds=900 * len(series)),
        congestion_point=congestion_point,
        cap_w=[None if cap is None else round(cap, 1) for cap in series],
    )
    await conn.execute(
        "INSERT INTO command (order_id, site, seq, congestion_point, start, valid_until, "
        "payload, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            order_id,
            site,
            seq,
            congestion_point,
            command.start,
            command.valid_until,
            Jsonb(json.loads(protocol.encode(command))),
            now,
        ),
    )


def _contributions_json(plan: PortfolioOffer) -> dict[str, Any]:
    return {
        site: {_iso(t): [c.change_w, c.baseline_w, c.min_w, c.max_w] for t, c in per_isp.items()}
        for site, per_isp in plan.contributions.items()
    }


def _contributions_from_json(
    stored: Mapping[str, Any],
) -> dict[str, dict[datetime, SiteContribution]]:
    return {
        site: {
            datetime.fromisoformat(t): SiteContribution(
                change_w=v[0], baseline_w=v[1], min_w=v[2], max_w=v[3]
            )
            for t, v in per_isp.items()
        }
        for site, per_isp in stored.items()
    }


def _split_json(split: Split) -> dict[str, Any]:
    return {
        "shares": {
            site: {
                _iso(t): [s.baseline_w, s.min_w, s.max_w, s.change_w, s.held_w, s.cap_w]
                for t, s in per_isp.items()
            }
            for site, per_isp in split.shares.items()
        },
        "shortfall": {_iso(t): w for t, w in split.shortfall_w.items()},
    }


def _split_from_json(congestion_point: str, stored: Mapping[str, Any]) -> Split:
    return Split(
        congestion_point,
        {
            site: {
                datetime.fromisoformat(t): SiteShare(
                    baseline_w=v[0], min_w=v[1], max_w=v[2], change_w=v[3], held_w=v[4], cap_w=v[5]
                )
                for t, v in per_isp.items()
            }
            for site, per_isp in stored["shares"].items()
        },
        {datetime.fromisoformat(t): w for t, w in stored["shortfall"].items()},
    )
