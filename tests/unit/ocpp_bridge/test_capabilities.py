"""Capabilities from 1.6 configuration keys and 2.0.1 SmartChargingCtrlr variables."""

from __future__ import annotations

from ocpp_bridge.capabilities import (
    DEFAULTS,
    Purpose,
    RateUnit,
    from_v16_configuration,
    from_v201_variables,
    v201_get_variable_data,
)


def key(name: str, value: str) -> dict[str, object]:
    return {"key": name, "readonly": True, "value": value}


def test_1_6_keys() -> None:
    caps = from_v16_configuration(
        [
            key("ChargeProfileMaxStackLevel", "8"),
            key("ChargingScheduleAllowedChargingRateUnit", "Current,Power"),
            key("ChargingScheduleMaxPeriods", "1440"),
            key("MaxChargingProfilesInstalled", "500"),
            key("IgnoredProfilePurposesOffline", "TxDefaultProfile"),
        ]
    )
    assert caps.max_stack_level == 8
    assert caps.rate_units == (RateUnit.AMPS, RateUnit.WATTS)
    assert caps.max_periods == 1440
    assert caps.max_profiles == 500
    assert caps.ignored_purposes_offline == {Purpose.TX_DEFAULT}
    assert caps.problems == ()
    assert caps.preferred_unit is RateUnit.AMPS


def test_power_only_charger_gets_watts() -> None:
    caps = from_v16_configuration([key("ChargingScheduleAllowedChargingRateUnit", "Power")])
    assert caps.rate_units == (RateUnit.WATTS,)
    assert caps.preferred_unit is RateUnit.WATTS


def test_silent_charger_gets_defaults() -> None:
    caps = from_v16_configuration([])
    assert caps.max_stack_level == DEFAULTS.max_stack_level
    assert caps.rate_units == (RateUnit.AMPS,)
    assert caps.reported == frozenset()


def test_nonsense_values_fall_back_to_defaults_with_a_reason() -> None:
    caps = from_v16_configuration(
        [
            key("ChargeProfileMaxStackLevel", "many"),
            key("ChargingScheduleMaxPeriods", "0"),
            key("ChargingScheduleAllowedChargingRateUnit", "Volts"),
        ]
    )
    assert caps.max_stack_level == DEFAULTS.max_stack_level
    assert caps.max_periods == DEFAULTS.max_periods
    assert caps.rate_units == DEFAULTS.rate_units
    assert len(caps.problems) == 4  # unknown unit + no usable unit + two numbers


def result(name: str, value: str, status: str = "Accepted") -> dict[str, object]:
    return {
        "attributeStatus": status,
        "component": {"name": "SmartChargingCtrlr"},
        "variable": {"name": name},
        "attributeValue": value,
    }


def test_2_0_1_variables_everest_style() -> None:
    caps = from_v201_variables(
        [
            result("RateUnit", "A,W"),
            result("ProfileStackLevel", "42"),
            result("PeriodsPerSchedule", "42"),
            result("Entries", "3"),
            result("IgnoredProfilePurposesOffline", "ChargingStationMaxProfile"),
        ]
    )
    assert caps.rate_units == (RateUnit.AMPS, RateUnit.WATTS)
    assert caps.max_stack_level == 42
    assert caps.max_periods == 42
    assert caps.installed_profiles == 3
    assert caps.ignored_purposes_offline == {Purpose.STATION_MAX}


def test_2_0_1_unknown_variables_keep_defaults_and_snake_case_is_accepted() -> None:
    caps = from_v201_variables(
        [
            result("ProfileStackLevel", "x", status="UnknownVariable"),
            {
                "attribute_status": "Accepted",
                "component": {"name": "SmartChargingCtrlr"},
                "variable": {"name": "PeriodsPerSchedule"},
                "attribute_value": "10",
            },
        ]
    )
    assert caps.max_stack_level == DEFAULTS.max_stack_level
    assert caps.max_periods == 10


def test_get_variables_request_names_the_smart_charging_controller() -> None:
    data = v201_get_variable_data()
    assert {d["component"]["name"] for d in data} == {"SmartChargingCtrlr"}
    assert {"name": "Entries", "instance": "ChargingProfiles"} in [d["variable"] for d in data]
