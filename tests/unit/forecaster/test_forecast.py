"""Day-ahead forecast API: many series at once, gaps, new sites, DST days, holidays, bad input."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from forecaster.calendar import SiteCalendar
from forecaster.forecast import (
    EmptyHistoryError,
    ForecastInputError,
    ForecastSettings,
    PowerHistory,
    fit_profiles,
    forecast_load,
)

AMS = SiteCalendar.of("Europe/Amsterdam")


def workplace_history(
    days: int, series: int = 4, start_day: date = date(2024, 9, 2)
) -> PowerHistory:
    """Weekday load 08:00-18:00 local, a little on Saturdays, nothing on Sundays."""
    rng = np.random.default_rng(7)
    start = AMS.local_midnight(start_day)
    length = 0
    rows = []
    for d in range(days):
        day = start_day + timedelta(days=d)
        isps = AMS.day_isps(day)
        _, slot = AMS.local_day_and_slot(isps)
        scale = {5: 0.2, 6: 0.0}.get(day.weekday(), 1.0)
        busy = (slot >= 32) & (slot < 72)
        rows.append(busy * scale * 20_000.0)
        length += isps.size
    base = np.concatenate(rows)
    noise = rng.uniform(0.8, 1.2, (series, length))
    return PowerHistory(start, 15, base * noise)


def test_forecasts_every_isp_of_a_market_day_for_every_series() -> None:
    history = workplace_history(28)
    f = forecast_load(history, AMS.day_isps(date(2024, 9, 30)), AMS)
    assert f.p50.shape == (4, 96)
    for band in (f.p10, f.p50, f.p90):
        assert np.isfinite(band).all()
        assert (band >= 0).all()
    assert (f.p10 <= f.p50).all()
    assert (f.p50 <= f.p90).all()
    _, slot = AMS.local_day_and_slot(f.targets)
    busy = (slot >= 34) & (slot < 70)
    assert f.p50[:, busy].min() > 12_000
    assert f.p50[:, slot < 28].max() == 0.0


def test_fall_back_day_gets_100_isps_and_the_repeated_hour_twice() -> None:
    history = workplace_history(56, start_day=date(2024, 9, 1))
    f = forecast_load(history, AMS.day_isps(date(2024, 10, 27)), AMS)
    assert f.p50.shape == (4, 100)
    np.testing.assert_array_equal(f.p50[:, 8:12], f.p50[:, 12:16])


def test_spring_forward_day_gets_92_isps() -> None:
    history = workplace_history(28, start_day=date(2024, 3, 3))
    f = forecast_load(history, AMS.day_isps(date(2024, 3, 31)), AMS)
    assert f.p50.shape == (4, 92)


def test_a_configured_holiday_is_forecast_like_a_sunday() -> None:
    history = workplace_history(28)
    monday = date(2024, 9, 30)
    holiday_cal = SiteCalendar.of("Europe/Amsterdam", holidays=[monday])
    f = forecast_load(history, holiday_cal.day_isps(monday), holiday_cal)
    assert f.p50.max() == 0.0


def test_gaps_are_skipped_not_read_as_zero() -> None:
    history = workplace_history(28)
    gappy = history.values.copy()
    gappy[:, 5 * 96 : 12 * 96] = np.nan  # a week without data
    gappy[:, np.random.default_rng(1).random(gappy.shape[1]) < 0.1] = np.nan
    f = forecast_load(PowerHistory(history.start, 15, gappy), AMS.day_isps(date(2024, 9, 30)), AMS)
    full = forecast_load(history, AMS.day_isps(date(2024, 9, 30)), AMS)
    assert np.isfinite(f.p50).all()
    np.testing.assert_allclose(f.p50.sum(axis=1), full.p50.sum(axis=1), rtol=0.15)


def test_a_new_site_with_three_days_forecasts_its_weekend_from_what_it_has() -> None:
    history = workplace_history(3, start_day=date(2024, 9, 25))  # Wed-Fri only
    f = forecast_load(history, AMS.day_isps(date(2024, 9, 28)), AMS)  # a Saturday
    assert list(f.days_pooled[0]) == [3, 3, 3]
    assert f.p50.max() > 0


def test_series_are_independent_of_their_batch() -> None:
    history = workplace_history(21)
    targets = AMS.day_isps(date(2024, 9, 23))
    batch = forecast_load(history, targets, AMS)
    one = forecast_load(PowerHistory(history.start, 15, history.values[2:3]), targets, AMS)
    np.testing.assert_array_equal(batch.p50[2], one.p50[0])


def test_empty_history_names_the_series() -> None:
    history = workplace_history(7)
    values = history.values.copy()
    values[[1, 3]] = np.nan
    with pytest.raises(EmptyHistoryError, match="series 1, 3") as info:
        fit_profiles(PowerHistory(history.start, 15, values), AMS)
    assert info.value.series == [1, 3]


@pytest.mark.parametrize(("bad", "text"), [(-5.0, "-5.0"), (np.inf, "inf")])
def test_impossible_history_values_are_named(bad: float, text: str) -> None:
    values = np.zeros((2, 96))
    values[1, 40] = bad
    with pytest.raises(ForecastInputError, match=rf"{text} W at series 1, ISP 40"):
        PowerHistory(datetime(2024, 1, 1, tzinfo=UTC), 15, values)


def test_targets_off_the_isp_grid_and_naive_times_are_refused() -> None:
    history = workplace_history(7)
    with pytest.raises(ForecastInputError, match="not an ISP start"):
        forecast_load(history, [datetime(2024, 9, 10, 8, 7, tzinfo=UTC)], AMS)
    with pytest.raises(ForecastInputError, match="UTC-aware"):
        PowerHistory(datetime(2024, 1, 1), 15, np.zeros((1, 4)))
    with pytest.raises(ForecastInputError, match="alpha"):
        ForecastSettings(alpha=1.5)
