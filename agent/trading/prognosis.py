"""D-prognoses: what we tell the DSO each congestion point will draw, per ISP, per day.

When a revision goes out:
- **day-ahead** for tomorrow at `trading.prognosis_time` (local market time), and for today as
  soon as the agent runs without one;
- **after every accepted FlexOrder**, so the prognosis includes the order (the DSO's baseline for
  the next offers and the check that the order was taken into account);
- **intraday** when the forecast with the plugged-in EVs moves more than
  `trading.intraday_threshold_w` away from the prognosis in a future ISP;
- again after the DSO rejected one for "Subordinate sequence number".

A revision covers every ISP of the day (92/96/100). ISPs that have begun keep the value of the
previous revision: the past cannot be re-forecast. Revisions only grow: the next one is computed
inside the transaction that records it, from the highest stored, so a restart or two tasks
racing cannot reuse a number. After "Subordinate sequence number" (our database was restored, or
another system used the numbers) the next revision jumps to the current Unix time, which is above
any counter the DSO can have seen from us.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.runtime.loops import DeathHook, SupervisedLoop, clock_loop
from agent.site.forecasting import SiteForecaster
from agent.site.model import Site
from agent.storage import store, trades
from agent.storage.db import Database
from agent.storage.records import Event, PrognosisStatus
from agent.trading.market import Market
from agent.trading.orders import OrderedIsp, load_context, prognosis_with_orders
from forecaster.worker import WorkerError
from uftp import calendar
from uftp.models import DPrognosis, DPrognosisISP, DPrognosisResponse
from uftp.participant import Participant

log = logging.getLogger(__name__)

SUBORDINATE = "Subordinate sequence number"


def prognosis_power(
    forecast_w: Sequence[float],
    previous: trades.PrognosisRow | None,
    first_open: int,
    targets: Mapping[int, OrderedIsp],
) -> tuple[list[int], list[int]]:
    """(power, baseline) per ISP: the forecast with the accepted orders, past ISPs frozen.

    `first_open` is the first ISP (1-based) that has not begun; before it the previous
    revision's values stand. An ordered ISP says what the order makes of it: the order's
    target where it reduces (never above the forecast), at least the target where it raises.
    """
    baseline = [max(0, round(f)) for f in forecast_w]
    ordered = prognosis_with_orders(baseline, targets)
    power: list[int] = []
    for index in range(1, len(baseline) + 1):
        if previous is not None and index < first_open and index <= len(previous.power_w):
            baseline[index - 1] = previous.baseline_w[index - 1]
            power.append(previous.power_w[index - 1])
        else:
            power.append(ordered[index - 1])
    return power, baseline


@dataclass
class _Wanted:
    reason: str


class PrognosisService:
    """Service component that keeps every congestion point's D-prognoses current."""

    name = "prognosis"

    def __init__(
        self,
        config: Config,
        db: Database,
        participant: Participant,
        forecaster: SiteForecaster,
        site: Site,
        clock: Clock,
        *,
        tick_s: float = 60.0,
    ) -> None:
        self.config = config
        self.db = db
        self.participant = participant
        self.forecaster = forecaster
        self.site = site
        self.clock = clock
        self.market = Market(config.uftp.market_timezone, config.uftp.isp_duration_min)
        self.tick_s = tick_s
        self._dso = {cp.entity_address: cp.dso_domain for cp in config.congestion_points}
        self._wanted: dict[tuple[str, date], _Wanted] = {}
        self._loop_task: SupervisedLoop | None = None
        # Told when the prognosis loop dies (the app raises the loop fault).
        self.on_loop_death: DeathHook | None = None
        self._lock = asyncio.Lock()
        self._last_intraday: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Why prognoses must wait now (the clock guard), or None.
        self.hold: Callable[[], str | None] = lambda: None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_task = clock_loop(
            "prognosis",
            self._step,
            self.clock,
            interval_s=self.tick_s,
            on_death=self.on_loop_death,
            logger=log,
        )
        self._loop_task.start()

    async def stop(self) -> None:
        if self._loop_task is not None:
            await self._loop_task.stop()
            self._loop_task = None

    def _wake(self) -> None:
        if self._loop_task is not None:
            self._loop_task.wake()

    # --- triggers -------------------------------------------------------------------------------

    def wake(self) -> None:
        """A round now (the clock guard trusts the clock again)."""
        self._wake()

    def request(self, congestion_point: str, period: date, reason: str) -> None:
        """Ask for a new revision soon (after an order, after a rejection).

        Safe from any thread: the trader calls it inside database transactions, which run on
        the database thread, and asyncio primitives only work on their own loop.
        """
        if self._loop is not None and not _on_loop(self._loop):
            self._loop.call_soon_threadsafe(self.request, congestion_point, period, reason)
            return
        self._wanted[(congestion_point, period)] = _Wanted(reason)
        self._wake()

    def response_received(self, conn: sqlite3.Connection, response: DPrognosisResponse) -> None:
        """Record the DSO's answer (in the caller's transaction) and act on a rejection."""
        sent = trades.prognosis_by_message(conn, response.d_prognosis_message_id)
        if sent is None:
            log.warning("D-PrognosisResponse for an unknown D-Prognosis")
            return
        if response.accepted:
            if not trades.attempt(conn, Event.PROGNOSIS_ACCEPTED, sent.message_id):
                return  # answered before: the first answer stands
            for status in response.flex_order_statuses:
                if not status.is_validated:
                    log.warning(
                        "the DSO says revision %d does not reflect FlexOrder %s",
                        sent.revision,
                        status.flex_order_message_id,
                        extra={"congestion_point": sent.congestion_point},
                    )
            return
        reason = response.rejection_reason or "no reason given"
        if not trades.attempt(
            conn, Event.PROGNOSIS_REJECTED, sent.message_id, rejection_reason=reason
        ):
            return
        log.error(
            "the DSO rejected D-Prognosis revision %d for %s: %s",
            sent.revision,
            sent.period,
            reason,
            extra={"congestion_point": sent.congestion_point},
        )
        if SUBORDINATE in reason:
            floor = int(self.clock.now().timestamp())
            store.set_meta(conn, _floor_key(sent.congestion_point, sent.period), str(floor))
            self.request(sent.congestion_point, sent.period, "resend")
        # Other reasons (ISP duration, time zone, congestion point) are configuration
        # mismatches a new revision cannot fix: they stay logged and visible in the status.

    # --- the loop -------------------------------------------------------------------------------

    async def _step(self) -> None:
        if self.hold() is not None:  # no prognosis on a clock not to trust
            return
        try:
            await self.tick()
        except WorkerError:
            # Logged by the forecaster in one line; the last revision stays in effect and the
            # next tick tries again (no back-off: the loop has not failed).
            log.info("D-prognosis round without a forecast; retrying at the next tick")

    async def tick(self) -> None:
        now = self.clock.now()
        today = self.market.today(now)
        tomorrow = today + timedelta(days=1)
        day_ahead_due = now >= self.market.local(today, self.config.trading.prognosis_time)
        for cp in self._dso:
            wanted: list[tuple[date, str]] = []
            if await self._latest(cp, today) is None:
                wanted.append((today, "day-ahead"))
            if day_ahead_due and await self._latest(cp, tomorrow) is None:
                wanted.append((tomorrow, "day-ahead"))
            # An accepted order the latest revision does not include yet (also after a crash
            # between accepting the order and sending its revision: the store says so).
            for period in await self._periods_missing_orders(cp, today):
                if all(p != period for p, _ in wanted):
                    wanted.append((period, "order"))
            for period, reason in wanted:
                self._wanted.pop((cp, period), None)
                if reason == "day-ahead":
                    await self.ensure(cp, period)  # unless an offer sent it meanwhile
                else:
                    await self.send(cp, period, reason)
        for (cp, period), want in list(self._wanted.items()):
            del self._wanted[(cp, period)]
            await self.send(cp, period, want.reason)
        await self._intraday(now, today)

    async def _periods_missing_orders(self, congestion_point: str, today: date) -> list[date]:
        def read(conn: sqlite3.Connection) -> list[date]:
            missing: list[date] = []
            orders = trades.accepted_orders(conn, congestion_point=congestion_point, since=today)
            for period in sorted({o.period for o in orders}):
                latest = trades.latest_prognosis(conn, congestion_point, period)
                included = set(latest.orders) if latest else set()
                if any(o.period == period and o.message_id not in included for o in orders):
                    missing.append(period)
            return missing

        return await self.db.read(read)

    async def _latest(self, congestion_point: str, period: date) -> trades.PrognosisRow | None:
        return await self.db.read(lambda c: trades.latest_prognosis(c, congestion_point, period))

    async def ensure(self, congestion_point: str, period: date) -> trades.PrognosisRow:
        """The current prognosis of the day, sending one first if there is none. Looked up
        and sent under the send lock: the prognosis loop's day-ahead and an offer that needs
        the day's baseline must not both find none and send two first revisions."""
        async with self._lock:
            latest = await self._latest(congestion_point, period)
            if latest is not None:
                return latest
            return await self._send_locked(congestion_point, period, "day-ahead")

    async def _intraday(self, now: datetime, today: date) -> None:
        period, current = self.market.locate(now)
        if period != today:
            return
        isps = self.market.isps(today)
        if current >= len(isps):
            return
        origin = isps[current - 1].start
        targets = [isp.start for isp in isps[current:]]
        sessions = self.site.active_sessions()
        for cp in self._dso:
            if self._last_intraday.get(cp) == current:
                continue  # once per ISP is enough
            latest = await self._latest(cp, today)
            if latest is None:
                continue
            interval = timedelta(minutes=self.config.trading.intraday_min_interval_min)
            if now - latest.created_at < interval:
                continue
            self._last_intraday[cp] = current
            bands = await self.forecaster.forecast([cp], targets, origin=origin, sessions=sessions)
            forecast = bands[cp].p50
            drift = max(
                abs(forecast[k] - latest.baseline_w[current + k]) for k in range(len(forecast))
            )
            if drift > self.config.trading.intraday_threshold_w:
                log.info(
                    "intraday forecast moved %.0f W from the prognosis: new revision",
                    drift,
                    extra={"congestion_point": cp},
                )
                full = list(latest.baseline_w[:current]) + forecast
                await self.send(cp, today, "intraday", forecast_w=full, first_open=current + 1)

    # --- sending --------------------------------------------------------------------------------

    async def send(
        self,
        congestion_point: str,
        period: date,
        reason: str,
        *,
        forecast_w: Sequence[float] | None = None,
        first_open: int | None = None,
    ) -> trades.PrognosisRow:
        """Send the next revision of the day's prognosis; returns what was recorded."""
        async with self._lock:
            return await self._send_locked(
                congestion_point, period, reason, forecast_w=forecast_w, first_open=first_open
            )

    async def _send_locked(
        self,
        congestion_point: str,
        period: date,
        reason: str,
        *,
        forecast_w: Sequence[float] | None = None,
        first_open: int | None = None,
    ) -> trades.PrognosisRow:
        """`send`, with the lock already held."""
        now = self.clock.now()
        isps = self.market.isps(period)
        if forecast_w is None:
            bands = await self.forecaster.forecast([congestion_point], [i.start for i in isps])
            forecast_w = bands[congestion_point].p50
        if first_open is None:
            first_open = 1
            located, index = self.market.locate(now)
            if located == period:
                first_open = index + 1
            elif located > period:
                first_open = len(isps) + 1
        dso = self._dso[congestion_point]
        forecast = list(forecast_w)
        opened = first_open

        def write(conn: sqlite3.Connection) -> trades.PrognosisRow:
            floor = int(store.get_meta(conn, _floor_key(congestion_point, period)) or 0)
            revision = max(trades.highest_revision(conn, congestion_point, period) + 1, floor)
            previous = trades.latest_prognosis(conn, congestion_point, period)
            context = load_context(conn, congestion_point=congestion_point, period=period)
            orders = context.orders
            targets = {t.index: t for t in context.targets(self.market).values()}
            power, baseline = prognosis_power(forecast, previous, opened, targets)
            message = DPrognosis(
                sender_domain=self.config.uftp.domain,
                recipient_domain=dso,
                time_stamp=now,
                conversation_id=str(uuid.uuid4()),
                isp_duration=timedelta(minutes=self.market.isp_minutes),
                time_zone=self.market.time_zone,
                period=period,
                congestion_point=congestion_point,
                revision=revision,
                isps=tuple(
                    DPrognosisISP(power=run.value, start=run.start, duration=run.duration)
                    for run in calendar.compress_runs(power)
                ),
            )
            self.participant.enqueue(conn, message)
            row = trades.PrognosisRow(
                congestion_point=congestion_point,
                period=period,
                revision=revision,
                message_id=message.message_id,
                conversation_id=message.conversation_id,
                dso_domain=dso,
                created_at=now,
                reason=reason,
                power_w=power,
                baseline_w=baseline,
                orders=[o.message_id for o in orders],
                status=PrognosisStatus.SENT,
                rejection_reason=None,
            )
            trades.insert_prognosis(conn, row)
            return row

        row = await self.db.transaction(write)
        self.participant.wake_outbox()
        # Queued, not sent: the outbox delivers it and logs "delivered" or "delivery
        # failed, will retry" (with retry_at) under the same message_id.
        log.info(
            "D-Prognosis queued",
            extra={
                "message_id": row.message_id,
                "congestion_point": congestion_point,
                "period": period.isoformat(),
                "revision": row.revision,
                "why": reason,
                "isps": len(row.power_w),
                "energy_kwh": round(sum(row.power_w) * self.market.isp_minutes / 60_000, 1),
            },
        )
        return row


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _floor_key(congestion_point: str, period: date) -> str:
    return f"prognosis-revision-floor:{congestion_point}:{period.isoformat()}"
