"""The live model of one charger, fed version-neutral facts, returning the events they cause.

No I/O: the connection handlers translate 1.6/2.0.1 payloads into calls on `ChargerModel`
and publish what it returns. Sessions, EVSE status, meter registers for power derivation and
EV needs live here, so the rules (energy = register now - register at start, status only on
change, a transaction first seen mid-way is still a session) are tested without sockets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ocpp_bridge.capabilities import ChargerCapabilities
from ocpp_bridge.events import (
    BootInfo,
    CapabilitiesKnown,
    ChargerConnected,
    ChargerDisconnected,
    ChargerSeen,
    ConnectorStatus,
    Event,
    EvseSnapshot,
    EvseStatusChanged,
    MeterSample,
    ProtocolVersion,
    SessionEnded,
    SessionInfo,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.metering import MeterReading, derive_power_w

V16_STATUS = {
    "Available": ConnectorStatus.AVAILABLE,
    "Preparing": ConnectorStatus.OCCUPIED,
    "Charging": ConnectorStatus.CHARGING,
    "SuspendedEVSE": ConnectorStatus.SUSPENDED_EVSE,
    "SuspendedEV": ConnectorStatus.SUSPENDED_EV,
    "Finishing": ConnectorStatus.OCCUPIED,
    "Reserved": ConnectorStatus.RESERVED,
    "Unavailable": ConnectorStatus.UNAVAILABLE,
    "Faulted": ConnectorStatus.FAULTED,
}
V201_STATUS = {
    "Available": ConnectorStatus.AVAILABLE,
    "Occupied": ConnectorStatus.OCCUPIED,
    "Reserved": ConnectorStatus.RESERVED,
    "Unavailable": ConnectorStatus.UNAVAILABLE,
    "Faulted": ConnectorStatus.FAULTED,
}
# 2.0.1 TransactionEvent.transactionInfo.chargingState refines an occupied EVSE; Idle says
# nothing the connector status does not.
V201_CHARGING_STATE = {
    "Charging": ConnectorStatus.CHARGING,
    "EVConnected": ConnectorStatus.OCCUPIED,
    "SuspendedEV": ConnectorStatus.SUSPENDED_EV,
    "SuspendedEVSE": ConnectorStatus.SUSPENDED_EVSE,
}


# Reasons recorded for sessions the agent closes itself (the charger's own are OCPP reasons).
SUPERSEDED = "Superseded"  # a newer transaction started on the same EVSE
GONE_AVAILABLE = "ReconciledAvailable"  # the connector reports Available: no transaction
GONE_NOT_ONGOING = "ReconciledNotOngoing"  # GetTransactionStatus: not ongoing, nothing queued
NO_SIGN_OF_LIFE = "NoSignOfLife"  # nothing heard of it for the configured time

# A ChargerSeen event at most this often per charger (Heartbeats, meter values, ...).
SEEN_EVERY = timedelta(seconds=5)
# Transactions closed here remembered for late messages (a replayed StopTransaction).
CLOSED_MEMORY = 256


@dataclass
class _Session:
    info: SessionInfo
    meter_start_wh: float | None
    # Last time the charger said anything about this transaction or its EVSE.
    last_sign: datetime | None = None


class ChargerModel:
    def __init__(self, charger_id: str) -> None:
        self.charger_id = charger_id
        self.protocol: ProtocolVersion | None = None
        self.boot: BootInfo | None = None
        self.online = False
        self.ready = False  # booted (or proved past boot) on the current connection
        self.last_seen: datetime | None = None
        self.capabilities: ChargerCapabilities | None = None
        self._status: dict[int, tuple[int, ConnectorStatus]] = {}
        self._sessions: dict[str, _Session] = {}
        self._closed: OrderedDict[str, SessionInfo] = OrderedDict()
        self._registers: dict[int, tuple[datetime, float]] = {}
        self._seen_published: datetime | None = None

    # --- connection -------------------------------------------------------------------------

    def connection_opened(self, protocol: ProtocolVersion, at: datetime) -> None:
        self.protocol = protocol
        self.online = True
        self.ready = False
        self.last_seen = at

    def seen(self, at: datetime) -> list[Event]:
        """Any inbound message: the charger is alive (published at most every SEEN_EVERY)."""
        self.last_seen = at
        if self._seen_published is not None and at - self._seen_published < SEEN_EVERY:
            return []
        self._seen_published = at
        return [ChargerSeen(self.charger_id, at)]

    def booted(self, boot: BootInfo | None, at: datetime) -> list[Event]:
        """The charger is past boot on this connection: it may now take our CALLs."""
        if boot is not None:
            self.boot = boot
        self.ready = True
        if self.boot is None and self.protocol is not None:
            # Reconnected without a BootNotification (allowed) and never seen booting here.
            self.boot = BootInfo("unknown", "unknown", None, None, self.protocol)
        assert self.boot is not None
        return [ChargerConnected(self.charger_id, at, self.boot)]

    def connection_closed(self, at: datetime, reason: str) -> list[Event]:
        was_online = self.online
        self.online = False
        self.ready = False
        return [ChargerDisconnected(self.charger_id, at, reason)] if was_online else []

    def capabilities_known(self, caps: ChargerCapabilities, at: datetime) -> list[Event]:
        self.capabilities = caps
        return [CapabilitiesKnown(self.charger_id, at, caps)]

    # --- status -----------------------------------------------------------------------------

    def status(
        self,
        evse_id: int,
        connector_id: int,
        status: ConnectorStatus,
        at: datetime,
        error_code: str | None = None,
    ) -> list[Event]:
        previous = self._status.get(evse_id)
        self._status[evse_id] = (connector_id, status)
        self._sign_of_life(evse_id, at)
        if previous is not None and previous[1] is status and error_code is None:
            return []
        return [EvseStatusChanged(self.charger_id, evse_id, connector_id, status, at, error_code)]

    def status_without_transaction(self, evse_id: int, at: datetime) -> list[Event]:
        """1.6: the connector reports Available, so no transaction runs on it: close any
        session still open there (its StopTransaction was lost)."""
        session = self.active_session(evse_id) if evse_id > 0 else None
        if session is None:
            return []
        return self.end_session(session.transaction_id, at, at, reason=GONE_AVAILABLE)

    def evse_status(self, evse_id: int) -> ConnectorStatus | None:
        found = self._status.get(evse_id)
        return None if found is None else found[1]

    # --- sessions ---------------------------------------------------------------------------

    def session_id(self, transaction_id: str) -> str:
        return f"{self.charger_id}/{transaction_id}"

    def active_session(self, evse_id: int) -> SessionInfo | None:
        for session in self._sessions.values():
            if session.info.evse_id == evse_id and session.info.ended_at is None:
                return session.info
        return None

    def active_sessions(self) -> list[SessionInfo]:
        return [s.info for s in self._sessions.values() if s.info.ended_at is None]

    def session(self, transaction_id: str) -> SessionInfo | None:
        found = self._sessions.get(transaction_id)
        return None if found is None else found.info

    def closed_here(self, transaction_id: str) -> bool:
        return transaction_id in self._closed

    def resume(self, sessions: Iterable[SessionInfo], at: datetime) -> None:
        """Open sessions the agent kept across its restart: energy goes on from their
        register at start, and reconciliation can close the ones the charger no longer has."""
        for info in sessions:
            if info.ended_at is None and info.transaction_id not in self._sessions:
                self._sessions[info.transaction_id] = _Session(info, info.meter_start_wh, at)

    def _sign_of_life(self, evse_id: int, at: datetime) -> None:
        for session in self._sessions.values():
            if session.info.evse_id == evse_id and session.info.ended_at is None:
                session.last_sign = at

    def start_session(
        self,
        evse_id: int,
        transaction_id: str,
        id_token: str | None,
        started_at: datetime | None,
        meter_start_wh: float | None,
        at: datetime,
    ) -> list[Event]:
        if transaction_id in self._sessions:
            return []  # a repeated Started (charger retry): nothing new
        events: list[Event] = []
        if evse_id > 0:
            # One transaction per EVSE: an older one still open here lost its end message.
            for older in [
                s.info
                for s in self._sessions.values()
                if s.info.evse_id == evse_id and s.info.ended_at is None
            ]:
                events += self.end_session(
                    older.transaction_id, started_at or at, at, reason=SUPERSEDED
                )
        info = SessionInfo(
            session_id=self.session_id(transaction_id),
            charger_id=self.charger_id,
            evse_id=evse_id,
            transaction_id=transaction_id,
            id_token=id_token,
            started_at=started_at,
            energy_wh=0.0 if meter_start_wh is not None else None,
            meter_start_wh=meter_start_wh,
        )
        self._sessions[transaction_id] = _Session(info, meter_start_wh, at)
        events.append(SessionStarted(info, at))
        return events

    def _known_or_recovered(
        self, transaction_id: str, evse_id: int | None, at: datetime, events: list[Event]
    ) -> _Session:
        """A transaction first seen mid-way (we restarted) still becomes a session."""
        if transaction_id not in self._sessions:
            events += self.start_session(evse_id or 0, transaction_id, None, None, None, at)
        return self._sessions[transaction_id]

    def update_session(
        self,
        transaction_id: str,
        at: datetime,
        *,
        evse_id: int | None = None,
        id_token: str | None = None,
        register_wh: float | None = None,
        soc_percent: float | None = None,
        requested_energy_wh: float | None = None,
        departure_time: datetime | None = None,
    ) -> list[Event]:
        if transaction_id in self._closed:
            return []  # closed here already: a late update does not revive it
        events: list[Event] = []
        session = self._known_or_recovered(transaction_id, evse_id, at, events)
        if session.info.ended_at is not None:
            return events
        info = session.info
        session.last_sign = at
        changes: dict[str, object] = {}
        if evse_id and info.evse_id == 0:
            changes["evse_id"] = evse_id
        if id_token is not None and info.id_token is None:
            changes["id_token"] = id_token
        if register_wh is not None:
            if session.meter_start_wh is None:
                # First register seen: the start unless energy was already counted (a session
                # kept from before without its start register), which then goes on from there.
                session.meter_start_wh = register_wh - (info.energy_wh or 0.0)
                changes["meter_start_wh"] = session.meter_start_wh
            changes["energy_wh"] = max(0.0, register_wh - session.meter_start_wh)
        if soc_percent is not None:
            changes["soc_percent"] = soc_percent
        if requested_energy_wh is not None:
            changes["requested_energy_wh"] = requested_energy_wh
        if departure_time is not None:
            changes["departure_time"] = departure_time
        new_info = replace(info, **changes)  # type: ignore[arg-type]
        if new_info != info:
            session.info = new_info
            events.append(SessionUpdated(new_info, at))
        return events

    def end_session(
        self,
        transaction_id: str,
        ended_at: datetime,
        at: datetime,
        *,
        evse_id: int | None = None,
        register_wh: float | None = None,
        reason: str | None = None,
    ) -> list[Event]:
        events: list[Event] = []
        closed = self._closed.get(transaction_id)
        if closed is not None:
            # Closed here (reconciled, superseded, silent), and now its own end arrives late:
            # the charger's account wins.
            energy = closed.energy_wh
            if register_wh is not None and closed.meter_start_wh is not None:
                energy = max(0.0, register_wh - closed.meter_start_wh)
            corrected = replace(closed, ended_at=ended_at, energy_wh=energy, stop_reason=reason)
            self._closed[transaction_id] = corrected
            return [SessionEnded(corrected, at)]
        session = self._known_or_recovered(transaction_id, evse_id, at, events)
        if session.info.ended_at is not None:
            return events  # repeated Ended
        energy = session.info.energy_wh
        if register_wh is not None and session.meter_start_wh is not None:
            energy = max(0.0, register_wh - session.meter_start_wh)
        session.info = replace(
            session.info, ended_at=ended_at, energy_wh=energy, stop_reason=reason
        )
        events.append(SessionEnded(session.info, at))
        # Only the open sessions matter from here; forget ended ones.
        del self._sessions[transaction_id]
        if reason in (SUPERSEDED, GONE_AVAILABLE, GONE_NOT_ONGOING, NO_SIGN_OF_LIFE):
            self._closed[transaction_id] = session.info
            while len(self._closed) > CLOSED_MEMORY:
                self._closed.popitem(last=False)
        return events

    def transaction_not_ongoing(self, transaction_id: str, at: datetime) -> list[Event]:
        """2.0.1 GetTransactionStatus: the station has no such transaction and no message
        about it queued: it ended while we were not listening."""
        if transaction_id not in self._sessions:
            return []
        return self.end_session(transaction_id, at, at, reason=GONE_NOT_ONGOING)

    def close_silent(self, now: datetime, after: timedelta) -> list[Event]:
        """Close sessions nothing was heard of for `after`: not an EV to plan for any more."""
        events: list[Event] = []
        for transaction_id, session in list(self._sessions.items()):
            last = session.last_sign or session.info.started_at
            if session.info.ended_at is None and last is not None and now - last >= after:
                events += self.end_session(transaction_id, now, now, reason=NO_SIGN_OF_LIFE)
        return events

    def ev_needs(
        self,
        evse_id: int,
        at: datetime,
        requested_energy_wh: float | None,
        departure_time: datetime | None,
        soc_percent: float | None = None,
    ) -> list[Event]:
        session = self.active_session(evse_id)
        if session is None:
            return []
        return self.update_session(
            session.transaction_id,
            at,
            requested_energy_wh=requested_energy_wh,
            departure_time=departure_time,
            soc_percent=soc_percent,
        )

    # --- metering ---------------------------------------------------------------------------

    def meter_readings(
        self,
        evse_id: int,
        readings: Iterable[MeterReading],
        at: datetime,
        transaction_id: str | None = None,
    ) -> list[Event]:
        events: list[Event] = []
        for reading in readings:
            if reading.is_empty:
                continue
            if transaction_id is not None and transaction_id in self._closed:
                transaction_id = None  # a late sample of a session closed here: no revival
                session_info = None
            else:
                session_info = (
                    self.session(transaction_id)
                    if transaction_id is not None
                    else self.active_session(evse_id)
                )
            if evse_id > 0:
                self._sign_of_life(evse_id, at)
            power = reading.power_w
            derived = False
            if reading.energy_wh is not None:
                previous = self._registers.get(evse_id)
                if power is None:
                    power = derive_power_w(previous, (reading.at, reading.energy_wh))
                    derived = power is not None
                if previous is None or reading.at >= previous[0]:
                    self._registers[evse_id] = (reading.at, reading.energy_wh)
            events.append(
                MeterSample(
                    charger_id=self.charger_id,
                    evse_id=evse_id,
                    at=reading.at,
                    session_id=session_info.session_id if session_info else None,
                    power_w=power,
                    power_per_phase_w=reading.power_per_phase_w,
                    energy_wh=reading.energy_wh,
                    current_per_phase_a=reading.current_per_phase_a,
                    soc_percent=reading.soc_percent,
                    power_derived=derived,
                )
            )
            tx = transaction_id or (session_info.transaction_id if session_info else None)
            if (
                tx is not None
                and evse_id > 0
                and (reading.energy_wh is not None or reading.soc_percent is not None)
            ):
                events += self.update_session(
                    tx,
                    at,
                    evse_id=evse_id,
                    register_wh=reading.energy_wh,
                    soc_percent=reading.soc_percent,
                )
        return events

    # --- snapshot ---------------------------------------------------------------------------

    def evses(self) -> tuple[EvseSnapshot, ...]:
        ids = set(self._status) | {s.info.evse_id for s in self._sessions.values()}
        return tuple(
            EvseSnapshot(evse_id, self.evse_status(evse_id), self.active_session(evse_id))
            for evse_id in sorted(ids)
        )
