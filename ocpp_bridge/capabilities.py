"""What a charger's smart charging can take, read after boot, with defaults when it won't say.

1.6 reports configuration keys (GetConfiguration, spec §9.4); 2.0.1 reports SmartChargingCtrlr
variables (GetVariables, Part 2 K). EVerest adds ``IgnoredProfilePurposesOffline`` in both: a
purpose listed there is dropped while the charger is offline, which would void our safe layer,
so the safe layer avoids those purposes. Pure functions: the shell does the calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def _positive_int(name: str, value: object, problems: list[str], minimum: int = 0) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        problems.append(f"{name}={value!r} is not an integer; using the default")
        return None
    if number < minimum:
        problems.append(f"{name}={number} is below {minimum}; using the default")
        return None
    return number


def _csl(value: object) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _rate_units(
    name: str, value: object, aliases: Mapping[str, RateUnit], problems: list[str]
) -> tuple[RateUnit, ...] | None:
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


def _purposes(value: object, names: Mapping[str, Purpose]) -> frozenset[Purpose]:
    return frozenset(names[p] for p in _csl(value) if p in names)


def from_v16_configuration(configuration_key: Iterable[Mapping[str, Any]]) -> ChargerCapabilities:
    """Capabilities from a 1.6 GetConfiguration.conf ``configurationKey`` list."""
    values = {str(item.get("key")): item.get("value") for item in configuration_key}
    problems: list[str] = []
    caps = DEFAULTS
    reported: set[str] = set()
    if (v := values.get("ChargeProfileMaxStackLevel")) is not None and (
        n := _positive_int("ChargeProfileMaxStackLevel", v, problems)
    ) is not None:
        caps = replace(caps, max_stack_level=n)
        reported.add("max_stack_level")
    if (v := values.get("ChargingScheduleAllowedChargingRateUnit")) is not None and (
        units := _rate_units(
            "ChargingScheduleAllowedChargingRateUnit",
            v,
            {
                "Current": RateUnit.AMPS,
                "Power": RateUnit.WATTS,
                "A": RateUnit.AMPS,
                "W": RateUnit.WATTS,
            },
            problems,
        )
    ) is not None:
        caps = replace(caps, rate_units=units)
        reported.add("rate_units")
    if (v := values.get("ChargingScheduleMaxPeriods")) is not None and (
        n := _positive_int("ChargingScheduleMaxPeriods", v, problems, minimum=1)
    ) is not None:
        caps = replace(caps, max_periods=n)
        reported.add("max_periods")
    if (v := values.get("MaxChargingProfilesInstalled")) is not None and (
        n := _positive_int("MaxChargingProfilesInstalled", v, problems, minimum=1)
    ) is not None:
        caps = replace(caps, max_profiles=n)
        reported.add("max_profiles")
    if (v := values.get("IgnoredProfilePurposesOffline")) is not None:
        caps = replace(caps, ignored_purposes_offline=_purposes(v, _V16_PURPOSES))
        reported.add("ignored_purposes_offline")
    return replace(caps, reported=frozenset(reported), problems=tuple(problems))


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
    problems: list[str] = []
    caps = DEFAULTS
    reported: set[str] = set()
    if (v := values.get("RateUnit")) is not None and (
        units := _rate_units("RateUnit", v, {"A": RateUnit.AMPS, "W": RateUnit.WATTS}, problems)
    ) is not None:
        caps = replace(caps, rate_units=units)
        reported.add("rate_units")
    if (v := values.get("ProfileStackLevel")) is not None and (
        n := _positive_int("ProfileStackLevel", v, problems)
    ) is not None:
        caps = replace(caps, max_stack_level=n)
        reported.add("max_stack_level")
    if (v := values.get("PeriodsPerSchedule")) is not None and (
        n := _positive_int("PeriodsPerSchedule", v, problems, minimum=1)
    ) is not None:
        caps = replace(caps, max_periods=n)
        reported.add("max_periods")
    if (v := values.get("Entries")) is not None and (
        n := _positive_int("Entries", v, problems)
    ) is not None:
        caps = replace(caps, installed_profiles=n)
        reported.add("installed_profiles")
    if (v := values.get("IgnoredProfilePurposesOffline")) is not None:
        caps = replace(caps, ignored_purposes_offline=_purposes(v, _V201_PURPOSES))
        reported.add("ignored_purposes_offline")
    return replace(caps, reported=frozenset(reported), problems=tuple(problems))
