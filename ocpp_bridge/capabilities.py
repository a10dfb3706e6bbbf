"""What a charger's smart charging can take, read after boot, with defaults when it won't say.

1.6 reports configuration keys (GetConfiguration, spec §9.4); 2.0.1 reports SmartChargingCtrlr
variables (GetVariables, Part 2 K). EVerest adds ``IgnoredProfilePurposesOffline`` in both: a
purpose listed there is dropped while the charger is offline, which would void our safe layer,
so the safe layer avoids those purposes. Pure functions: the shell does the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class RateUnit(StrEnum):
    AMPS = "A"
    WATTS = "W"


class Purpose(StrEnum):
    """Profile purposes by role; each version spells them its own way (see `profiles`)."""

    STATION_MAX = "ChargingStationMax"  # 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile
    TX_DEFAULT = "TxDefault"
    TX = "Tx"


# Conservative defaults for a charger that does not answer: every certified 1.6 charger with
# the Smart Charging profile handles amps, a few stack levels and a day of hourly periods.
DEFAULT_MAX_STACK_LEVEL = 3
DEFAULT_MAX_PERIODS = 24
DEFAULT_RATE_UNITS: tuple[RateUnit, ...] = (RateUnit.AMPS,)

V16_KEYS: tuple[str, ...] = (
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "IgnoredProfilePurposesOffline",
)
SMART_CHARGING_CTRLR = "SmartChargingCtrlr"
# (variable, instance) pairs read from SmartChargingCtrlr.
V201_VARIABLES: tuple[tuple[str, str | None], ...] = (
    ("RateUnit", None),
    ("ProfileStackLevel", None),
    ("PeriodsPerSchedule", None),
    ("Entries", "ChargingProfiles"),
    ("IgnoredProfilePurposesOffline", None),
)

_V16_PURPOSES = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}
_V201_PURPOSES = {
    "ChargingStationMaxProfile": Purpose.STATION_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}


@dataclass(frozen=True, slots=True)
class ChargerCapabilities:
    rate_units: tuple[RateUnit, ...] = DEFAULT_RATE_UNITS
    max_stack_level: int = DEFAULT_MAX_STACK_LEVEL
    max_periods: int = DEFAULT_MAX_PERIODS
    # 1.6 MaxChargingProfilesInstalled; 2.0.1 reports only the installed count (Entries).
    max_profiles: int | None = None
    installed_profiles: int | None = None
    ignored_purposes_offline: frozenset[Purpose] = frozenset()
    # Which values the charger reported (the rest are defaults).
    reported: frozenset[str] = frozenset()
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def preferred_unit(self) -> RateUnit:
        """Amps where allowed: per-phase current is what every AC charger enforces natively."""
        return RateUnit.AMPS if RateUnit.AMPS in self.rate_units else self.rate_units[0]


DEFAULTS = ChargerCapabilities()


# A reader turns a reported value into a field value, or None (with a problem noted).
_Reader = Callable[[str, object, list[str]], object]


def _integer(minimum: int) -> _Reader:
    def read(name: str, value: object, problems: list[str]) -> int | None:
        try:
            number = int(str(value).strip())
        except ValueError:
            problems.append(f"{name}={value!r} is not an integer; using the default")
            return None
        if number < minimum:
            problems.append(f"{name}={number} is below {minimum}; using the default")
            return None
        return number

    return read


def _csl(value: object) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _rate_units(aliases: Mapping[str, RateUnit]) -> _Reader:
    def read(name: str, value: object, problems: list[str]) -> tuple[RateUnit, ...] | None:
        units: list[RateUnit] = []
        for part in _csl(value):
            unit = aliases.get(part)
            if unit is None:
                problems.append(f"{name} lists unknown unit {part!r}")
            elif unit not in units:
                units.append(unit)
        if not units:
            problems.append(f"{name}={value!r} names no usable unit; using the default")
            return None
        return tuple(units)

    return read


def _purposes(names: Mapping[str, Purpose]) -> _Reader:
    def read(name: str, value: object, problems: list[str]) -> frozenset[Purpose]:
        return frozenset(names[p] for p in _csl(value) if p in names)

    return read


def _read(
    values: Mapping[str, object], table: Sequence[tuple[str, str, _Reader]]
) -> ChargerCapabilities:
    """Apply (reported name, field, reader) rows to the defaults."""
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for name, field_name, reader in table:
        raw = values.get(name)
        if raw is None:
            continue
        value = reader(name, raw, problems)
        if value is not None:
            changes[field_name] = value
    return replace(DEFAULTS, **changes, reported=frozenset(changes), problems=tuple(problems))


_V16_TABLE: tuple[tuple[str, str, _Reader], ...] = (
    ("ChargeProfileMaxStackLevel", "max_stack_level", _integer(0)),
    (
        "ChargingScheduleAllowedChargingRateUnit",
        "rate_units",
        _rate_units(
            {
                "Current": RateUnit.AMPS,
                "Power": RateUnit.WATTS,
                "A": RateUnit.AMPS,
                "W": RateUnit.WATTS,
            }
        ),
    ),
    ("ChargingScheduleMaxPeriods", "max_periods", _integer(1)),
    ("MaxChargingProfilesInstalled", "max_profiles", _integer(1)),
    ("IgnoredProfilePurposesOffline", "ignored_purposes_offline", _purposes(_V16_PURPOSES)),
)
_V201_TABLE: tuple[tuple[str, str, _Reader], ...] = (
    ("RateUnit", "rate_units", _rate_units({"A": RateUnit.AMPS, "W": RateUnit.WATTS})),
    ("ProfileStackLevel", "max_stack_level", _integer(0)),
    ("PeriodsPerSchedule", "max_periods", _integer(1)),
    ("Entries", "installed_profiles", _integer(0)),
    ("IgnoredProfilePurposesOffline", "ignored_purposes_offline", _purposes(_V201_PURPOSES)),
)


def from_v16_configuration(configuration_key: Iterable[Mapping[str, Any]]) -> ChargerCapabilities:
    """Capabilities from a 1.6 GetConfiguration.conf ``configurationKey`` list."""
    return _read(
        {str(item.get("key")): item.get("value") for item in configuration_key}, _V16_TABLE
    )


def v201_get_variable_data() -> list[dict[str, Any]]:
    """The GetVariablesRequest ``getVariableData`` for `from_v201_variables`."""
    data: list[dict[str, Any]] = []
    for name, instance in V201_VARIABLES:
        variable: dict[str, Any] = {"name": name}
        if instance is not None:
            variable["instance"] = instance
        data.append({"component": {"name": SMART_CHARGING_CTRLR}, "variable": variable})
    return data


def from_v201_variables(results: Sequence[Mapping[str, Any]]) -> ChargerCapabilities:
    """Capabilities from a 2.0.1 GetVariablesResponse ``getVariableResult`` list.

    Accepts camelCase (raw) or snake_case (as the `ocpp` library converts) keys.
    """
    values: dict[str, object] = {}
    for item in results:
        status = item.get("attributeStatus", item.get("attribute_status"))
        variable = item.get("variable") or {}
        if status != "Accepted":
            continue
        value = item.get("attributeValue", item.get("attribute_value"))
        if value is not None:
            values[str(variable.get("name"))] = value
    return _read(values, _V201_TABLE)
