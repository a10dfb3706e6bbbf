"""What a fleet site tells its centre: forecast, flexibility, metering and heartbeat.

Each producer builds its message from what the site already knows (the forecaster, the live
site model, the store), commits it to the outbox (`agent.fleet.store`) together with whatever
records that it was sent, and wakes the link's publisher. So a message is either in the outbox
or was never decided on; a crash never loses one and never sends one the site did not commit.

- **Forecast**, per congestion point: day-ahead at `fleet.forecast_time` (market time) on D-1 for
  the market day D, and for today at once when today's is missing; intraday every
  `fleet.intraday_interval_min` for the rest of today, from the current ISP with the plugged-in
  EVs. P10/P50/P90 per ISP as `agent.site.forecasting` computes them (in a worker process).
- **Flex**, per congestion point, after each forecast, on every session start or end and at
  least every `fleet.flex_interval_s`: per ISP the least power the plugged-in EVs need to
  finish by their (calibrated) departures and the most they could take within the connection
  (`forecaster.flexibility_envelope`), with what they would draw unconstrained as the baseline;
  chargers that take no profile add their expected draw to all three.
- **Metering**, per congestion point, once each ISP is over and the site model has written it:
  the energy per finished ISP, 0 where the agent ran and nothing flowed, None where it did not
  measure (never a guess).
- **Heartbeat** every `fleet.heartbeat_s`: chargers connected, power now, the safe limit.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import numpy as np

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.link import SiteLink
from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.runtime.loops import DeathHook, SupervisedLoop, clock_loop
from agent.site.forecasting import Bands, SiteForecaster
from agent.site.model import ActiveSession, Site
from agent.storage import store
from agent.storage.db import Database
from agent.trading.market import Market
from forecaster.flexibility import allocate, flexibility_envelope
from ocpp_bridge import ChargerConnected, Event, SessionEnded, SessionStarted
from uftp.loops import Step

log = logging.getLogger(__name__)

ISP_S = 900
FLEX_ISPS = 96  # a day ahead from the current ISP
# A finished ISP is reported this long after its end: the chargers' last meter values of it
# have arrived and the site model has written them.
METERING_SETTLE_S = 120.0
DAY_AHEAD_KEY = "fleet.forecast.day_ahead."  # + congestion point: last market day sent
METERING_KEY = "fleet.metering.next."  # + congestion point: first ISP (epoch s) not yet sent


def floor_isp(moment: datetime, isp_s: int = ISP_S) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % isp_s, UTC)


def message_id(site: str, kind: str) -> str:
    return f"{site}.{kind}.{uuid.uuid4().hex}"


# --- pure builders -------------------------------------------------------------------------------


def metering_series(
    start: datetime,
    count: int,
    energy_wh: Mapping[int, float],
    measured: Sequence[tuple[datetime, datetime]],
    isp_s: int = ISP_S,
) -> list[float | None]:
    """Energy per ISP from `start`: what was measured, 0 where the agent ran through the whole
    ISP without any energy, None where it did not run (unknown, not zero)."""
    out: list[float | None] = []
    for k in range(count):
        begin = start + timedelta(seconds=k * isp_s)
        end = begin + timedelta(seconds=isp_s)
        epoch = int(begin.timestamp())
        if epoch in energy_wh:
            out.append(float(energy_wh[epoch]))
        elif any(a <= begin and end <= b for a, b in measured):
            out.append(0.0)
        else:
            out.append(None)
    return out


def forecast_message(
    site: str,
    congestion_point: str,
    start: datetime,
    bands: Bands,
    now: datetime,
) -> protocol.Forecast:
    # Conformal bands are ordered by construction; min/max keeps the wire rule
    # p10 <= p50 <= p90 even where rounding put two of them a hair apart.
    rows = [
        (min(lo, mid, hi), mid, max(lo, mid, hi))
        for lo, mid, hi in zip(bands.p10, bands.p50, bands.p90, strict=True)
    ]
    return protocol.Forecast(
        id=message_id(site, "forecast"),
        site=site,
        sent_at=now,
        start=start,
        congestion_point=congestion_point,
        made_at=now,
        p10_w=[max(0.0, r[0]) for r in rows],
        p50_w=[max(0.0, r[1]) for r in rows],
        p90_w=[max(0.0, r[2]) for r in rows],
    )


# --- the component -------------------------------------------------------------------------------


class FleetProducers:
    """Service component: the site's upstream messages, each committed to the outbox."""

    name = "fleet-producers"

    def __init__(
        self,
        config: Config,
        db: Database,
        site: Site,
        forecaster: SiteForecaster,
        link: SiteLink,
        clock: Clock,
    ) -> None:
        if config.fleet is None:
            raise ValueError("FleetProducers needs a [fleet] section")
        self.config = config
        self.fleet = config.fleet
        self.db = db
        self.site = site
        self.forecaster = forecaster
        self.link = link
        self.clock = clock
        self.site_id = link.site
        self.market = Market(config.market_timezone, config.isp_duration_min)
        self.capacity_w = float(config.site.connection_capacity_w)
        self.congestion_points = [cp.entity_address for cp in config.congestion_points]
        self.on_loop_death: DeathHook | None = None
        self._loops: list[SupervisedLoop] = []
        self._flex: SupervisedLoop | None = None
        self._last_intraday: datetime | None = None
        self.sent: dict[str, int] = {}
        site.subscribe(self._site_event)

    async def start(self) -> None:
        self._flex = self._loop("fleet-flex", self._flex_step, float(self.fleet.flex_interval_s))
        self._loops = [
            self._loop("fleet-heartbeat", self._heartbeat_step, float(self.fleet.heartbeat_s)),
            self._loop("fleet-forecast", self._forecast_step, None),
            self._flex,
            self._loop("fleet-metering", self._metering_step, None),
        ]
        for loop in self._loops:
            loop.start()

    def _loop(self, name: str, step: Step, interval_s: float | None) -> SupervisedLoop:
        return clock_loop(
            name,
            step,
            self.clock,
            interval_s=interval_s,
            on_death=self.on_loop_death,
            logger=log,
        )

    async def stop(self) -> None:
        for loop in reversed(self._loops):
            await loop.stop()
        self._loops = []
        self._flex = None

    def _site_event(self, event: Event) -> None:
        if isinstance(event, SessionStarted | SessionEnded | ChargerConnected):
            self.wake_flex()

    def wake_flex(self) -> None:
        if self._flex is not None:
            self._flex.wake()

    async def _commit(
        self,
        messages: Sequence[fleet_store.UpstreamMessage],
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """The messages in the outbox and what records them sent, in one transaction."""
        now = self.clock.now()

        def write(conn: sqlite3.Connection) -> None:
            for message in messages:
                fleet_store.enqueue(conn, message, now)
            for key, value in (meta or {}).items():
                store.set_meta(conn, key, value)

        await self.db.transaction(write)
        for message in messages:
            self.sent[message.kind] = self.sent.get(message.kind, 0) + 1
        self.link.wake_publisher()

    # --- heartbeat ---------------------------------------------------------------------------

    async def heartbeat_once(self) -> protocol.Heartbeat:
        now = self.clock.now()
        message = protocol.Heartbeat(
            id=message_id(self.site_id, "heartbeat"),
            site=self.site_id,
            sent_at=now,
            chargers_connected=sum(1 for c in self.site.chargers.values() if c.online),
            power_w=self.site.power_w(),
            safe_limit_w=float(self.config.site.effective_safe_limit_w),
        )
        await self._commit([message])
        return message

    async def _heartbeat_step(self) -> None:
        await self.heartbeat_once()

    # --- forecast ----------------------------------------------------------------------------

    async def day_ahead_once(self, period: date) -> list[protocol.Forecast]:
        """The forecast of a market day's ISPs still to come, per congestion point."""
        now = self.clock.now()
        current = floor_isp(now)
        targets = [i.start for i in self.market.isps(period) if i.start >= current]
        if not targets or not self.congestion_points:
            return []
        bands = await self.forecaster.forecast(self.congestion_points, targets)
        messages = [
            forecast_message(self.site_id, cp, targets[0], bands[cp], now)
            for cp in self.congestion_points
        ]
        await self._commit(
            messages, {DAY_AHEAD_KEY + cp: period.isoformat() for cp in self.congestion_points}
        )
        log.info("day-ahead forecast queued for the centre", extra={"period": str(period)})
        self.wake_flex()
        return messages

    async def intraday_once(self) -> list[protocol.Forecast]:
        """The rest of today from the next ISP on, with the EVs plugged in now."""
        now = self.clock.now()
        origin = floor_isp(now)
        today = self.market.today(now)
        targets = [i.start for i in self.market.isps(today) if i.start > origin]
        self._last_intraday = now
        if not targets or not self.congestion_points:
            return []
        messages = []
        for cp in self.congestion_points:
            sessions = self.site.active_sessions(cp)
            bands = await self.forecaster.forecast([cp], targets, origin=origin, sessions=sessions)
            messages.append(forecast_message(self.site_id, cp, targets[0], bands[cp], now))
        await self._commit(messages)
        self.wake_flex()
        return messages

    async def _sent_day(self, cp: str) -> date | None:
        raw = await self.db.read(lambda c: store.get_meta(c, DAY_AHEAD_KEY + cp))
        return None if raw is None else date.fromisoformat(raw)

    async def _forecast_step(self) -> float:
        now = self.clock.now()
        today = self.market.today(now)
        tomorrow = today + timedelta(days=1)
        due = self.market.local(today, self.fleet.forecast_time)
        sent = [await self._sent_day(cp) for cp in self.congestion_points]
        if any(day is None or day < today for day in sent):
            await self.day_ahead_once(today)
            sent = [today] * len(sent)
        if now >= due and any(day is None or day < tomorrow for day in sent):
            await self.day_ahead_once(tomorrow)
        interval = timedelta(minutes=self.fleet.intraday_interval_min)
        if self._last_intraday is None:
            self._last_intraday = now  # today's day-ahead (or the last) stands for a while
        elif now - self._last_intraday >= interval:
            await self.intraday_once()
        next_due = due if now < due else self.market.local(tomorrow, self.fleet.forecast_time)
        next_intraday = self._last_intraday + interval
        return max(1.0, (min(next_due, next_intraday) - self.clock.now()).total_seconds())

    # --- flexibility -------------------------------------------------------------------------

    async def flex_once(self) -> list[protocol.Flex]:
        now = self.clock.now()
        start = floor_isp(now)
        isp_min = self.config.isp_duration_min
        limit = np.full(FLEX_ISPS, self.capacity_w)
        online = {cid for cid, c in self.site.chargers.items() if c.online}
        messages = []
        for cp in self.congestion_points:
            plugged = [s for s in self.site.active_sessions(cp) if s.info.charger_id in online]
            fixed = [
                s for s in plugged if self.site.charger(s.info.charger_id).controllable is False
            ]
            steerable = [s for s in plugged if not _among(s, fixed)]
            [sessions] = await self.forecaster.scenarios(
                cp, start, FLEX_ISPS, steerable, now=now, days=0
            )
            drawn = await self.forecaster.uncontrolled_load(start, FLEX_ISPS, fixed, now=now)
            room = np.maximum(limit - drawn, 0.0)
            envelope = flexibility_envelope(sessions, room, FLEX_ISPS, isp_min)
            free = allocate(sessions, room, room, isp_min).site_w
            messages.append(
                protocol.Flex(
                    id=message_id(self.site_id, "flex"),
                    site=self.site_id,
                    sent_at=now,
                    start=start,
                    congestion_point=cp,
                    made_at=now,
                    valid_until=now + timedelta(seconds=self.fleet.flex_interval_s),
                    baseline_w=_watts(np.asarray(free) + drawn),
                    min_w=_watts(envelope.lower_w + drawn),
                    max_w=_watts(np.maximum(envelope.upper_w, envelope.lower_w) + drawn),
                )
            )
        if messages:
            await self._commit(messages)
        return messages

    async def _flex_step(self) -> None:
        await self.flex_once()

    # --- metering ----------------------------------------------------------------------------

    async def metering_once(self) -> list[protocol.Metering]:
        """Finished ISPs not reported yet, per congestion point (the first time: the last one)."""
        await self.site.flush()
        now = self.clock.now()
        end = floor_isp(now - timedelta(seconds=METERING_SETTLE_S))
        messages: list[protocol.Metering] = []
        marks: dict[str, str] = {}

        def read(conn: sqlite3.Connection) -> None:
            for cp in self.congestion_points:
                raw = store.get_meta(conn, METERING_KEY + cp)
                first = end - timedelta(seconds=ISP_S)
                if raw is not None:
                    first = datetime.fromtimestamp(int(raw), UTC)
                count = min(int((end - first).total_seconds()) // ISP_S, protocol.MAX_ISPS)
                if count <= 0:
                    continue
                until = first + timedelta(seconds=count * ISP_S)
                energy = store.congestion_point_energy(conn, cp, first, until)
                measured = store.uptime(conn, first, until)
                messages.append(
                    protocol.Metering(
                        id=message_id(self.site_id, "metering"),
                        site=self.site_id,
                        sent_at=now,
                        start=first,
                        congestion_point=cp,
                        energy_wh=metering_series(first, count, energy, measured),
                    )
                )
                marks[METERING_KEY + cp] = str(int(until.timestamp()))

        await self.db.read(read)
        if messages:
            await self._commit(messages, marks)
        return messages

    async def _metering_step(self) -> float:
        await self.metering_once()
        now = self.clock.now()
        next_end = floor_isp(now - timedelta(seconds=METERING_SETTLE_S)) + timedelta(seconds=ISP_S)
        due = next_end + timedelta(seconds=METERING_SETTLE_S)
        return max(1.0, (due - now).total_seconds())


def _among(session: ActiveSession, sessions: Sequence[ActiveSession]) -> bool:
    return any(session is other for other in sessions)


def _watts(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.maximum(values, 0.0)]
