"""The AGR's side of the UFTP conversations, as a state machine over persisted records.

Inbound messages wait in uftp's inbox (stored before the HTTP 200). Each is handled in ONE
transaction on the agent's database that records the business decision (request, order,
settlement), queues the signed answer in uftp's outbox and marks the inbound message processed.
A crash at any point leaves either all of that or none of it, so after a restart every pending
message is handled exactly once and answered exactly once.

Work that takes time (sizing an offer, checking whether an offer can still be delivered) is a
second step with its own transaction, driven by persisted state (`offer_state = 'todo'`), so it
too resumes after a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np

from agent.runtime import failpoints
from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.runtime.loops import Backoff, DeathHook, SupervisedLoop, clock_loop
from agent.runtime.observe import Observe, discard, timed
from agent.site.forecasting import SiteForecaster
from agent.site.model import Site
from agent.storage import records, store, trades
from agent.storage.db import Database
from agent.storage.records import (
    OfferState,
    OfferStatus,
    OrderStatus,
    RequestStatus,
    SettlementResult,
    next_status,
)
from agent.trading.market import Market
from agent.trading.metering import metering_message
from agent.trading.offers import OfferPlan, Pricing, RequestElement, falls_short, plan_offer
from agent.trading.prognosis import PrognosisService
from agent.trading.settlement import dispute_by_metering
from ocpp_bridge import ChargerDisconnected, Event, SessionEnded
from uftp import reasons
from uftp import store as uftp_store
from uftp.models import (
    AcceptedDisputed,
    DPrognosisResponse,
    FlexOffer,
    FlexOfferOption,
    FlexOfferResponse,
    FlexOfferRevocation,
    FlexOfferRevocationResponse,
    FlexOrder,
    FlexOrderSettlement,
    FlexOrderSettlementStatus,
    FlexRequest,
    FlexReservationUpdate,
    FlexSettlement,
    MeteringResponse,
    PowerISP,
)
from uftp.participant import AgrParticipant
from uftp.validation import (
    SettledOrder,
    assess_flex_settlement,
    check_direct_flex_order,
    check_flex_order,
    check_flex_request,
    check_flex_reservation_update,
)

log = logging.getLogger(__name__)

# Inbound messages wake the trader at once; this is the poll that catches one whose wake-up
# came while the clock was held.
INBOUND_POLL_S = 5.0
# While the clock is not trusted, how often to look whether offers may go out again.
HOLD_RETRY_S = 1.0


class Trader:
    """Service component: inbound UFTP handling, offer building, revocation and expiry."""

    name = "trader"

    def __init__(
        self,
        config: Config,
        db: Database,
        participant: AgrParticipant,
        forecaster: SiteForecaster,
        prognosis: PrognosisService,
        site: Site,
        clock: Clock,
        *,
        on_order: Callable[[trades.OrderRow], None] | None = None,
        housekeeping_s: float = 60.0,
    ) -> None:
        self.config = config
        self.db = db
        self.participant = participant
        self.forecaster = forecaster
        self.prognosis = prognosis
        self.site = site
        self.clock = clock
        self.market = Market(config.uftp.market_timezone, config.uftp.isp_duration_min)
        self.pricing = Pricing(
            Decimal(str(config.trading.price_fixed)), Decimal(str(config.trading.price_per_kwh))
        )
        self.mutex = {
            cp.entity_address: cp.mutex_offers_supported for cp in config.congestion_points
        }
        self.on_order = on_order
        self.housekeeping_s = housekeeping_s
        self._loops: list[SupervisedLoop] = []
        self._offers: SupervisedLoop | None = None
        self._housekeeping: SupervisedLoop | None = None
        # Told when one of the trader's loops dies (the app raises the loop fault).
        self.on_loop_death: DeathHook | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # agent.interfaces.metrics hook: how long each inbound message took to handle, by type.
        self.observe: Observe = discard
        # Why trading must wait now (the clock guard), or None.
        self.hold: Callable[[], str | None] = lambda: None
        site.subscribe(self._site_event)

    # --- lifecycle ------------------------------------------------------------------------------

    def _soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run `callback` on the event loop: message handling runs on the database thread,
        where asyncio primitives (events to wake other tasks) must not be touched."""
        if self._loop is None:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        inbound = self._supervised(
            "trader-inbound", self._inbound_step, INBOUND_POLL_S, Backoff(1.0, 60.0)
        )
        # No interval: offers are made when something asks for them (a request, an order);
        # the first step answers requests left 'todo' by an earlier run.
        self._offers = self._supervised(
            "trader-offers", self._offer_step, None, Backoff(5.0, 300.0)
        )
        self._housekeeping = self._supervised(
            "trader-housekeeping", self._housekeeping_step, self.housekeeping_s, None
        )
        self._loops = [inbound, self._offers, self._housekeeping]
        self.participant.on_inbound(inbound.wake)
        for loop in self._loops:
            loop.start()

    def _supervised(
        self,
        name: str,
        step: Callable[[], Awaitable[float | None]],
        interval_s: float | None,
        backoff: Backoff | None,
    ) -> SupervisedLoop:
        return clock_loop(
            name,
            step,
            self.clock,
            interval_s=interval_s,
            backoff=backoff,
            on_death=self.on_loop_death,
            logger=log,
        )

    async def stop(self) -> None:
        for loop in self._loops:
            await loop.stop()
        self._loops = []

    def _wake_offers(self) -> None:
        if self._offers is not None:
            self._offers.wake()

    def _site_event(self, event: Event) -> None:
        if isinstance(event, SessionEnded | ChargerDisconnected) and self._housekeeping:
            self._housekeeping.wake()  # flexibility behind open offers may have gone

    # --- inbound --------------------------------------------------------------------------------

    async def _inbound_step(self) -> None:
        if self.hold() is None:  # messages wait in the inbox while the clock is wrong
            await self.process_inbound()

    async def process_inbound(self) -> int:
        """Handle every pending inbound message, oldest first; returns how many."""
        handled = 0
        # Once per call each: a message whose failure could not even be recorded (the disk is
        # full) is due again at once, and must not be retried in a tight loop.
        attempted: set[int] = set()
        while True:
            batch = [m for m in await self.participant.pending(50) if m.id not in attempted]
            if not batch:
                return handled
            for inbound in batch:
                attempted.add(inbound.id)
                order = inbound.message_type == "FlexOrder"
                if order:
                    failpoints.hit(failpoints.TRADER_BEFORE_ORDER)
                try:
                    with timed(self.observe, inbound.message_type):
                        await self.db.transaction(functools.partial(self._handle, inbound=inbound))
                    if order:
                        failpoints.hit(failpoints.TRADER_AFTER_ORDER_COMMIT)
                except Exception as exc:
                    # Stays pending and is tried again with back-off; the DSO hears nothing
                    # of our fault (no rejection, no exception text).
                    await self.participant.defer(inbound, exc)
                    continue
                handled += 1
            self.participant.wake_outbox()

    def _handle(self, conn: sqlite3.Connection, inbound: uftp_store.InboundMessage) -> None:
        message = inbound.message()
        now = self.clock.now()
        match message:
            case FlexRequest():
                self._flex_request(conn, inbound, message, now)
            case FlexOrder():
                self._flex_order(conn, inbound, message, now)
            case FlexSettlement():
                self._flex_settlement(conn, inbound, message, now)
            case FlexReservationUpdate():
                # Bilateral FlexOption contracts are not configured: no reservation to update.
                problems = check_flex_reservation_update(message, None, now)
                self.participant.respond(conn, inbound, problems, request=message)
            case DPrognosisResponse():
                self.prognosis.response_received(conn, message)
                self.participant.mark_processed(conn, inbound)
            case FlexOfferResponse():
                self._offer_response(conn, message)
                self.participant.mark_processed(conn, inbound)
            case FlexOfferRevocationResponse():
                if not message.accepted:
                    log.warning(
                        "the DSO refused a FlexOfferRevocation: %s", message.rejection_reason
                    )
                self.participant.mark_processed(conn, inbound)
            case MeteringResponse():
                if not message.accepted:
                    log.error("the DSO rejected Metering: %s", message.rejection_reason)
                self.participant.mark_processed(conn, inbound)
            case _:
                log.info("ignoring %s from %s", message.xml_name, inbound.sender_domain)
                self.participant.mark_processed(conn, inbound)

    def _flex_request(
        self,
        conn: sqlite3.Connection,
        inbound: uftp_store.InboundMessage,
        request: FlexRequest,
        now: datetime,
    ) -> None:
        previous = trades.highest_request_revision(
            conn, inbound.sender_domain, request.congestion_point, request.period
        )
        problems = check_flex_request(request, now, previous_revision=previous)
        self.participant.respond(conn, inbound, problems, request=request)
        trades.insert_request(
            conn,
            trades.RequestRow(
                message_id=request.message_id,
                conversation_id=request.conversation_id,
                dso_domain=inbound.sender_domain,
                congestion_point=request.congestion_point,
                period=request.period,
                revision=request.revision,
                expires_at=request.expiration_date_time,
                received_at=now,
                isps=[
                    [i.start, i.duration, int(i.requested), i.min_power, i.max_power]
                    for i in request.isps
                ],
                status=RequestStatus.REJECTED if problems else RequestStatus.ACCEPTED,
                reason=reasons.join(problems) or None,
                offer_state=OfferState.NOT_APPLICABLE if problems else OfferState.TODO,
            ),
        )
        log.info(
            "FlexRequest %s",
            "rejected" if problems else "accepted",
            extra={
                "congestion_point": request.congestion_point,
                "period": request.period.isoformat(),
                "revision": request.revision,
                "reason": reasons.join(problems) or "-",
            },
        )
        if not problems:
            self._soon(self._wake_offers)

    def _flex_order(
        self,
        conn: sqlite3.Connection,
        inbound: uftp_store.InboundMessage,
        order: FlexOrder,
        now: datetime,
    ) -> None:
        baseline = order.d_prognosis_message_id
        if order.flex_offer_message_id is None and order.unsolicited:
            problems = check_direct_flex_order(
                order, set(self.config.trading.direct_order_contracts)
            )
        else:
            offer, state = self.participant.offer_for_order(conn, order)
            problems = check_flex_order(order, offer, state, now)
            ours = trades.find_offer(conn, order.flex_offer_message_id or "")
            if ours is not None and ours.prognosis_message_id:
                baseline = ours.prognosis_message_id
            if ours is not None:
                problems += _closed_offer(ours, problems)
        if baseline is None:
            latest = trades.latest_prognosis(conn, order.congestion_point, order.period)
            baseline = None if latest is None else latest.message_id
        self.participant.respond(conn, inbound, problems, request=order)
        row = trades.OrderRow(
            message_id=order.message_id,
            conversation_id=order.conversation_id,
            offer_message_id=order.flex_offer_message_id,
            dso_domain=inbound.sender_domain,
            congestion_point=order.congestion_point,
            period=order.period,
            order_reference=order.order_reference,
            option_reference=order.option_reference,
            activation_factor=float(order.activation_factor),
            price=str(order.price),
            currency=order.currency,
            isps=[[i.start, i.duration, i.power] for i in order.isps],
            baseline_message_id=baseline,
            received_at=now,
            status=OrderStatus.REJECTED if problems else OrderStatus.ACCEPTED,
            reason=reasons.join(problems) or None,
        )
        trades.insert_order(conn, row)
        log.info(
            "FlexOrder %s",
            "rejected" if problems else "accepted",
            extra={
                "order_reference": order.order_reference,
                "congestion_point": order.congestion_point,
                "period": order.period.isoformat(),
                "reason": reasons.join(problems) or "-",
            },
        )
        if problems:
            return
        if order.flex_offer_message_id is not None:
            # Checked above (`_closed_offer`) in this same transaction: a refusal here is a bug,
            # and rolls the whole answer back rather than accept an order for a closed offer.
            trades.apply(conn, records.Event.OFFER_ORDERED, order.flex_offer_message_id)
        # After the commit: dispatch the order and send the prognosis that includes it.
        self.prognosis.request(order.congestion_point, order.period, "order")
        if self.on_order is not None:
            self._soon(self.on_order, row)

    def _offer_response(self, conn: sqlite3.Connection, response: FlexOfferResponse) -> None:
        offer = trades.find_offer(conn, response.flex_offer_message_id)
        if offer is None:
            return
        if response.accepted:
            trades.attempt(conn, records.Event.OFFER_ACCEPTED, offer.message_id)
            return
        log.error(
            "the DSO rejected FlexOffer %s: %s",
            offer.message_id,
            response.rejection_reason,
            extra={"congestion_point": offer.congestion_point},
        )
        trades.attempt(
            conn, records.Event.OFFER_REJECTED, offer.message_id, reason=response.rejection_reason
        )

    def _flex_settlement(
        self,
        conn: sqlite3.Connection,
        inbound: uftp_store.InboundMessage,
        settlement: FlexSettlement,
        now: datetime,
    ) -> None:
        today = self.market.today(now)
        orders = trades.accepted_orders(conn, dso_domain=inbound.sender_domain)
        ours = [
            SettledOrder(
                order_reference=o.order_reference,
                period=o.period,
                congestion_point=o.congestion_point,
                price=Decimal(o.price),
                ordered_power=o.change_per_isp(),
            )
            for o in orders
        ]
        already = trades.settled_already(
            conn, inbound.sender_domain, settlement.period_start, settlement.period_end
        )
        assessment = assess_flex_settlement(settlement, ours, today, already_settled=already)
        statuses = [
            self._with_measurement(conn, item, status)
            for item, status in zip(
                settlement.flex_order_settlements, assessment.statuses, strict=True
            )
        ]
        self.participant.respond(
            conn,
            inbound,
            assessment.rejections,
            request=settlement,
            flex_order_settlement_statuses=statuses,
        )
        trades.insert_settlement(
            conn,
            settlement.message_id,
            inbound.sender_domain,
            settlement.period_start,
            settlement.period_end,
            now,
            SettlementResult.REJECTED if assessment.rejections else SettlementResult.ACCEPTED,
            [
                {
                    "order_reference": s.order_reference,
                    "disposition": str(s.disposition),
                    "dispute_reason": s.dispute_reason,
                }
                for s in statuses
            ],
        )
        disputed = sum(s.disposition is AcceptedDisputed.DISPUTED for s in statuses)
        log.info(
            "FlexSettlement answered",
            extra={
                "period_start": settlement.period_start.isoformat(),
                "period_end": settlement.period_end.isoformat(),
                "items": len(statuses),
                "disputed": disputed,
                "rejection": reasons.join(assessment.rejections) or "-",
            },
        )

    def _with_measurement(
        self,
        conn: sqlite3.Connection,
        item: object,
        status: FlexOrderSettlementStatus,
    ) -> FlexOrderSettlementStatus:
        """Dispute an item whose ActualPower disagrees with our own metering."""
        assert isinstance(item, FlexOrderSettlement)
        start, end = self.market.bounds(item.period)
        energy = store.congestion_point_energy(conn, item.congestion_point, start, end)
        to_w = 60.0 / self.market.isp_minutes
        measured_w = {
            isp.index: energy.get(int(isp.start.timestamp()), 0.0) * to_w
            for isp in self.market.isps(item.period)
        }
        return dispute_by_metering(
            item,
            status,
            measured_w,
            self.config.trading.settlement_tolerance_w,
            self.config.trading.settlement_tolerance_pct / 100.0,
        )

    # --- offers ---------------------------------------------------------------------------------

    async def _offer_step(self) -> float | None:
        if self.hold() is not None:
            return HOLD_RETRY_S  # offers once the clock is sane
        await self.make_offers()
        return None

    async def make_offers(self) -> int:
        """Answer every accepted request still waiting for its offer; returns offers sent."""
        todo = await self.db.read(trades.requests_to_offer)
        sent = 0
        for request in todo:
            sent += await self._offer_for(request)
        return sent

    async def _plan(
        self, request: trades.RequestRow, now: datetime, exclude_offer: str | None = None
    ) -> tuple[OfferPlan, trades.PrognosisRow]:
        cp, period = request.congestion_point, request.period
        prognosis = await self.prognosis.ensure(cp, period)
        isps = self.market.isps(period)
        n = len(isps)
        open_offers = await self.db.read(
            lambda c: trades.open_offers(c, now, congestion_point=cp, period=period)
        )
        reserved = np.zeros(n)
        for offer in open_offers:
            if offer.message_id == exclude_offer:
                continue
            for index, change in offer.reserved_w.items():
                if 1 <= index <= n:
                    reserved[index - 1] += change
        # EVs on chargers that take no profile cannot be steered: their load is not offered.
        plugged = self.site.active_sessions(cp)
        steered = [self.site.charger(s.info.charger_id).controllable is not False for s in plugged]
        fixed = [s for s, ok in zip(plugged, steered, strict=True) if not ok]
        steerable = [s for s, ok in zip(plugged, steered, strict=True) if ok]
        scenarios = await self.forecaster.scenarios(cp, isps[0].start, n, steerable, now=now)
        uncontrolled = await self.forecaster.uncontrolled_load(isps[0].start, n, fixed, now=now)
        lead = timedelta(minutes=self.config.trading.offer_lead_time_min)
        first_index = 1
        for isp in isps:
            if isp.start >= now + lead:
                first_index = isp.index
                break
        else:
            first_index = n + 1
        elements = [RequestElement(s, d, bool(r), lo, hi) for s, d, r, lo, hi in request.isps]
        plan = await asyncio.to_thread(
            plan_offer,
            elements,
            [float(p) for p in prognosis.power_w],
            scenarios,
            float(self.config.site.connection_capacity_w),
            reserved_w=reserved,
            first_index=first_index,
            isp_minutes=self.market.isp_minutes,
            pricing=self.pricing,
            min_offer_power_w=self.config.trading.min_offer_power_w,
            mutex_options=self.mutex.get(cp, False),
            partial_fractions=self.config.trading.partial_option_fractions,
            uncontrolled_w=uncontrolled,
        )
        return plan, prognosis

    async def _offer_for(self, request: trades.RequestRow) -> int:
        now = self.clock.now()
        if request.expires_at <= now:
            await self.db.transaction(
                lambda c: trades.attempt(
                    c,
                    records.Event.REQUEST_NOT_OFFERED,
                    request.message_id,
                    reason="request expired",
                )
            )
            return 0
        plan, prognosis = await self._plan(request, now)
        if not plan.options:
            reason = plan.no_offer_reason or "no flexibility"
            log.info(
                "no FlexOffer for the request: %s",
                reason,
                extra={"congestion_point": request.congestion_point},
            )
            await self.db.transaction(
                lambda c: trades.attempt(
                    c, records.Event.REQUEST_NOT_OFFERED, request.message_id, reason=reason
                )
            )
            return 0
        offered = sorted({s for o in plan.options for s, _, _ in o.isps})
        first_start = self.market.start_of(request.period, offered[0])
        expires = min(
            now + timedelta(minutes=self.config.trading.offer_validity_min),
            request.expires_at,
            first_start - timedelta(minutes=self.config.trading.offer_lead_time_min),
        )
        if expires <= now:
            await self.db.transaction(
                lambda c: trades.attempt(
                    c,
                    records.Event.REQUEST_NOT_OFFERED,
                    request.message_id,
                    reason="too late to offer",
                )
            )
            return 0
        offer = FlexOffer(
            sender_domain=self.config.uftp.domain,
            recipient_domain=request.dso_domain,
            time_stamp=now,
            conversation_id=request.conversation_id,
            isp_duration=timedelta(minutes=self.market.isp_minutes),
            time_zone=self.market.time_zone,
            period=request.period,
            congestion_point=request.congestion_point,
            expiration_date_time=expires,
            flex_request_message_id=request.message_id,
            d_prognosis_message_id=prognosis.message_id,
            currency=self.config.trading.currency,
            offer_options=tuple(
                FlexOfferOption(
                    option_reference=o.reference,
                    price=o.price,
                    min_activation_factor=o.min_activation_factor,
                    isps=tuple(PowerISP(power=p, start=s, duration=d) for s, d, p in o.isps),
                )
                for o in plan.options
            ),
        )
        row = trades.OfferRow(
            message_id=offer.message_id,
            conversation_id=offer.conversation_id,
            request_message_id=request.message_id,
            dso_domain=request.dso_domain,
            congestion_point=request.congestion_point,
            period=request.period,
            created_at=now,
            expires_at=expires,
            currency=offer.currency,
            options=[
                {
                    "reference": o.reference,
                    "price": str(o.price),
                    "min_activation_factor": str(o.min_activation_factor),
                    "isps": [list(i) for i in o.isps],
                }
                for o in plan.options
            ],
            reserved_w=plan.reserved_w,
            prognosis_message_id=prognosis.message_id,
            status=OfferStatus.SENT,
            reason=None,
            revocation_message_id=None,
        )

        def write(conn: sqlite3.Connection) -> None:
            if not trades.attempt(conn, records.Event.REQUEST_OFFERED, request.message_id):
                return  # answered meanwhile (a restart raced us): never offer twice
            self.participant.enqueue(conn, offer)
            trades.insert_offer(conn, row)

        await self.db.transaction(write)
        self.participant.wake_outbox()
        # Queued, not sent: the outbox logs "delivered" or "delivery failed, will retry" under
        # the same message_id.
        log.info(
            "FlexOffer queued",
            extra={
                "message_id": offer.message_id,
                "congestion_point": request.congestion_point,
                "period": request.period.isoformat(),
                "options": len(plan.options),
                "isps": ",".join(f"{s}+{d}:{p}W" for s, d, p in plan.options[0].isps),
                "price": str(plan.options[0].price),
            },
        )
        return 1

    # --- expiry and revocation ------------------------------------------------------------------

    async def _housekeeping_step(self) -> None:
        if self.hold() is None:
            await self.housekeeping()

    async def send_metering(self) -> list[date]:
        """Metering for the finished days of the last three not yet sent (when configured)."""
        metering = self.config.metering
        if not metering.enabled or metering.ean is None or not self.config.congestion_points:
            return []
        now = self.clock.now()
        today = self.market.today(now)
        if now < self.market.local(today, "01:00"):
            return []  # let the last ISPs of yesterday be flushed and measured first
        dso = self.config.congestion_points[0].dso_domain
        points = [cp.entity_address for cp in self.config.congestion_points]
        sent: list[date] = []
        for back in (3, 2, 1):
            period = today - timedelta(days=back)
            write = functools.partial(
                self._metering_day, period=period, ean=metering.ean, dso=dso, points=points, now=now
            )
            if await self.db.transaction(write):
                sent.append(period)
        if sent:
            self.participant.wake_outbox()
            log.info("Metering queued", extra={"days": ",".join(d.isoformat() for d in sent)})
        return sent

    def _metering_day(
        self,
        conn: sqlite3.Connection,
        *,
        period: date,
        ean: str,
        dso: str,
        points: list[str],
        now: datetime,
    ) -> bool:
        if trades.highest_metering_revision(conn, ean, period):
            return False
        start, end = self.market.bounds(period)
        energy: dict[int, float] = {}
        for cp in points:
            for isp, wh in store.congestion_point_energy(conn, cp, start, end).items():
                energy[isp] = energy.get(isp, 0.0) + wh
        message = metering_message(
            sender=self.config.uftp.domain,
            recipient=dso,
            ean=ean,
            period=period,
            revision=1,
            time_zone=self.market.time_zone,
            isps=self.market.isps(period),
            energy_wh=energy,
            measured=store.uptime(conn, start, end),
            now=now,
        )
        if message is None:
            return False
        self.participant.enqueue(conn, message)
        trades.record_metering(conn, ean, period, 1, message.message_id, now)
        return True

    async def housekeeping(self) -> list[str]:
        """Expire old offers; revoke open ones whose flexibility is gone. Returns revoked ids."""
        await self.send_metering()
        now = self.clock.now()
        expired = await self.db.transaction(lambda c: trades.expire_offers(c, now))
        if expired:
            log.info("offers expired", extra={"offers": len(expired)})
        revoked: list[str] = []
        for offer in await self.db.read(lambda c: trades.open_offers(c, now)):
            why = "the flexibility behind it is no longer there"
            if await self._should_revoke(offer, now) and await self.revoke(offer, why):
                revoked.append(offer.message_id)
        return revoked

    async def _should_revoke(self, offer: trades.OfferRow, now: datetime) -> bool:
        first = min(s for o in offer.options for s, _, _ in o["isps"])
        if self.market.start_of(offer.period, first) <= now:
            return False  # operate phase: no revocation once an offered ISP runs
        if offer.request_message_id is None:
            return False
        request = await self.db.read(
            lambda c: trades.find_request(c, offer.request_message_id or "")
        )
        if request is None:
            return False
        plan, _ = await self._plan(request, now, exclude_offer=offer.message_id)
        achievable = plan.achievable_w or {}
        for start, duration, power in offer.options[0]["isps"]:
            for index in range(start, start + duration):
                can = achievable.get(index, 0.0)
                want = abs(power)
                if falls_short(want, can):
                    log.warning(
                        "offer %s can no longer be delivered in ISP %d: %.0f W of %d W",
                        offer.message_id,
                        index,
                        can,
                        want,
                        extra={"congestion_point": offer.congestion_point},
                    )
                    return True
        return False

    async def revoke(self, offer: trades.OfferRow, why: str) -> bool:
        """Send a FlexOfferRevocation unless an order for the offer exists (then never)."""
        now = self.clock.now()
        revocation = FlexOfferRevocation(
            sender_domain=self.config.uftp.domain,
            recipient_domain=offer.dso_domain,
            time_stamp=now,
            conversation_id=offer.conversation_id,
            flex_offer_message_id=offer.message_id,
        )

        def write(conn: sqlite3.Connection) -> bool:
            revoked = trades.attempt(
                conn,
                records.Event.OFFER_REVOKED,
                offer.message_id,
                reason=why,
                revocation_message_id=revocation.message_id,
            )
            if revoked:  # not when ordered, rejected or expired meanwhile
                self.participant.enqueue(conn, revocation)
            return revoked

        done = await self.db.transaction(write)
        if done:
            self.participant.wake_outbox()
            log.warning(
                "FlexOffer revoked: %s", why, extra={"congestion_point": offer.congestion_point}
            )
        return done


# Why an order for one of our offers is refused when the offer's record is closed, unless uftp's
# validation already said so. The record can be closed where the messages say nothing: the DSO
# itself rejected the offer (FlexOfferResponse), or it was closed in an earlier run.
_CLOSED_OFFER = {
    OfferStatus.REVOKED: (reasons.REFERENCE_MESSAGE_REVOKED, "the FlexOffer was revoked"),
    OfferStatus.EXPIRED: (reasons.REFERENCE_MESSAGE_EXPIRED, "the FlexOffer has expired"),
    OfferStatus.ORDERED: (reasons.OFFER_ALREADY_ORDERED, "a FlexOffer can be ordered only once"),
    OfferStatus.REJECTED: (
        reasons.INVALID_MESSAGE,
        "the FlexOffer it orders was rejected by the DSO's FlexOfferResponse",
    ),
}


def _closed_offer(offer: trades.OfferRow, problems: list[str]) -> list[str]:
    """The rejection an order for `offer` needs because of the offer's status, if any."""
    if next_status(records.Event.OFFER_ORDERED, offer.status) is not None:
        return []
    reason, detail = _CLOSED_OFFER[OfferStatus(offer.status)]
    if any(reasons.reason_of(p) == reason for p in problems):
        return []
    return [reasons.explain(reason, detail)]
