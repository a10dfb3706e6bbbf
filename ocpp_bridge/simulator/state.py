"""A station's electrical data, its EVSEs and the EV sessions on them, and how a station
shares its supply between EVSEs (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ocpp_bridge.simulator.common import ProtocolName
from ocpp_bridge.simulator.schedule import MIN_CURRENT_A, VOLTS

# Energy below this counts as nothing left to charge (float noise of the integration).
_FULL_EPSILON_WH = 1e-6


def share_current(demands_a: Sequence[float], cap_a: float, min_a: float) -> list[float]:
    """Split a station-wide current cap over EVSEs the way a station's load manager does.

    Each EVSE gets at most what it asks for; the cap is shared equally among those that ask
    for more (water filling); an EVSE whose share would fall below the minimum current is
    paused (0) and its share goes to the others (IEC 61851: no charging below ~6 A).
    """
    if cap_a < 0 or min_a < 0:
        raise ValueError(f"cap {cap_a} A and minimum {min_a} A must be >= 0")
    active = [i for i, d in enumerate(demands_a) if d >= min_a and d > 0]
    shares = [0.0] * len(demands_a)
    while active:
        remaining = cap_a
        pending = sorted(active, key=lambda i: demands_a[i])
        allocation: dict[int, float] = {}
        while pending:
            equal = remaining / len(pending)
            smallest = pending[0]
            if demands_a[smallest] <= equal:
                allocation[smallest] = demands_a[smallest]
                remaining -= demands_a[smallest]
                pending.pop(0)
            else:
                for i in pending:
                    allocation[i] = equal
                pending = []
        starved = [i for i in active if allocation[i] < min_a]
        if not starved:
            for i, amps in allocation.items():
                shares[i] = amps
            return shares
        # Pause the EVSE that asks least (ties: the last one) and share again.
        active.remove(min(starved, key=lambda i: (demands_a[i], -i)))
    return shares


def ev_current_a(ev_max_power_w: float, phases: int, volts: float) -> float:
    return ev_max_power_w / (volts * phases)


@dataclass(frozen=True)
class StationSpec:
    """A station's identity and electrical data. Currents are per phase."""

    charger_id: str
    protocol: ProtocolName = ProtocolName.OCPP16
    evse_count: int = 1
    phases: int = 3
    nominal_voltage_v: float = VOLTS
    max_current_a: float = 16.0  # per EVSE (11 kW at 3 x 230 V)
    station_max_current_a: float | None = None  # the station's supply; None = EVSEs x max
    min_current_a: float = MIN_CURRENT_A
    meter_interval_s: float = 60.0  # clock-aligned samples (ClockAlignedDataInterval style)
    vendor: str = "flexbridge"
    model: str = "SimStation"
    serial_number: str | None = None
    firmware_version: str = "sim-1"
    refuse_purposes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.evse_count < 1:
            raise ValueError(f"{self.charger_id}: evse_count must be >= 1, got {self.evse_count}")
        if self.phases not in (1, 3):
            raise ValueError(f"{self.charger_id}: phases must be 1 or 3, got {self.phases}")
        if not self.max_current_a >= self.min_current_a > 0:
            raise ValueError(
                f"{self.charger_id}: max current {self.max_current_a} A must be >= the "
                f"minimum {self.min_current_a} A > 0"
            )
        if self.meter_interval_s <= 0:
            raise ValueError(f"{self.charger_id}: meter_interval_s must be > 0")

    @property
    def max_power_w(self) -> float:
        """One EVSE's maximum power."""
        return self.max_current_a * self.nominal_voltage_v * self.phases

    @property
    def supply_current_a(self) -> float:
        return self.station_max_current_a or self.max_current_a * self.evse_count


@dataclass
class EvSession:
    """An EV on an EVSE, from plug-in to unplug."""

    evse_id: int
    id_token: str
    energy_needed_wh: float
    ev_max_power_w: float
    ev_phases: int
    departure: datetime
    plugged_at: datetime
    meter_start_wh: float
    requested_energy_wh: float | None = None
    stated_departure: datetime | None = None
    unplug_when_full: bool = False
    delivered_wh: float = 0.0
    transaction_id: str | None = None
    seq_no: int = 0
    authorized: bool = True
    full_at: datetime | None = None
    unplugged_at: datetime | None = None
    stop_reason: str | None = None
    offline_start: bool = False

    @property
    def remaining_wh(self) -> float:
        return max(0.0, self.energy_needed_wh - self.delivered_wh)

    @property
    def full(self) -> bool:
        return self.remaining_wh <= _FULL_EPSILON_WH

    def next_seq_no(self) -> int:
        value = self.seq_no
        self.seq_no += 1
        return value


@dataclass
class EvseState:
    evse_id: int
    register_wh: float = 0.0
    ev: EvSession | None = None
    power_w: float = 0.0
    current_a: float = 0.0
    state: str = "Available"  # Available, Preparing, Charging, SuspendedEVSE, SuspendedEV
    next_sample: datetime | None = None
