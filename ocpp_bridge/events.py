"""Version-neutral events and command results: what `agent` sees of OCPP.

Frozen dataclasses in the manner of h11's events. Times are UTC-aware, power in W, energy in
Wh, current in A per phase. Nothing here names an OCPP version's types; 1.6 connectors and
2.0.1 EVSEs both map onto ``evse_id`` (1.6 connector N is EVSE N with connector 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ocpp_bridge.capabilities import ChargerCapabilities

PerPhase = tuple[float | None, float | None, float | None]
NO_PHASES: PerPhase = (None, None, None)


class ProtocolVersion(StrEnum):
    OCPP16 = "1.6"
    OCPP201 = "2.0.1"


class ConnectorStatus(StrEnum):
    """Both versions' connector states on one scale.

    1.6 Preparing/Finishing and 2.0.1 Occupied become OCCUPIED; 2.0.1 refines an occupied
    EVSE through TransactionEvent.chargingState (Charging, SuspendedEV, SuspendedEVSE).
    """

    AVAILABLE = "available"
    OCCUPIED = "occupied"
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"
    SUSPENDED_EVSE = "suspended_evse"
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"


@dataclass(frozen=True, slots=True)
class BootInfo:
    vendor: str
    model: str
    serial_number: str | None
    firmware_version: str | None
    protocol: ProtocolVersion


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A charging session (1.6 transaction / 2.0.1 transaction) as far as it is known.

    ``session_id`` is ``"<charger id>/<transaction id>"``: stable for the life of the
    transaction and the same in every event about it. ``energy_wh`` is the energy delivered
    since the session started (meter register now minus at start), None while unknown.
    """

    session_id: str
    charger_id: str
    evse_id: int
    transaction_id: str
    id_token: str | None
    # None when the transaction began before this process saw it (bridge restarted).
    started_at: datetime | None
    ended_at: datetime | None = None
    energy_wh: float | None = None
    requested_energy_wh: float | None = None
    departure_time: datetime | None = None
    soc_percent: float | None = None
    stop_reason: str | None = None
    # The charger's energy register when the transaction began (1.6 meterStart, 2.0.1 the
    # Transaction.Begin reading): kept across restarts so energy stays the charger's own count.
    meter_start_wh: float | None = None


@dataclass(frozen=True, slots=True)
class ChargerConnected:
    charger_id: str
    at: datetime
    boot: BootInfo


@dataclass(frozen=True, slots=True)
class ChargerDisconnected:
    charger_id: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class ChargerSeen:
    """The charger sent something (Heartbeat, status, transaction or meter message): it is alive.

    Published at most every few seconds per charger, whatever the message rate.
    """

    charger_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CapabilitiesKnown:
    charger_id: str
    at: datetime
    capabilities: ChargerCapabilities


@dataclass(frozen=True, slots=True)
class EvseStatusChanged:
    charger_id: str
    evse_id: int  # 0 = the charger as a whole (1.6 connector 0)
    connector_id: int
    status: ConnectorStatus
    at: datetime
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: SessionInfo
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session: SessionInfo
    at: datetime


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session: SessionInfo
    at: datetime


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One sampled moment of one EVSE (evse 0: the charger's main meter).

    ``power_w`` is the total active import power: reported, summed from the phases, or, when a
    charger reports only its energy register, derived from the register's change since the
    previous sample (``power_derived`` tells which).
    """

    charger_id: str
    evse_id: int
    at: datetime
    session_id: str | None
    power_w: float | None
    power_per_phase_w: PerPhase = NO_PHASES
    energy_wh: float | None = None
    current_per_phase_a: PerPhase = NO_PHASES
    soc_percent: float | None = None
    power_derived: bool = False


Event = (
    ChargerConnected
    | ChargerDisconnected
    | ChargerSeen
    | CapabilitiesKnown
    | EvseStatusChanged
    | SessionStarted
    | SessionUpdated
    | SessionEnded
    | MeterSample
)


# --- commands ----------------------------------------------------------------------------------


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    OFFLINE = "offline"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: CommandStatus
    reason: str | None = None
    # The profile purpose that carried the limit (after fallbacks), for diagnostics.
    purpose: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is CommandStatus.ACCEPTED


@dataclass(frozen=True, slots=True)
class PowerPeriod:
    """From `start` on (until the next period), at most `limit_w` watts in total."""

    start: datetime
    limit_w: float


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    """What a charger reports it will draw at most (GetCompositeSchedule), in W."""

    result: CommandResult
    evse_id: int
    start: datetime | None = None
    duration_s: int | None = None
    periods: tuple[PowerPeriod, ...] = ()


# --- snapshot ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvseSnapshot:
    evse_id: int
    status: ConnectorStatus | None
    session: SessionInfo | None


@dataclass(frozen=True, slots=True)
class DynamicScheduleSnapshot:
    evse_id: int
    periods: tuple[PowerPeriod, ...]
    valid_until: datetime
    # validTo of the profile the charger holds now; refreshed before it passes.
    profile_valid_to: datetime | None
    purpose: str | None
    # The periods (W) of the profile the charger accepted last: `periods` is what we want it
    # to hold, this is what it took (() when it took none).
    held: tuple[PowerPeriod, ...] = ()


@dataclass(frozen=True, slots=True)
class ChargerSnapshot:
    charger_id: str
    online: bool
    boot: BootInfo | None
    last_seen: datetime | None
    capabilities: ChargerCapabilities | None
    safe_limit_w: float | None
    safe_purpose: str | None
    evses: tuple[EvseSnapshot, ...] = ()
    dynamic: tuple[DynamicScheduleSnapshot, ...] = ()
    rejected_purposes: tuple[str, ...] = field(default_factory=tuple)
    # True once the charger took a profile on this connection; False when it refused the safe
    # layer and holds no dynamic one either (its load cannot be steered); None while unknown.
    controllable: bool | None = None
