"""Allocation of a site target to per-session schedules: exact cases, invariants, reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.flexibility import SessionSet, allocate, flexibility_envelope
from forecaster.kernels import flex
from tests.support import forecaster_reference as ref

DT = 0.25


def sessions(*rows: tuple[int, int, float, float, float]) -> SessionSet:
    a, d, e, lo, hi = (np.array(c) for c in zip(*rows, strict=True))
    return SessionSet(a, d, e, lo, hi)


def test_target_is_met_and_split_least_laxity_first() -> None:
    # Car 0 leaves after 2 ISPs needing 2 kWh (laxity 0.5 - 0.25 h); car 1 after 8 needing 2 kWh.
    cars = sessions((0, 2, 2_000.0, 0.0, 8_000.0), (0, 8, 2_000.0, 0.0, 8_000.0))
    result = allocate(cars, [6_000.0] * 8, 20_000.0)
    np.testing.assert_allclose(result.schedule_w[0, :2], [6_000.0, 2_000.0])
    np.testing.assert_allclose(result.schedule_w[1, :3], [0.0, 4_000.0, 4_000.0])
    np.testing.assert_allclose(result.site_w[:3], [6_000.0, 6_000.0, 4_000.0])
    assert result.complete


def test_feasibility_overrides_a_target_that_is_too_low() -> None:
    car = sessions((0, 2, 4_000.0, 0.0, 8_000.0))  # must draw 8 kW in both ISPs
    result = allocate(car, [0.0, 0.0], 20_000.0)
    np.testing.assert_allclose(result.site_w, [8_000.0, 8_000.0])
    assert result.complete


def test_a_charger_is_off_or_at_least_at_its_minimum() -> None:
    cars = sessions((0, 4, 5_000.0, 4_000.0, 11_000.0), (0, 4, 5_000.0, 4_000.0, 11_000.0))
    result = allocate(cars, [6_000.0] * 4, 50_000.0)
    on = result.schedule_w[result.schedule_w > 0]
    assert (on >= 4_000.0 - 1e-9).all()
    # 6 kW cannot be split as 3 + 3: one car takes it all.
    np.testing.assert_allclose(sorted(result.schedule_w[:, 0]), [0.0, 6_000.0])


def test_unmet_energy_is_reported_not_dropped() -> None:
    cars = sessions((0, 2, 4_000.0, 0.0, 8_000.0), (0, 2, 4_000.0, 0.0, 8_000.0))
    result = allocate(cars, [16_000.0, 16_000.0], 10_000.0)  # the site takes only 10 kW
    assert (result.site_w <= 10_000.0 + 1e-9).all()
    assert not result.complete
    assert result.unmet_wh.sum() == pytest.approx(8_000.0 - 2 * 10_000.0 * DT)


def test_energy_beyond_the_horizon_is_not_unmet() -> None:
    car = sessions((0, 40, 30_000.0, 0.0, 11_000.0))
    result = allocate(car, [0.0] * 8, 50_000.0)
    assert result.remaining_wh[0] == pytest.approx(30_000.0)
    assert result.complete


session_rows = st.lists(
    st.tuples(
        st.integers(-4, 20),  # arrival ISP
        st.integers(0, 24),  # stay in ISPs
        st.floats(0, 40_000),  # energy Wh
        st.floats(0, 0.5),  # pmin as a share of pmax
        st.floats(1_400, 22_000),  # pmax W
    ),
    min_size=1,
    max_size=25,
)


def build(rows: list[tuple[int, int, float, float, float]]) -> SessionSet:
    return SessionSet(
        np.array([r[0] for r in rows]),
        np.array([r[0] + r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] * r[4] for r in rows]),
        np.array([r[4] for r in rows]),
    )


@settings(max_examples=300, deadline=None)
@given(
    rows=session_rows,
    horizon=st.integers(1, 24),
    limit=st.floats(0, 200_000),
    target_share=st.floats(0, 1.5),
)
def test_allocation_invariants(
    rows: list[tuple[int, int, float, float, float]],
    horizon: int,
    limit: float,
    target_share: float,
) -> None:
    cars = build(rows)
    target = np.full(horizon, limit * target_share)
    result = allocate(cars, target, limit)
    s = result.schedule_w
    t = np.arange(horizon)
    inside = (np.maximum(cars.arrival, 0)[:, None] <= t) & (t < cars.departure[:, None])
    assert (s >= 0).all()
    assert (s <= cars.pmax_w[:, None] + 1e-6).all()
    assert ((s == 0) | (s >= cars.pmin_w[:, None] - 1e-6)).all(), "0-or-minimum"
    assert (s[~inside] == 0).all(), "only while plugged in"
    assert (result.site_w <= limit + 1e-6).all(), "site limit"
    delivered = (s * DT).sum(axis=1)
    assert (delivered + 1e-6 >= cars.energy_wh - result.remaining_wh).all()
    assert (result.remaining_wh <= cars.energy_wh + 1e-6).all()
    assert (result.unmet_wh <= result.remaining_wh + 1e-6).all()
    env = flexibility_envelope(cars, limit, horizon)
    assert (result.site_w <= env.upper_w + 1e-6).all()
    if result.complete:
        assert (result.site_w >= env.lower_w - 1e-6).all(), "a complete schedule respects lower"


@settings(max_examples=200, deadline=None)
@given(rows=session_rows, horizon=st.integers(1, 24), limit=st.floats(0, 200_000))
def test_envelope_bounds_hold(
    rows: list[tuple[int, int, float, float, float]], horizon: int, limit: float
) -> None:
    cars = build(rows)
    env = flexibility_envelope(cars, limit, horizon)
    assert (env.lower_w >= 0).all()
    assert (env.lower_w <= env.upper_w + 1e-9).all()
    assert (env.upper_w <= limit + 1e-9).all()
    asap = allocate(cars, env.upper_w, limit)
    assert (asap.site_w <= env.upper_w + 1e-6).all()


@pytest.mark.parametrize("seed", range(12))
def test_allocation_kernel_matches_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, horizon = int(rng.integers(1, 60)), int(rng.integers(1, 40))
    start = rng.integers(0, horizon, n)
    end = start + rng.integers(0, 30, n)
    energy = rng.uniform(0, 30_000, n)
    pmax = rng.uniform(3_000, 22_000, n)
    pmin = pmax * rng.uniform(0, 0.4, n)
    limit = rng.uniform(0, 200_000, horizon)
    target = rng.uniform(0, 150_000, horizon)
    got = flex.allocate(start, end, energy, pmin, pmax, limit, target, DT)
    want = ref.allocate(start, end, energy, pmin, pmax, limit, target, DT)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-6)
