"""Flexibility envelope and request sizing: hand-made cases and the numpy reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from forecaster.flexibility import (
    FlexInputError,
    SessionSet,
    flexibility_envelope,
    site_limit,
    size_request,
)
from forecaster.kernels import flex
from tests.support import forecaster_reference as ref


def sessions(*rows: tuple[int, int, float, float, float]) -> SessionSet:
    a, d, e, lo, hi = (np.array(c) for c in zip(*rows, strict=True))
    return SessionSet(a, d, e, lo, hi)


def test_one_session_must_run_only_when_later_isps_cannot_finish_it() -> None:
    # 4 ISPs of 15 min at up to 8 kW = 8 kWh; 7 kWh needed: each ISP needs at least 4 kW
    # (7 - 3 * 2 = 1 kWh in 0.25 h).
    env = flexibility_envelope(sessions((0, 4, 7_000.0, 1_400.0, 8_000.0)), 50_000.0, 6)
    np.testing.assert_allclose(env.lower_w, [4_000.0] * 4 + [0.0, 0.0])
    np.testing.assert_allclose(env.upper_w, [8_000.0] * 4 + [0.0, 0.0])
    assert not env.short.any()


def test_minimum_power_rounds_a_small_must_run_up() -> None:
    # 6.1 kWh over 4 ISPs at 8 kW: 0.1 kWh short -> 400 W, but the charger's minimum is 1.4 kW.
    env = flexibility_envelope(sessions((0, 4, 6_100.0, 1_400.0, 8_000.0)), 50_000.0, 4)
    np.testing.assert_allclose(env.lower_w, [1_400.0] * 4)


def test_a_binding_site_limit_raises_the_lower_bound_of_a_deadline_group() -> None:
    # Two cars leave after 2 ISPs, each needs 3 kWh at up to 11 kW; the site takes 14 kW.
    # Together 6 kWh in 0.5 h: if one ISP gives 14 kW (3.5 kWh), the other needs 10 kW.
    two = sessions((0, 2, 3_000.0, 0.0, 11_000.0), (0, 2, 3_000.0, 0.0, 11_000.0))
    env = flexibility_envelope(two, 14_000.0, 2)
    np.testing.assert_allclose(env.lower_w, [10_000.0, 10_000.0])
    np.testing.assert_allclose(env.upper_w, [14_000.0, 14_000.0])


def test_a_session_that_cannot_finish_is_flagged_short() -> None:
    env = flexibility_envelope(sessions((0, 2, 10_000.0, 0.0, 7_000.0)), 50_000.0, 2)
    assert env.short.tolist() == [True]
    np.testing.assert_allclose(env.lower_w, [7_000.0, 7_000.0])


def test_sessions_from_utc_instants_round_inwards() -> None:
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
    s = SessionSet.from_instants(
        t0,
        15,
        [t0 - timedelta(hours=1), t0 + timedelta(minutes=20)],
        [t0 + timedelta(minutes=50), t0 + timedelta(hours=2)],
        [1_000.0, 2_000.0],
        [0.0, 0.0],
        [7_000.0, 7_000.0],
    )
    assert s.arrival.tolist() == [0, 2]
    assert s.departure.tolist() == [3, 8]


def test_reducing_power_moves_the_energy_to_the_next_isps() -> None:
    car = sessions((0, 8, 6_000.0, 0.0, 8_000.0))  # ASAP: 8 kW for 3 ISPs
    request = np.array([np.nan, -5_000.0] + [np.nan] * 6)
    sizing = size_request(car, 20_000.0, request)
    np.testing.assert_allclose(sizing.baseline_w[:4], [8_000.0, 8_000.0, 8_000.0, 0.0])
    np.testing.assert_allclose(sizing.change_w[1], -5_000.0)
    np.testing.assert_allclose(sizing.max_change_w[1], -8_000.0)
    # The 1.25 kWh not drawn in ISP 1 is drawn right after it.
    assert sizing.shifted_w.sum() * 0.25 == pytest.approx(1_250.0)
    assert sizing.allocation.complete


def test_raising_power_is_capped_by_what_the_cars_can_take() -> None:
    car = sessions((0, 8, 2_000.0, 0.0, 11_000.0))  # ASAP: 8 kW... at 11 kW 0.73 ISP
    request = np.array([np.nan] * 4 + [5_000.0] + [np.nan] * 3)
    sizing = size_request(car, 20_000.0, request)
    assert sizing.baseline_w[4] == 0.0
    assert sizing.change_w[4] == 0.0  # nothing left to take by ISP 4
    assert sizing.max_change_w[4] == 0.0


def test_limits_are_never_unlimited_or_negative() -> None:
    with pytest.raises(FlexInputError, match="inf W at ISP 2"):
        site_limit([1.0, 2.0, np.inf], 3)
    with pytest.raises(FlexInputError, match=r"-1\.0 W at ISP 0"):
        site_limit(-1.0, 3)
    with pytest.raises(FlexInputError, match=r"session 0: pmin_w 9000\.0 exceeds pmax_w 7000\.0"):
        sessions((0, 2, 1.0, 9_000.0, 7_000.0))
    with pytest.raises(FlexInputError, match="departure ISP 1 is before arrival ISP 3"):
        sessions((3, 1, 1.0, 0.0, 7_000.0))


@pytest.mark.parametrize("seed", range(12))
def test_envelope_kernel_matches_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, horizon = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    start = rng.integers(-5, horizon, n)
    end = start + rng.integers(0, 20, n)
    energy = rng.uniform(0, 30_000, n) * (rng.random(n) < 0.9)
    pmax = rng.uniform(3_000, 22_000, n)
    pmin = pmax * rng.uniform(0, 0.4, n)
    limit = rng.uniform(0, 150_000, horizon)
    got = flex.envelope(np.maximum(start, 0), end, energy, pmin, pmax, limit, 0.25)
    want = ref.envelope(np.maximum(start, 0), end, energy, pmin, pmax, limit, 0.25)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-6)
