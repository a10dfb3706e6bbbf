"""The live model of the site, fed by the OCPP bridge's events.

It knows which chargers are online, which EVs are plugged in and how much power each draws,
and it turns the chargers' energy registers into energy per ISP per charger (the measurement
behind delivery and settlement, and the history the forecaster learns from). Everything it must
not forget is written to the store in batches: sessions when they change, energy per ISP and the
register baselines every `flush_interval_s`. The baselines make the accounting survive a crash:
after a restart the first reading's advance is spread over the time the agent was down instead
of being lost.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.runtime.loops import DeathHook, SupervisedLoop
from agent.site.energy import EnergyAccumulator
from agent.storage import store
from agent.storage.db import Database
from ocpp_bridge import (
    BootInfo,
    CapabilitiesKnown,
    ChargerConnected,
    ChargerDisconnected,
    ChargerSeen,
    ConnectorStatus,
    Event,
    EvseStatusChanged,
    MeterSample,
    SessionEnded,
    SessionInfo,
    SessionStarted,
    SessionUpdated,
)

log = logging.getLogger(__name__)

# Stop reason of a session row the store held open while the live model had no such session.
STORE_ONLY = "NotOpenInAgent"


@dataclass
class EvseState:
    evse_id: int
    status: ConnectorStatus | None = None
    session_id: str | None = None
    power_w: float = 0.0
    energy_wh: float | None = None
    at: datetime | None = None


@dataclass
class ChargerState:
    charger_id: str
    congestion_point: str | None
    online: bool = False
    boot: BootInfo | None = None
    last_seen: datetime | None = None
    evses: dict[int, EvseState] = field(default_factory=dict)
    # The limit the charger holds by its own word (accepted, and read back where it was),
    # where it comes from (agent.control.dispatch.AppliedLimit) and whether it takes profiles
    # at all.
    limit_w: float | None = None
    limit_source: str | None = None
    controllable: bool | None = None

    @property
    def power_w(self) -> float:
        """Power now: the EVSEs' sum, or the main meter (EVSE 0) when only it reports."""
        evses = [e for e in self.evses.values() if e.evse_id > 0]
        if any(e.at is not None for e in evses):
            return sum(e.power_w for e in evses)
        main = self.evses.get(0)
        return main.power_w if main is not None else 0.0


@dataclass
class ActiveSession:
    info: SessionInfo
    congestion_point: str | None
    power_w: float = 0.0
    updated_at: datetime | None = None
    # The most the EV drew while its charger allowed more: what the car itself can take
    # (a one-phase 3.7 kW car on an 11 kW charger). None until such a moment was seen.
    ev_max_w: float | None = None
    # The charger says the EV takes nothing now (OCPP SuspendedEV): full, or done for now.
    ev_suspended: bool = False
    # Phases the EV draws on (from per-phase currents): a one-phase car on a three-phase
    # charger draws a third of a limit given in three-phase watts.
    ev_phases: int | None = None


SiteListener = Callable[[Event], None]


class Site:
    """Service component holding the site's live state; `handle` is the bridge's callback."""

    name = "site"

    def __init__(
        self,
        config: Config,
        db: Database,
        clock: Clock,
        *,
        flush_interval_s: float = 15.0,
    ) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.isp_seconds = config.isp_duration_min * 60
        self.flush_interval_s = flush_interval_s
        self.chargers: dict[str, ChargerState] = {}
        self.sessions: dict[str, ActiveSession] = {}
        self._energy = EnergyAccumulator(self.isp_seconds)
        self._main_meter: set[str] = set()
        self._dirty_sessions: dict[str, store.SessionRow] = {}
        self._boots: list[tuple[str, datetime, BootInfo]] = []
        self._listeners: list[SiteListener] = []
        # Where the sessions open at the last stop go on start (the OCPP bridge's models).
        self.resume_into: Callable[[Sequence[SessionInfo]], None] | None = None
        self._flusher: SupervisedLoop | None = None
        # Told when the flush loop dies (the app raises the loop fault).
        self.on_loop_death: DeathHook | None = None
        self.started_at = clock.now()
        self._flush_lock = asyncio.Lock()
        self._cp_of = {c.id: config.congestion_point_of(c) for c in config.ocpp.chargers}
        self._default_cp = (
            config.congestion_points[0].entity_address
            if len(config.congestion_points) == 1
            else None
        )

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        def load(
            conn: sqlite3.Connection,
        ) -> tuple[list[store.SessionRow], list[tuple[str, datetime, float]]]:
            return store.open_sessions(conn), store.meter_baselines(conn)

        open_rows, baselines = await self.db.read(load)
        for meter, at, register in baselines:
            self._energy.restore(meter, at, register)
            charger_id, _, evse = meter.rpartition("/")
            if evse == "0":
                self._main_meter.add(charger_id)
        for row in open_rows:
            info = SessionInfo(
                session_id=row.session_id,
                charger_id=row.charger_id,
                evse_id=row.evse_id,
                transaction_id=row.session_id.rpartition("/")[2],
                id_token=None,
                started_at=row.started_at,
                energy_wh=row.energy_wh,
                requested_energy_wh=row.requested_energy_wh,
                departure_time=row.departure_at,
                soc_percent=row.soc_percent,
                meter_start_wh=row.meter_start_wh,
            )
            self.sessions[row.session_id] = ActiveSession(info, row.congestion_point)
        if open_rows:
            log.info("resumed open sessions from the store", extra={"sessions": len(open_rows)})
        if self.resume_into is not None:
            self.resume_into([s.info for s in self.sessions.values()])
        # Real seconds, whatever the clock: batching is about disk writes, not market time.
        self._flusher = SupervisedLoop(
            "site-flush",
            self._flush_step,
            interval_s=self.flush_interval_s,
            initial_delay_s=self.flush_interval_s,
            on_death=self.on_loop_death,
            logger=log,
        )
        self._flusher.start()

    async def stop(self) -> None:
        if self._flusher is not None:
            await self._flusher.stop()
            self._flusher = None
        await self.flush()

    def subscribe(self, listener: SiteListener) -> None:
        """Call `listener(event)` after the site has applied each event (must not block)."""
        self._listeners.append(listener)

    # --- queries ------------------------------------------------------------------------------

    def congestion_point_of(self, charger_id: str) -> str | None:
        return self._cp_of.get(charger_id, self._default_cp)

    def power_w(self, congestion_point: str | None = None) -> float:
        return sum(
            c.power_w
            for c in self.chargers.values()
            if c.online and (congestion_point is None or c.congestion_point == congestion_point)
        )

    async def isp_energy(
        self, congestion_point: str, start: datetime, end: datetime
    ) -> dict[int, float]:
        """Wh per ISP start (epoch s) in [start, end): what the store holds plus what was
        counted since the last write, so the ISP in progress and just-finished ones are
        current. (Under the flush lock: a batch is either still here or already stored.)"""
        async with self._flush_lock:
            out = await self.db.read(
                lambda c: store.congestion_point_energy(c, congestion_point, start, end)
            )
            for (meter, bucket), wh in self._energy.pending().items():
                if not start <= bucket < end:
                    continue
                if self.congestion_point_of(meter.rpartition("/")[0]) == congestion_point:
                    key = int(bucket.timestamp())
                    out[key] = out.get(key, 0.0) + wh
        return out

    def reported_until(self, congestion_point: str, now: datetime) -> datetime:
        """The moment up to which the congestion point's energy is known: the oldest last
        reading among the meters behind an active session on an online charger (an idle
        EVSE draws nothing); `now` when there is none. An ISP that ended by then is measured
        completely."""
        until = now
        for active in self.sessions.values():
            cid = active.info.charger_id
            state = self.chargers.get(cid)
            if active.congestion_point != congestion_point or state is None or not state.online:
                continue
            meter = f"{cid}/0" if cid in self._main_meter else f"{cid}/{active.info.evse_id}"
            at = self._energy.last_reading_at(meter)
            if at is None:
                at = active.info.started_at or now
            until = min(until, at)
        return until

    def active_sessions(self, congestion_point: str | None = None) -> list[ActiveSession]:
        return [
            s
            for s in self.sessions.values()
            if congestion_point is None or s.congestion_point == congestion_point
        ]

    def charger(self, charger_id: str) -> ChargerState:
        state = self.chargers.get(charger_id)
        if state is None:
            state = ChargerState(charger_id, self.congestion_point_of(charger_id))
            self.chargers[charger_id] = state
        return state

    # --- events -------------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        self.apply(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("site listener failed on %s", type(event).__name__)

    def apply(self, event: Event) -> None:
        """Update the live model (pure bookkeeping; persistence happens in `flush`)."""
        match event:
            case ChargerConnected(charger_id=cid, at=at, boot=boot):
                charger = self.charger(cid)
                charger.online = True
                charger.boot = boot
                self._seen(charger, at)
                self._boots.append((cid, at, boot))
                log.info(
                    "charger %s online: %s %s, firmware %s, OCPP %s",
                    cid,
                    boot.vendor,
                    boot.model,
                    boot.firmware_version or "unknown",
                    boot.protocol,
                    extra={"charger_id": cid},
                )
            case ChargerDisconnected(charger_id=cid, at=at, reason=reason):
                charger = self.charger(cid)
                charger.online = False
                self._seen(charger, at)
                for evse in charger.evses.values():
                    evse.power_w = 0.0
                    self._energy.forget(f"{cid}/{evse.evse_id}")
                log.info("charger %s disconnected: %s", cid, reason, extra={"charger_id": cid})
            case ChargerSeen(charger_id=cid, at=at) | CapabilitiesKnown(charger_id=cid, at=at):
                self._seen(self.charger(cid), at)
            case EvseStatusChanged(charger_id=cid, evse_id=evse_id, status=status, at=at):
                self._seen(self.charger(cid), at)
                evse = self._evse(cid, evse_id)
                evse.status = status
                if status in (ConnectorStatus.AVAILABLE, ConnectorStatus.UNAVAILABLE):
                    evse.power_w = 0.0
                active = self.sessions.get(evse.session_id or "")
                if active is not None:
                    active.ev_suspended = status is ConnectorStatus.SUSPENDED_EV
            case SessionStarted(session=info, at=at):
                log.info(
                    "session %s started on %s EVSE %d",
                    info.session_id,
                    info.charger_id,
                    info.evse_id,
                    extra={"charger_id": info.charger_id, "session_id": info.session_id},
                )
                self._session_changed(info, at)
            case SessionUpdated(session=info, at=at):
                self._session_changed(info, at)
            case SessionEnded(session=info, at=at):
                log.info(
                    "session %s ended on %s EVSE %d (%s): %s Wh",
                    info.session_id,
                    info.charger_id,
                    info.evse_id,
                    info.stop_reason or "no reason given",
                    "unknown" if info.energy_wh is None else f"{info.energy_wh:.0f}",
                    extra={"charger_id": info.charger_id, "session_id": info.session_id},
                )
                evse = self._evse(info.charger_id, info.evse_id)
                current = evse.session_id
                self._session_changed(info, at)
                self.sessions.pop(info.session_id, None)
                if current in (None, info.session_id):
                    evse.session_id = None
                    evse.power_w = 0.0
                else:
                    # The late end of a session closed before: the newer one goes on.
                    evse.session_id = current
            case MeterSample():
                self._meter(event)

    @staticmethod
    def _seen(charger: ChargerState, at: datetime) -> None:
        if charger.last_seen is None or at > charger.last_seen:
            charger.last_seen = at

    def _evse(self, charger_id: str, evse_id: int) -> EvseState:
        charger = self.charger(charger_id)
        evse = charger.evses.get(evse_id)
        if evse is None:
            evse = EvseState(evse_id)
            charger.evses[evse_id] = evse
        return evse

    def _session_changed(self, info: SessionInfo, at: datetime) -> None:
        cp = self.congestion_point_of(info.charger_id)
        active = self.sessions.get(info.session_id)
        if active is None:
            active = ActiveSession(info, cp)
            self.sessions[info.session_id] = active
        else:
            # Keep what earlier events told when this one leaves a field out.
            merged = replace(
                info,
                started_at=info.started_at or active.info.started_at,
                requested_energy_wh=info.requested_energy_wh
                if info.requested_energy_wh is not None
                else active.info.requested_energy_wh,
                departure_time=info.departure_time or active.info.departure_time,
                soc_percent=info.soc_percent
                if info.soc_percent is not None
                else active.info.soc_percent,
                energy_wh=info.energy_wh if info.energy_wh is not None else active.info.energy_wh,
                meter_start_wh=info.meter_start_wh
                if info.meter_start_wh is not None
                else active.info.meter_start_wh,
            )
            active.info = merged
        active.updated_at = at
        self._seen(self.charger(info.charger_id), at)
        evse = self._evse(info.charger_id, info.evse_id)
        evse.session_id = info.session_id
        current = active.info
        self._dirty_sessions[info.session_id] = store.SessionRow(
            session_id=current.session_id,
            charger_id=current.charger_id,
            evse_id=current.evse_id,
            congestion_point=cp,
            started_at=current.started_at,
            ended_at=current.ended_at,
            energy_wh=current.energy_wh,
            requested_energy_wh=current.requested_energy_wh,
            departure_at=current.departure_time,
            soc_percent=current.soc_percent,
            id_token_hash=store.token_hash(current.id_token),
            stop_reason=current.stop_reason,
            meter_start_wh=current.meter_start_wh,
        )

    def _meter(self, sample: MeterSample) -> None:
        cid = sample.charger_id
        charger = self.charger(cid)
        self._seen(charger, sample.at)
        evse = self._evse(cid, sample.evse_id)
        if sample.power_w is not None:
            evse.power_w = max(0.0, sample.power_w)
        evse.at = sample.at
        if sample.session_id is not None and sample.session_id in self.sessions:
            active = self.sessions[sample.session_id]
            active.power_w = evse.power_w
            active.updated_at = sample.at
            limit = charger.limit_w
            if evse.power_w > 0 and (limit is None or evse.power_w < 0.9 * limit):
                active.ev_max_w = max(active.ev_max_w or 0.0, evse.power_w)
            in_use = sum(1 for a in sample.current_per_phase_a if a is not None and a > 0.5)
            if in_use:
                active.ev_phases = max(active.ev_phases or 0, in_use)
        if sample.energy_wh is None:
            return
        evse.energy_wh = sample.energy_wh
        # One meter per charger for the accounting: the main meter (EVSE 0) when the charger
        # has one, else each EVSE's own; never both, which would count the energy twice.
        if sample.evse_id == 0:
            self._main_meter.add(cid)
        elif cid in self._main_meter:
            return
        # A power derived from the register tells nothing about where in the interval the
        # energy went; only a reported power does.
        power = None if sample.power_derived else sample.power_w
        self._energy.add(f"{cid}/{sample.evse_id}", sample.at, sample.energy_wh, power)

    # --- persistence --------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write energy per ISP, changed sessions, boots and register baselines in one go."""
        async with self._flush_lock:
            drained = self._energy.drain()
            sessions = list(self._dirty_sessions.values())
            self._dirty_sessions.clear()
            boots = list(self._boots)
            self._boots.clear()
            baselines = self._energy.baselines()
            live = set(self.sessions)
            now = self.clock.now()
            per_charger: dict[tuple[str, int], float] = {}
            for (meter, bucket), wh in drained.items():
                cid = meter.rpartition("/")[0]
                key = (cid, int(bucket.timestamp()))
                per_charger[key] = per_charger.get(key, 0.0) + wh
            entries = [
                (cid, isp, self.congestion_point_of(cid), wh)
                for (cid, isp), wh in per_charger.items()
            ]

            def write(conn: sqlite3.Connection) -> None:
                store.add_isp_energy(conn, entries)
                for row in sessions:
                    store.upsert_session(conn, row, now)
                # The store keeps no session open that the live model closed or never had
                # (the bridge closes those the chargers no longer have, with their reason).
                store.close_stale_sessions(conn, live, now, STORE_ONLY)
                for cid, at, boot in boots:
                    store.record_boot(
                        conn,
                        cid,
                        at,
                        vendor=boot.vendor,
                        model=boot.model,
                        serial_number=boot.serial_number,
                        firmware_version=boot.firmware_version,
                        protocol=str(boot.protocol),
                    )
                store.save_meter_baselines(conn, baselines)
                store.record_alive(conn, self.started_at, now)

            try:
                await self.db.transaction(write)
            except BaseException:
                self._energy.give_back(drained)
                for row in sessions:
                    self._dirty_sessions.setdefault(row.session_id, row)
                self._boots[:0] = boots
                raise

    async def _flush_step(self) -> None:
        # What could not be written stays for the next attempt (see `flush`).
        await self.flush()
