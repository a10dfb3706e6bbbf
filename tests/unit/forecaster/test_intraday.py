"""Intraday: plugged-in sessions with calibrated driver input, plus arrivals still to come."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from forecaster.calendar import SiteCalendar
from forecaster.forecast import ForecastInputError, PowerHistory
from forecaster.intraday import KnownSessions, SessionCalibration, forecast_intraday
from forecaster.kernels.sessions import known_session_power

UTC_CAL = SiteCalendar.of("UTC")


def one_session(**overrides: float) -> dict[str, np.ndarray]:
    values = {
        "stated_departure": 4 * 3600.0,
        "needed_wh": 3300.0,
        "delivered_wh": 0.0,
        "pmax_w": 6600.0,
        "power_now_w": 6600.0,
    }
    values.update(overrides)
    return {k: np.array([v]) for k, v in values.items()}


def run(session: dict[str, np.ndarray], residual: float = 0.0, ratio: float = 1.0) -> np.ndarray:
    targets = np.arange(0, 8 * 900, 900, dtype=np.int64)
    mean, var = known_session_power(
        np.array([0]),
        1,
        0,
        np.array([-3600]),
        session["stated_departure"],
        session["needed_wh"],
        session["delivered_wh"],
        session["pmax_w"],
        session["power_now_w"],
        np.array([residual]),
        np.array([7200.0]),
        np.array([ratio]),
        np.array([5000.0]),
        targets,
        900,
    )
    assert (var >= 0).all()
    return mean[0]


def test_a_session_charges_at_full_power_until_its_energy_is_in() -> None:
    np.testing.assert_allclose(run(one_session()), [6600.0, 6600.0] + [0.0] * 6)


def test_it_stops_at_the_calibrated_departure() -> None:
    # Stated 00:15, but drivers leave 15 min later than they say: charging for 30 min.
    session = one_session(stated_departure=900.0, needed_wh=20_000.0)
    np.testing.assert_allclose(run(session, residual=900.0), [6600.0, 6600.0] + [0.0] * 6)


def test_the_energy_ratio_scales_the_total_request() -> None:
    # 1.65 kWh delivered, 4.95 kWh more requested; drivers take half: 3.3 kWh total, 1.65 left.
    session = one_session(delivered_wh=1650.0, needed_wh=4950.0)
    np.testing.assert_allclose(run(session, ratio=0.5), [6600.0] + [0.0] * 7)


def test_a_car_that_draws_nothing_is_full() -> None:
    assert run(one_session(power_now_w=0.0)).sum() == 0.0


def test_calibration_learns_bias_and_ratio_from_finished_sessions() -> None:
    n = 40
    arrival = np.arange(n, dtype=np.int64) * 86_400 + 8 * 3600
    departure = arrival + 9 * 3600
    stated = (departure - 2 * 3600).astype(float)  # everyone leaves 2 h later than stated
    cal = SessionCalibration.fit(
        UTC_CAL, arrival, departure, np.full(n, 10_000.0), np.full(n, 20_000.0), stated, 6600.0
    )
    np.testing.assert_allclose(cal.departure_residual_s, 7200.0)
    np.testing.assert_allclose(cal.energy_ratio, 0.5)
    raw = SessionCalibration.fit(
        UTC_CAL,
        arrival,
        departure,
        np.full(n, 10_000.0),
        np.full(n, 20_000.0),
        stated,
        6600.0,
        raw_driver_input=True,
    )
    assert raw.departure_residual_s.tolist() == [0.0]
    assert raw.energy_ratio.tolist() == [1.0]
    # Everyone arrives at 08:00: from 09:00 on no load is still to come.
    assert cal.arrival_share.shape == (3, 96, 96)
    assert cal.arrival_share[0, 36, 37] == 0.0
    assert cal.arrival_share[0, 32, 33] == 1.0


def test_intraday_adds_known_sessions_to_the_arrivals_still_to_come() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    days = 28
    arrival = (np.arange(days) * 86_400 + 8 * 3600 + int(start.timestamp())).astype(np.int64)
    departure = arrival + 8 * 3600
    delivered = np.full(days, 13_200.0)  # two hours at 6.6 kW
    from forecaster.sessions import SessionRecords, reconstruct_power

    records = SessionRecords(arrival, departure, delivered, delivered, departure.astype(float))
    history = PowerHistory(
        start, 15, reconstruct_power(records, int(start.timestamp()), 900, days * 96)[None]
    )
    cal = SessionCalibration.fit(
        UTC_CAL, arrival, departure, delivered, delivered, departure.astype(float), 6600.0
    )
    origin = start + timedelta(days=days, hours=9)
    targets = UTC_CAL.day_isps(date(2024, 1, 29))
    targets = targets[targets >= int(origin.timestamp())]
    today = KnownSessions(
        series=np.array([0]),
        arrival=np.array([int(origin.timestamp()) - 3600]),
        expected_departure=np.array([float(origin.timestamp()) + 7 * 3600]),
        needed_wh=np.array([6600.0]),
        delivered_wh=np.array([6600.0]),
        pmax_w=np.array([6600.0]),
        power_now_w=np.array([6600.0]),
    )
    f = forecast_intraday(history, origin, targets, UTC_CAL, today, cal)
    np.testing.assert_allclose(f.p50[0, :4], 6600.0)  # the car charges one more hour
    assert f.p50[0, 4:].max() == pytest.approx(0.0, abs=1e-6)  # nobody else comes after 09:00
    nobody = forecast_intraday(history, origin, targets, UTC_CAL, KnownSessions.none(), cal)
    assert nobody.p50.max() == pytest.approx(0.0, abs=1e-6)
    bad = KnownSessions(
        np.array([3]),
        today.arrival,
        today.expected_departure,
        today.needed_wh,
        today.delivered_wh,
        today.pmax_w,
        today.power_now_w,
    )
    with pytest.raises(ForecastInputError, match="series 3"):
        forecast_intraday(history, origin, targets, UTC_CAL, bad, cal)
