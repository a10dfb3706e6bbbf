"""Per-site structure selection against its plain-loop reference, and its guarantees: no
look-ahead, never worse than a baseline on the held-out days, calibrated bands."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from forecaster.metrics import covered
from forecaster.selection import (
    BAND_DAYS,
    BAND_HALF_LIFE_DAYS,
    BASELINES,
    CANDIDATES,
    EVAL_HALF_LIFE_DAYS,
    DayTable,
    Selection,
    SelectionError,
    _combinations,
    candidate_forecast,
    forecast_days,
    forecast_many,
    regime_changed,
    select,
    zero_probability,
)
from tests.support import selection_reference as ref

SLOTS = 24
FIRST = date(2024, 3, 4).toordinal()  # a Monday
NAMES = sorted(CANDIDATES)


def random_table(seed: int, days: int, gaps: bool = True) -> DayTable:
    """Workplace-like hourly load with weekday structure, holidays, zeros and gaps."""
    rng = np.random.default_rng(seed)
    ordinals = FIRST + np.arange(days, dtype=np.int64)
    weekday = (ordinals - 1) % 7
    holiday = rng.random(days) < 0.05
    shape = np.exp(-0.5 * ((np.arange(SLOTS) - rng.uniform(8, 12)) / rng.uniform(1.5, 4)) ** 2)
    rate = np.where(weekday < 5, rng.uniform(0.5, 1.5, 7)[weekday], 0.15)
    rate = np.where(holiday, 0.1, rate)
    values = rng.poisson(8 * rate[:, None] * shape[None, :]) * 7000.0
    values = values * (rng.random(values.shape) > 0.1)
    if gaps:
        values[rng.random(values.shape) < 0.03] = np.nan
        values[rng.integers(0, days)] = np.nan  # a whole day without data
    return DayTable(values.astype(np.float64), ordinals, holiday)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    name=st.sampled_from(NAMES),
    days=st.integers(3, 70),
)
def test_every_candidate_matches_its_reference(seed: int, name: str, days: int) -> None:
    table = random_table(seed, days)
    candidate = CANDIDATES[name]
    targets = table.ordinals[-3:] + 1  # includes days inside the table: age filter
    hol = np.array([False, True, False])
    got = candidate_forecast(table, targets, hol, candidate)
    for i, target in enumerate(targets.tolist()):
        want = ref.forecast(
            table.values, table.ordinals, table.holiday, target, bool(hol[i]), candidate
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_each_candidate_matches_its_reference_on_a_fixed_table(name: str) -> None:
    table = random_table(7, 40)
    target = int(table.ordinals[-1]) + 1
    got = candidate_forecast(table, np.array([target]), np.array([False]), CANDIDATES[name])
    want = ref.forecast(
        table.values, table.ordinals, table.holiday, target, False, CANDIDATES[name]
    )
    np.testing.assert_allclose(got[0], want, rtol=1e-9, atol=1e-6)


def test_the_baselines_are_what_they_say() -> None:
    table = random_table(3, 35, gaps=False)
    target = int(table.ordinals[-1]) + 1
    naive = candidate_forecast(
        table, np.array([target]), np.array([False]), CANDIDATES[BASELINES[0]]
    )
    mean4 = candidate_forecast(
        table, np.array([target]), np.array([False]), CANDIDATES[BASELINES[1]]
    )
    d = table.days  # the target's index
    np.testing.assert_allclose(naive[0], table.values[d - 7])
    np.testing.assert_allclose(mean4[0], table.values[[d - 7, d - 14, d - 21, d - 28]].mean(axis=0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), days=st.integers(30, 60), cut=st.integers(15, 29))
def test_data_after_the_origin_never_changes_a_forecast_made_at_it(
    seed: int, days: int, cut: int
) -> None:
    """Selection at an origin and the forecast it makes, with the days from the origin on
    present but rewritten: the result is the same, because only days before it are read."""
    table = random_table(seed, days)
    origin = int(table.ordinals[cut])
    chosen = select(table.before(origin))
    rng = np.random.default_rng(seed + 1)
    changed = table.values.copy()
    changed[cut:] = rng.uniform(0, 50_000, changed[cut:].shape)
    other = DayTable(changed, table.ordinals, table.holiday)
    assert select(other.before(origin)) == chosen
    targets = np.array([origin, origin + 1])
    hol = np.array([False, False])
    for name in NAMES[:: max(1, len(NAMES) // 20)] + list(BASELINES):
        # The full table, future included, is handed in: the candidate must skip it.
        a = candidate_forecast(table, targets[:1], hol[:1], CANDIDATES[name])
        b = candidate_forecast(other, targets[:1], hol[:1], CANDIDATES[name])
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        forecast_days(chosen, table, targets[:1], hol[:1])[1],
        forecast_days(chosen, other, targets[:1], hol[:1])[1],
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), days=st.integers(20, 56))
def test_the_choice_is_never_worse_than_a_baseline_on_the_held_out_days(
    seed: int, days: int
) -> None:
    chosen = select(random_table(seed, days))
    assert chosen.heldout_nmae_pct <= min(chosen.baseline_nmae_pct.values()) + 1e-9
    assert set(chosen.baseline_nmae_pct) == set(BASELINES)
    assert abs(sum(chosen.weights) - 1.0) < 1e-9


def test_held_out_scores_match_the_reference() -> None:
    table = random_table(11, 30)
    pool = [CANDIDATES[b] for b in BASELINES] + [
        CANDIDATES["daytype-hl14-mean-sqrt-level"],
        CANDIDATES["weekday-win28-median-sqrt"],
        CANDIDATES["shrink-hl7-trimmed-watts"],
    ]
    want = ref.select_scores(table.values, table.ordinals, table.holiday, pool, 14)
    chosen = select(table, pool, eval_days=14)
    for name in BASELINES:
        assert chosen.baseline_nmae_pct[name] == pytest.approx(want[name], rel=1e-9)
    best = min(want.values())
    assert chosen.heldout_nmae_pct <= best + 1e-9
    if len(chosen.members) == 1:
        assert chosen.heldout_nmae_pct == pytest.approx(best, rel=1e-9)


def test_the_choice_scores_lowest_among_every_combination_tried() -> None:
    """The held-out score is the P50's NMAE as `forecast_days` makes it, and no weighting of
    the best few (convex grid, inverse error) nor mean of the best many scores lower."""
    table = random_table(7, 42)
    names = [
        "daytype-hl14-mean-sqrt",
        "daytype-hl28-trimmed-sqrt",
        "daytype-win28-median-sqrt-level",
        "weekday-hl7-mean-watts",
        "weekday-win56-trimmed-sqrt",
        "shrink-hl14-median-sqrt",
        "shrink-win14-mean-sqrt-level",
    ]
    pool = [CANDIDATES[n] for n in [*BASELINES, *names]]
    chosen = select(table, pool)
    n = chosen.eval_days
    targets, hol, y = table.ordinals[-n:], table.holiday[-n:], table.values[-n:]
    known = ~np.isnan(y)
    w = known * (0.5 ** ((np.arange(n, 0, -1) - 1) / EVAL_HALF_LIFE_DAYS))[:, np.newaxis]
    actual = np.where(known, y, 0.0)

    def score(members: tuple[str, ...], weights: tuple[float, ...]) -> float:
        f = forecast_days(
            replace(chosen, members=members, weights=weights), table, targets, hol, kernel=False
        )[1]
        return 100.0 * float((w * np.abs(f - actual)).sum() / (w * actual).sum())

    assert score(chosen.members, chosen.weights) == pytest.approx(chosen.heldout_nmae_pct)
    singles = {c.name: score((c.name,), (1.0,)) for c in pool}
    ranked = sorted(singles, key=lambda m: (singles[m], m))
    tried = _combinations(ranked, singles)
    assert {len(m) for m, _ in tried} == {2, 3, 5, 8}
    for members, weights in tried:
        assert abs(sum(weights) - 1.0) < 1e-9
        assert chosen.heldout_nmae_pct <= score(members, weights) + 1e-9
    assert chosen.heldout_nmae_pct <= min(singles.values()) + 1e-9


def test_bands_cover_eighty_percent_of_the_held_out_isps() -> None:
    """Coverage as the backtest scores it: a zero on a band from zero counts by its share of
    the forecast's point mass at zero (`forecaster.metrics.covered`)."""
    table = random_table(5, 56, gaps=False)
    chosen = select(table)
    n = min(chosen.eval_days, BAND_DAYS)  # the bands are fitted on the newest held-out days
    inside = []
    for e in range(table.days - n, table.days):
        o = int(table.ordinals[e])
        p10, p50, p90 = forecast_days(
            chosen, table.before(o), np.array([o]), table.holiday[e : e + 1]
        )
        assert (p10 <= p50).all()
        assert (p50 <= p90).all()
        assert (p10 >= 0).all()
        y = table.values[e]
        p_zero = zero_probability(table.before(o), np.array([o]), table.holiday[e : e + 1])
        inside.append(covered(y, p10[0], p50[0], p90[0], p_zero[0]))
    # Those days weigh by recency, as in fitting the bands.
    age = np.arange(n, 0, -1)
    weight = 0.5 ** ((age - 1) / BAND_HALF_LIFE_DAYS)
    share = float((weight * np.mean(inside, axis=1)).sum() / weight.sum())
    assert 0.79 <= share <= 0.84


def test_selection_round_trips_through_json() -> None:
    chosen = select(random_table(2, 42))
    assert Selection.from_json(chosen.as_json()) == chosen
    broken = chosen.as_json() | {"members": ["no-such-structure"]}
    with pytest.raises(SelectionError, match="unknown structures"):
        Selection.from_json(broken)


def test_too_short_a_history_is_a_clear_error() -> None:
    with pytest.raises(SelectionError, match="at least 14"):
        select(random_table(1, 10))
    young = random_table(1, 40)
    values = young.values.copy()
    values[:-5] = np.nan  # the agent measured only the last 5 days
    with pytest.raises(SelectionError, match=r"[45] of the last 33 days have data"):
        select(DayTable(values, young.ordinals, young.holiday))


def test_a_collapse_is_a_regime_change_and_noise_is_not() -> None:
    table = random_table(9, 56, gaps=False)
    chosen = select(table.before(int(table.ordinals[-3])))
    actual = table.values[-3:]
    p50 = forecast_days(chosen, table, table.ordinals[-3:], table.holiday[-3:])[1]
    assert not regime_changed(chosen, actual, p50)
    assert regime_changed(chosen, actual * 0.1, p50)
    assert regime_changed(replace(chosen, mean_abs_error_w=1.0), actual, p50 + 5000.0)


def test_near_zero_load_is_no_regime_change() -> None:
    """A site that drew nothing on its held-out days (held-out error 0 W) must not re-select
    at every round because a few watts of standby now differ from the forecast's nothing."""
    table = random_table(9, 56, gaps=False)
    chosen = replace(select(table.before(int(table.ordinals[-3]))), mean_abs_error_w=0.0)
    idle = np.zeros_like(table.values[-3:])
    assert not regime_changed(chosen, idle + 3.0, idle)  # standby against nothing
    assert not regime_changed(chosen, idle, idle + 40.0)  # a tiny forecast, nothing drawn
    # A real change on that quiet site still counts: chargers now draw kilowatts.
    assert regime_changed(chosen, idle + 4000.0, idle)


def test_many_series_at_once_give_each_series_its_own_forecast() -> None:
    tables = [random_table(seed, 45) for seed in range(40)]  # more than one block
    holiday = tables[0].holiday
    values = np.stack([t.values for t in tables])
    chosen = select(tables[0])
    ordinals = tables[0].ordinals
    targets = np.array([int(ordinals[-1]) + 1, int(ordinals[-1]) + 2])
    hol = np.array([False, True])
    many = forecast_many(chosen, values, ordinals, holiday, targets, hol)
    for s, t in enumerate(tables):
        one = forecast_days(chosen, DayTable(t.values, ordinals, holiday), targets, hol)
        for q in range(3):
            np.testing.assert_allclose(many[q][s], one[q], rtol=1e-12, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    name=st.sampled_from(NAMES),
    days=st.integers(3, 70),
    gaps=st.booleans(),
    offset=st.sampled_from([0.0, -3000.0]),
)
def test_the_kernel_forecasts_every_candidate_as_the_numpy_path(
    seed: int, name: str, days: int, gaps: bool, offset: float
) -> None:
    table = random_table(seed, days, gaps)
    # An offset makes some values negative (a meter's sign, export): no zeros-first order.
    table = DayTable(table.values + offset, table.ordinals, table.holiday)
    targets = table.ordinals[-3:] + 1
    hol = np.array([False, True, False])[: targets.size]
    fast = candidate_forecast(table, targets, hol, CANDIDATES[name], kernel=True)
    slow = candidate_forecast(table, targets, hol, CANDIDATES[name], kernel=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    members=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
    series=st.integers(1, 5),
)
# A slot whose days all had the same power: the paths' variances were rounding of opposite
# signs, and only one of them put the spread floor (a 61 W P90) on it.
@example(seed=2373, members=["seasonal_naive"], series=3)
def test_the_kernel_gives_the_numpy_paths_bands_for_many_series(
    seed: int, members: list[str], series: int
) -> None:
    tables = [random_table(seed + s, 40) for s in range(series)]
    ordinals, holiday = tables[0].ordinals, tables[0].holiday
    values = np.stack([t.values for t in tables])
    chosen = replace(
        select(tables[0]),
        members=tuple(members),
        weights=tuple(1.0 / len(members) for _ in members),
    )
    targets = np.array([int(ordinals[-1]) + d for d in (1, 2, 5)])
    hol = np.array([False, True, False])
    fast = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=True)
    slow = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=False)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-9, atol=1e-6)
    # The bands' spread is a difference of moments: rounding is amplified where it is small.
    for q in (0, 2):
        np.testing.assert_allclose(fast[q], slow[q], rtol=1e-6, atol=1e-3)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    days=st.integers(3, 60),
    offset=st.sampled_from([0.0, -3000.0]),
    series=st.sampled_from([1, 3]),
)
def test_median_and_trimmed_from_one_sort_are_each_alone_to_the_bit(
    seed: int, days: int, offset: float, series: int
) -> None:
    from forecaster.kernels import selection as kernel

    values = np.stack([random_table(seed + s, days).values + offset for s in range(series)])
    rng = np.random.default_rng(seed)
    w = rng.random((series, 4, days)) * (rng.random((series, 4, days)) < 0.6)
    spaces = np.array([kernel.WATTS, kernel.SQRT], dtype=np.int64)
    both, mass = kernel.weighted_estimates(values, 1, spaces, w, kernel.MEDIAN_AND_TRIMMED, 0.2)
    median, mass_m = kernel.weighted_estimates(values, 1, spaces, w, kernel.MEDIAN, 0.2)
    trimmed, _ = kernel.weighted_estimates(values, 1, spaces, w, kernel.TRIMMED, 0.2)
    np.testing.assert_array_equal(both[:2], median)
    np.testing.assert_array_equal(both[2:], trimmed)
    np.testing.assert_array_equal(mass, mass_m)


def test_a_combination_of_a_median_and_a_trimmed_mean_forecasts_as_the_numpy_path() -> None:
    tables = [random_table(40 + s, 42) for s in range(3)]
    ordinals, holiday = tables[0].ordinals, tables[0].holiday
    values = np.stack([t.values for t in tables])
    members = (
        "daytype-win56-trimmed-sqrt",
        "daytype-win56-median-sqrt",
        "shrink-hl14-median-sqrt-level",
        "shrink-hl14-trimmed-watts",
    )
    chosen = replace(select(tables[0]), members=members, weights=(0.25, 0.25, 0.25, 0.25))
    targets = np.array([int(ordinals[-1]) + d for d in (1, 2, 6)])
    hol = np.array([False, False, True])
    fast = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=True)
    slow = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=False)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-9, atol=1e-6)


def test_the_estimator_codes_are_the_kernels() -> None:
    from forecaster import selection
    from forecaster.kernels import selection as kernel

    assert selection._ESTIMATORS == {
        "mean": kernel.MEAN,
        "median": kernel.MEDIAN,
        "trimmed": kernel.TRIMMED,
    }


def test_selection_and_its_numpy_path_do_not_load_numba() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from forecaster.selection import DayTable, forecast_days, select\n"
        "from datetime import date\n"
        "rng = np.random.default_rng(0)\n"
        "o = date(2024, 3, 4).toordinal() + np.arange(40)\n"
        "t = DayTable(rng.poisson(2, (40, 24)) * 7000.0, o, np.zeros(40, dtype=bool))\n"
        "s = select(t)\n"
        "forecast_days(s, t, o[-1:] + 1, np.zeros(1, dtype=bool), kernel=False)\n"
        "print('numba' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_threaded_kernel_gives_the_numpy_paths_numbers() -> None:
    from forecaster.selection import PARALLEL_MIN_SERIES

    tables = [random_table(seed, 30) for seed in range(PARALLEL_MIN_SERIES + 3)]
    ordinals, holiday = tables[0].ordinals, tables[0].holiday
    values = np.stack([t.values for t in tables])
    members = ("daytype-win28-trimmed-watts", "weekday-hl14-median-sqrt", "shrink-hl7-mean-sqrt")
    chosen = replace(select(tables[0]), members=members, weights=(0.5, 0.3, 0.2))
    targets = np.array([int(ordinals[-1]) + d for d in (1, 2)])
    hol = np.array([False, True])
    fast = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=True)
    slow = forecast_many(chosen, values, ordinals, holiday, targets, hol, kernel=False)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-9, atol=1e-6)
    # The spread is a difference of two moments (rounding differs between the kernel and
    # BLAS by ~1e-7 relative), times the band's upper level: a wide level amplifies it.
    for q in (0, 2):
        np.testing.assert_allclose(fast[q], slow[q], rtol=1e-5, atol=1e-3)
