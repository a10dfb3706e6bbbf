"""The profile kernel computes what the numpy reference states, on random gappy histories."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from forecaster.calendar import SiteCalendar, history_layout
from forecaster.kernels.profile import assemble_forecast, sqrt_profiles, sqrt_profiles_parallel
from tests.support import forecaster_reference as ref

Z = np.array([-1.2815515655446004, 0.0, 1.2815515655446004])


def _inputs(seed: int, days: int, gaps: float, start_day: date) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    cal = SiteCalendar.of("Europe/Amsterdam", holidays=[date(2024, 10, 3)])
    start = int(cal.local_midnight(start_day).timestamp()) + int(rng.integers(0, 4)) * 900
    length = days * 96 + int(rng.integers(0, 96))
    layout = history_layout(cal, start, length)
    values = rng.gamma(0.6, 4000.0, (3, length)) * (rng.random((3, length)) < 0.6)
    values[rng.random(values.shape) < gaps] = np.nan
    if seed % 3 == 0:
        values[1, : length // 2] = np.nan  # a series that started recently
    return values, layout.index, layout.day_type, layout.whole_day


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("use_sqrt", [True, False])
def test_kernel_matches_numpy_reference(seed: int, use_sqrt: bool) -> None:
    # Windows across the October DST change: 100-ISP days and cut first/last days.
    values, index, day_type, whole = _inputs(
        seed, 12 + seed * 3, 0.05 * (seed % 3), date(2024, 10, 1)
    )
    args = (0.1 + 0.05 * (seed % 4), Z, seed % 3, 3, 3, 0.5, 2.0, use_sqrt)
    got = sqrt_profiles(values, index, day_type, whole, *args)
    want = ref.sqrt_profiles(values, index, day_type, whole, *args)
    threaded = sqrt_profiles_parallel(values, index, day_type, whole, *args)
    # The kernel takes square roots in float32 (sums in float64): 1e-7 relative per root,
    # up to ~1e-5 once a narrow band's variance cancels; a milliwatt absolute.
    rtol, atol = (1e-4, 1e-3) if use_sqrt else (1e-9, 1e-6)
    for g, w, t in zip(got, want, threaded, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        np.testing.assert_allclose(t, g, rtol=1e-12, atol=1e-9)


def test_a_constant_history_forecasts_that_constant_with_no_spread() -> None:
    cal = SiteCalendar.of("UTC")
    layout = history_layout(cal, 0, 28 * 96)
    values = np.full((1, 28 * 96), 2500.0)
    profile, level, pooled = sqrt_profiles(
        values, layout.index, layout.day_type, layout.whole_day, 0.1, Z, 1, 3, 3, 0.5, 2.0, True
    )
    np.testing.assert_allclose(profile, 2500.0)
    np.testing.assert_allclose(level, 1.0)
    assert list(pooled[0]) == [20, 4, 4]


def test_recent_level_scales_the_profile_by_half_the_ratio() -> None:
    cal = SiteCalendar.of("UTC")
    layout = history_layout(cal, 0, 28 * 96)  # 1970-01-01 is a Thursday
    values = np.full((1, 28 * 96), 1000.0)
    weekdays = np.flatnonzero(layout.day_type == 0)
    for d in weekdays[-3:]:  # the last three weekdays doubled
        values[0, d * 96 : (d + 1) * 96] = 2000.0
    _, level, _ = sqrt_profiles(
        values, layout.index, layout.day_type, layout.whole_day, 0.0, Z, 0, 3, 3, 0.5, 2.0, True
    )
    mean_energy = (17 * 1000.0 + 3 * 2000.0) / 20
    assert level[0, 0] == pytest.approx(1.0 + 0.5 * (2000.0 / mean_energy - 1.0))
    assert level[0, 1] == pytest.approx(1.0)


def test_assemble_is_monotone_in_the_quantiles_and_scaled_by_level() -> None:
    profile = np.zeros((1, 3, 3, 4))
    profile[0, 0] = [[1.0, 2.0, 0.5, 0.0], [2.0, 2.0, 1.0, 0.0], [3.0, 2.5, 1.5, 0.0]]
    level = np.array([[2.0, 1.0, 1.0]])
    out = assemble_forecast(profile, level, np.array([0, 0, 1]), np.array([0, 2, 0]))
    np.testing.assert_allclose(out[:, 0, 0], [2.0, 4.0, 6.0])
    np.testing.assert_allclose(out[:, 0, 1], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[:, 0, 2], [0.0, 0.0, 0.0])
