"""Meter values of both versions -> one reading in W, Wh, A and %.

1.6 sends values as strings with a ``unit`` (default Wh for energy, W for power, kW/kWh
allowed); 2.0.1 sends numbers with ``unitOfMeasure {unit, multiplier}``. Missing measurand
means the energy register (both specs' default). Chargers differ in which measurands and
phases they report: total power, per-phase power, only per-phase current, or only the energy
register, in which case the shell derives power from the register's change between samples
(`derive_power_w`). Pure functions over the snake_case dicts the `ocpp` library hands over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ocpp_bridge.events import NO_PHASES, PerPhase
from ocpp_bridge.timestamps import TimestampError, parse_timestamp

ENERGY_REGISTER = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
CURRENT = "Current.Import"
SOC = "SoC"

_PHASE_INDEX = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}
_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0, "A": 1.0, "Percent": 1.0}
_DEFAULT_UNIT = {ENERGY_REGISTER: "Wh", POWER: "W", CURRENT: "A", SOC: "Percent"}
# Locations whose values describe what flows to the EV (Outlet, 1.6/2.0.1 default) or into
# the charger (Inlet, the main meter); "EV" only matters for SoC.
_METER_LOCATIONS = {None, "Outlet", "Inlet"}
# Shorter gaps make the derived power mostly rounding noise of the Wh register.
MIN_DERIVATION_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class MeterReading:
    at: datetime
    power_w: float | None = None
    power_per_phase_w: PerPhase = NO_PHASES
    energy_wh: float | None = None
    current_per_phase_a: PerPhase = NO_PHASES
    soc_percent: float | None = None
    # Values skipped and why (the shell logs them once per charger).
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return (
            self.power_w is None
            and self.energy_wh is None
            and self.soc_percent is None
            and self.power_per_phase_w == NO_PHASES
            and self.current_per_phase_a == NO_PHASES
        )


def _number(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"not a number: {raw!r}")
    value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {raw!r}")
    return value


def _scaled(sample: Mapping[str, Any], measurand: str) -> float:
    value = _number(sample.get("value"))
    uom = sample.get("unit_of_measure")
    if isinstance(uom, Mapping):  # 2.0.1
        unit = str(uom.get("unit") or _DEFAULT_UNIT[measurand])
        multiplier = int(uom.get("multiplier", 0) or 0)
        value *= 10.0**multiplier
    else:  # 1.6
        unit = str(sample.get("unit") or _DEFAULT_UNIT[measurand])
    scale = _SCALE.get(unit)
    if scale is None:
        raise ValueError(f"unit {unit!r} for {measurand}")
    return value * scale


def read_meter_value(meter_value: Mapping[str, Any]) -> MeterReading:
    """One MeterValue (a timestamp and its sampled values) as a reading."""
    problems: list[str] = []
    try:
        at = parse_timestamp(meter_value.get("timestamp"))  # type: ignore[arg-type]
    except TimestampError as exc:
        raise ValueError(str(exc)) from exc
    power: float | None = None
    energy: float | None = None
    soc: float | None = None
    phase_power: list[float | None] = [None, None, None]
    phase_current: list[float | None] = [None, None, None]
    phase_energy: list[float | None] = [None, None, None]
    for sample in meter_value.get("sampled_value") or ():
        measurand = sample.get("measurand") or ENERGY_REGISTER
        if measurand not in _DEFAULT_UNIT:
            continue  # voltages, frequency, offered current...: not ours to normalise
        if sample.get("format") == "SignedData":
            continue
        location = sample.get("location")
        if measurand != SOC and location not in _METER_LOCATIONS:
            continue
        try:
            value = _scaled(sample, measurand)
        except (ValueError, TypeError) as exc:
            problems.append(f"{measurand}: {exc}")
            continue
        phase = sample.get("phase")
        index = _PHASE_INDEX.get(phase) if phase is not None else None
        if phase is not None and index is None:
            continue  # N, line-to-line: nothing to add up
        if measurand == SOC:
            if 0.0 <= value <= 100.0:
                soc = value
            else:
                problems.append(f"SoC {value} outside 0-100 %")
        elif measurand == ENERGY_REGISTER:
            if value < 0:
                problems.append(f"negative energy register {value} Wh")
            elif index is None:
                energy = value
            else:
                phase_energy[index] = value
        elif measurand == POWER:
            if index is None:
                power = value
            else:
                phase_power[index] = value
        elif index is not None:
            phase_current[index] = value
    if energy is None and any(v is not None for v in phase_energy):
        energy = sum(v for v in phase_energy if v is not None)
    if power is None and any(v is not None for v in phase_power):
        power = sum(v for v in phase_power if v is not None)
    return MeterReading(
        at=at,
        power_w=power,
        power_per_phase_w=(phase_power[0], phase_power[1], phase_power[2]),
        energy_wh=energy,
        current_per_phase_a=(phase_current[0], phase_current[1], phase_current[2]),
        soc_percent=soc,
        problems=tuple(problems),
    )


def read_meter_values(meter_values: Iterable[Mapping[str, Any]]) -> list[MeterReading]:
    """Readings in the charger's order; a reading whose timestamp is unreadable is skipped."""
    readings = []
    for item in meter_values:
        try:
            readings.append(read_meter_value(item))
        except ValueError:
            continue
    return readings


def derive_power_w(
    previous: tuple[datetime, float] | None, current: tuple[datetime, float]
) -> float | None:
    """Average power between two register readings, None when it cannot be told.

    A register that went down (meter replaced, charger reset) or readings too close in time
    give no figure rather than a wrong one.
    """
    if previous is None:
        return None
    seconds = (current[0] - previous[0]).total_seconds()
    delta_wh = current[1] - previous[1]
    if seconds < MIN_DERIVATION_INTERVAL_S or delta_wh < 0:
        return None
    return delta_wh * 3600.0 / seconds
