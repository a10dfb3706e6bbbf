"""Meter values of both versions normalised to W, Wh, A and %."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ocpp_bridge.metering import derive_power_w, read_meter_value, read_meter_values

T = "2026-03-01T12:00:00Z"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def mv(*samples: dict[str, Any], timestamp: str = T) -> dict[str, Any]:
    return {"timestamp": timestamp, "sampled_value": list(samples)}


def test_1_6_strings_with_default_and_kilo_units() -> None:
    reading = read_meter_value(
        mv(
            {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
            {"value": "81", "measurand": "SoC", "location": "EV", "unit": "Percent"},
        )
    )
    assert reading.at == AT
    assert reading.energy_wh == 12_500.0
    assert reading.power_w == pytest.approx(7_200.0)
    assert reading.soc_percent == 81.0


def test_missing_measurand_is_the_energy_register_in_wh() -> None:
    assert read_meter_value(mv({"value": "1234"})).energy_wh == 1234.0


def test_2_0_1_numbers_with_unit_of_measure_multiplier() -> None:
    reading = read_meter_value(
        mv(
            {
                "value": 3.5,
                "measurand": "Energy.Active.Import.Register",
                "unit_of_measure": {"unit": "kWh"},
            },
            {
                "value": 11,
                "measurand": "Power.Active.Import",
                "unit_of_measure": {"unit": "W", "multiplier": 3},
            },
        )
    )
    assert reading.energy_wh == 3_500.0
    assert reading.power_w == 11_000.0


def test_per_phase_power_and_current_add_up_and_missing_phases_stay_unknown() -> None:
    reading = read_meter_value(
        mv(
            {"value": "2300", "measurand": "Power.Active.Import", "phase": "L1"},
            {"value": "2200", "measurand": "Power.Active.Import", "phase": "L2-N"},
            {"value": "10", "measurand": "Current.Import", "phase": "L1"},
            {"value": "9.5", "measurand": "Current.Import", "phase": "L2"},
            {"value": "230", "measurand": "Voltage", "phase": "L1-N"},
        )
    )
    assert reading.power_per_phase_w == (2300.0, 2200.0, None)
    assert reading.power_w == 4500.0
    assert reading.current_per_phase_a == (10.0, 9.5, None)
    assert reading.energy_wh is None


def test_total_power_wins_over_phase_sum() -> None:
    reading = read_meter_value(
        mv(
            {"value": "7000", "measurand": "Power.Active.Import"},
            {"value": "2300", "measurand": "Power.Active.Import", "phase": "L1"},
        )
    )
    assert reading.power_w == 7000.0


def test_odd_measurands_signed_data_and_foreign_locations_are_skipped() -> None:
    reading = read_meter_value(
        mv(
            {"value": "50", "measurand": "Frequency"},
            {"value": "abc", "format": "SignedData"},
            {"value": "999", "measurand": "Power.Active.Import", "location": "Body"},
            {"value": "16", "measurand": "Current.Offered"},
        )
    )
    assert reading.is_empty
    assert reading.problems == ()


def test_unreadable_values_are_reported_not_guessed() -> None:
    reading = read_meter_value(
        mv(
            {"value": "n/a", "measurand": "Power.Active.Import"},
            {"value": "NaN", "measurand": "Energy.Active.Import.Register"},
            {"value": "5", "measurand": "Power.Active.Import", "unit": "VA"},
            {"value": "-3", "measurand": "Energy.Active.Import.Register"},
            {"value": "140", "measurand": "SoC"},
        )
    )
    assert reading.is_empty
    assert len(reading.problems) == 5


def test_zone_less_timestamps_are_utc_and_unreadable_ones_drop_the_reading() -> None:
    readings = read_meter_values(
        [
            mv({"value": "1"}, timestamp="2026-03-01T12:00:00"),
            mv({"value": "2"}, timestamp="yesterday"),
        ]
    )
    assert [r.at for r in readings] == [AT]


def test_power_derived_from_the_register() -> None:
    assert derive_power_w((AT, 1000.0), (AT + timedelta(minutes=15), 2750.0)) == pytest.approx(
        7000.0
    )


@pytest.mark.parametrize(
    ("previous", "current"),
    [
        (None, (AT, 10.0)),
        ((AT, 1000.0), (AT + timedelta(seconds=0.5), 1001.0)),  # too close in time
        ((AT, 1000.0), (AT + timedelta(minutes=1), 10.0)),  # register went back (reset)
    ],
)
def test_no_derived_power_without_a_sound_pair(
    previous: tuple[datetime, float] | None, current: tuple[datetime, float]
) -> None:
    assert derive_power_w(previous, current) is None
