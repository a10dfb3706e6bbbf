"""Selection on synthetic sites whose shapes differ from the Caltech garage: in the same run
ours is not worse than the best baseline, and the bands cover 78-82 % of the test ISPs."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from forecaster.backtest import BacktestConfig, BacktestError, _Reselection, run_backtest
from forecaster.calendar import SiteCalendar
from forecaster.selection import DayTable, day_table
from forecaster.sessions import reconstruct_power
from forecaster.synthetic import SHAPES, generate


@pytest.mark.parametrize("shape", ["odd_weekday", "doubling"])
def test_ours_is_not_worse_than_the_best_baseline_on_a_synthetic_site(shape: str) -> None:
    result = run_backtest(
        BacktestConfig([], synthetic=shape, synthetic_days=112, timezone="Europe/Amsterdam")
    )
    ours = result.scores["ours"]
    best = min(result.scores[b].nmae_pct for b in ("seasonal_naive", "weekday_mean_4w"))
    assert ours.nmae_pct <= best
    assert 78.0 <= ours.coverage_p10_p90_pct <= 82.0
    assert result.selections
    figures = dict(result.figures())
    assert "last_selection_structure" in figures
    assert "last_selection_heldout_weekday_mean_4w_nmae_pct" in figures


def test_the_generator_is_seeded_and_shapes_differ() -> None:
    cal = SiteCalendar.of("Europe/Amsterdam")
    a = generate("night_shift", date(2024, 1, 1), 21, cal, seed=3)
    b = generate("night_shift", date(2024, 1, 1), 21, cal, seed=3)
    c = generate("night_shift", date(2024, 1, 1), 21, cal, seed=4)
    np.testing.assert_array_equal(a.arrival, b.arrival)
    assert not np.array_equal(a.delivered_wh, c.delivered_wh)
    assert (a.departure > a.arrival).all()
    # Night shift: most cars stay past midnight.
    crosses = [
        cal.local_day_and_slot(np.array([x]))[0][0] != cal.local_day_and_slot(np.array([y]))[0][0]
        for x, y in zip(a.arrival, a.departure, strict=True)
    ]
    assert np.mean(crosses) > 0.8
    doubling = generate("doubling", date(2024, 1, 1), 84, cal, seed=0)
    half = int(cal.local_midnight(date(2024, 2, 12)).timestamp())
    first, second = (doubling.arrival < half).sum(), (doubling.arrival >= half).sum()
    assert second > 1.6 * first
    assert set(SHAPES) == {"odd_weekday", "night_shift", "fleet_depot", "doubling"}
    with pytest.raises(BacktestError, match="unknown synthetic site"):
        run_backtest(BacktestConfig([], synthetic="cathedral"))


def test_the_backtest_schedule_never_reads_a_day_before_forecasting_it() -> None:
    """Weekly and regime-change re-selection over a table that holds the whole period:
    rewriting every day from k on leaves the forecasts of days up to k unchanged."""
    cal = SiteCalendar.of("Europe/Amsterdam")
    sessions = generate("doubling", date(2024, 1, 1), 70, cal, seed=1)
    start = int(cal.local_midnight(date(2024, 1, 1)).timestamp())
    end = int(cal.local_midnight(date(2024, 3, 11)).timestamp())
    power = reconstruct_power(sessions, start, 900, (end - start) // 900)
    table = day_table(power, start, cal, end)
    k = 50
    changed = table.values.copy()
    changed[k:] = np.random.default_rng(0).uniform(0, 80_000, changed[k:].shape)
    runs = []
    for values in (table.values, changed):
        schedule = _Reselection(DayTable(values, table.ordinals, table.holiday))
        runs.append(
            [schedule.forecast(date.fromordinal(int(o))) for o in table.ordinals[28 : k + 1]]
        )
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
