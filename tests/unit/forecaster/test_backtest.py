"""The backtest protocol on the vendored Caltech sessions, scored against the baselines."""

from __future__ import annotations

import math
from datetime import date, time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.backtest import (
    BacktestConfig,
    BacktestError,
    format_figure,
    parse_holidays,
    run_backtest,
)
from forecaster.metrics import covered, score

FILES = sorted((Path(__file__).resolve().parents[2] / "data" / "acn-caltech").glob("*.csv.gz"))


def test_metrics_on_a_hand_made_case() -> None:
    y = np.array([0.0, 2000.0, 4000.0, 2000.0])
    s = score(y, y * 0.5, y + 1000.0, y * 2.0, np.array([1, 1, 2, 2]))
    assert s.nmae_pct == pytest.approx(100 * 4000 / 8000)
    assert s.mae_kw == pytest.approx(1.0)
    assert s.rmse_kw == pytest.approx(1.0)
    assert s.daily_energy_error_pct == pytest.approx(100 * (2000 + 2000) / 8000)
    assert s.coverage_p10_p90_plain_pct == 100.0
    # The zero sits on a band [0, 0]: the middle of F(0) in [0.9, 1] gives it 0.8 / 0.95.
    assert s.coverage_p10_p90_pct == pytest.approx(100 * (3 + 0.8 / 0.95) / 4)
    assert s.pinball_p50_kw == pytest.approx(0.5)  # MAE / 2 at q = 0.5


def test_a_zero_counts_by_its_share_of_the_point_mass() -> None:
    y = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 500.0, 500.0])
    p10 = np.array([0.0, 0.0, 0.0, 0.0, 100.0, 0.0, 600.0])
    p50 = np.array([0.0, 0.0, 50.0, 50.0, 200.0, 400.0, 700.0])
    p90 = np.array([0.0, 80.0, 90.0, 90.0, 300.0, 900.0, 800.0])
    p_zero = np.array([1.0, 0.6, 0.3, 0.02, 0.0, 0.4, 0.0])
    got = covered(y, p10, p50, p90, p_zero)
    # [0, 0] certain zero: 0.8; F(0) 0.6: 0.5 / 0.6; 0.3: 0.2 / 0.3; 0.02 is below what a
    # zero P10 says (0.1): 0; a zero below a positive P10: 0; positives by the band.
    np.testing.assert_allclose(got, [0.8, 0.5 / 0.6, 0.2 / 0.3, 0.0, 0.0, 1.0, 0.0])


@settings(max_examples=30, deadline=None)
@given(p0=st.floats(0.0, 0.97), seed=st.integers(0, 1000))
def test_a_calibrated_forecast_of_a_mostly_empty_site_covers_eighty_percent(
    p0: float, seed: int
) -> None:
    """Load zero with probability p0, else exponential: the true P10/P50/P90 and p0 cover
    80 % in expectation, however many ISPs are zero (a plain count gives at least p0)."""
    rng = np.random.default_rng(seed)
    n = 40_000
    y = np.where(rng.random(n) < p0, 0.0, rng.exponential(1000.0, n))

    def q(level: float) -> float:
        return 0.0 if level <= p0 else -1000.0 * math.log(1 - (level - p0) / (1 - p0))

    ones = np.ones(n)
    got = covered(y, q(0.1) * ones, q(0.5) * ones, q(0.9) * ones, p0 * ones)
    assert float(got.mean()) == pytest.approx(0.8, abs=0.01)


def test_two_weeks_of_the_caltech_protocol() -> None:
    result = run_backtest(BacktestConfig(FILES, date(2019, 10, 28), date(2019, 11, 10)))
    assert result.test_days == 14
    assert result.isps == 14 * 96 + 4  # 2019-11-03 is a 100-ISP day in Pasadena
    ours = result.scores["ours"]
    naive = result.scores["seasonal_naive"]
    assert ours.nmae_pct < naive.nmae_pct
    assert 30 < ours.coverage_p10_p90_pct <= 100
    names = [name for name, _ in result.figures()]
    for prefix in ("ours", "seasonal_naive", "weekday_mean_4w"):
        for metric in (
            "nmae_pct",
            "mae_kw",
            "rmse_kw",
            "daily_energy_error_pct",
            "coverage_p10_p90_pct",
            "pinball_kw",
        ):
            assert f"{prefix}_{metric}" in names


def test_intraday_backtest_scores_calibration_against_raw_driver_input() -> None:
    result = run_backtest(
        BacktestConfig(FILES, date(2019, 11, 4), date(2019, 11, 8), origin=time(10, 0))
    )
    assert {"ours", "ours_raw_driver_input", "ours_without_sessions"} <= set(result.scores)
    assert result.isps == 5 * 56


def test_dates_outside_the_data_and_unknown_methods_are_refused() -> None:
    with pytest.raises(BacktestError, match="less than 28 days of history"):
        run_backtest(BacktestConfig(FILES, date(2019, 5, 20), date(2019, 6, 1)))
    with pytest.raises(BacktestError, match="last data day"):
        run_backtest(BacktestConfig(FILES, date(2019, 12, 1), date(2020, 3, 1)))
    with pytest.raises(BacktestError, match="unknown method 'lstm'"):
        run_backtest(BacktestConfig(FILES, method="lstm"))


def test_holiday_lists_and_figure_format() -> None:
    assert parse_holidays(["2019-07-04, 2019-12-25 # comment", ""]) == {
        date(2019, 7, 4),
        date(2019, 12, 25),
    }
    with pytest.raises(BacktestError, match=r"holidays\.txt:2: holiday '2019-13-01'"):
        parse_holidays(["2019-07-04", "2019-13-01"], "holidays.txt")
    assert format_figure("ours_nmae_pct", 53.0249) == "ours_nmae_pct: 53.02"
