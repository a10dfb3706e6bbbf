"""Forecast scores. Site load is zero in ~44 % of ISPs, so MAPE is
meaningless; NMAE (= WAPE) is the headline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecaster.calendar import Float64Array, Int64Array

QUANTILES = (0.1, 0.5, 0.9)


def covered(
    actual: Float64Array,
    p10: Float64Array,
    p50: Float64Array,
    p90: Float64Array,
    p_zero: Float64Array | None = None,
) -> Float64Array:
    """Per ISP, the probability that the outcome falls inside the forecast's P10-P90 band: 1
    or 0, except at the point mass at zero.

    Site load is exactly zero in many ISPs (every night; most of the day at an empty site).
    A forecast that gives zero a probability F(0) puts an outcome of zero anywhere in the
    levels [0, F(0)] of its distribution (the randomised PIT), of which the share
    (min(F(0), 0.9) - 0.1) / F(0) lies between its 10 % and 90 % levels. Counting a zero on
    a band [0, x] as covered outright gives a calibrated forecast of a mostly empty site a
    coverage near 100 % (86 % of the ISPs are zero in the spring 2020 collapse), and a
    forecast whose band misses zeros on purpose a better score. F(0) is `p_zero`, the
    forecast's own probability of zero, kept within what its quantiles say (at least 0.1
    when P10 is zero, 0.5 when P50 is, 0.9 when P90 is; below 0.5 when P50 is positive,
    below 0.9 when P90 is); without it, the middle of that interval. A zero below a
    positive P10 is not covered; a positive outcome is covered when P10 <= y <= P90.
    """
    y = np.asarray(actual, dtype=np.float64)
    inside = ((p10 <= y) & (y <= p90)).astype(np.float64)
    low = np.where(p90 <= 0, 0.9, np.where(p50 <= 0, 0.5, 0.1))
    high = np.where(p90 <= 0, 1.0, np.where(p50 <= 0, 0.9, 0.5))
    f0 = 0.5 * (low + high) if p_zero is None else np.clip(p_zero, low, high)
    credit = (np.minimum(f0, 0.9) - 0.1) / f0
    return np.where((y <= 0) & (p10 <= 0), credit, inside)


@dataclass(frozen=True)
class Scores:
    nmae_pct: float
    mae_kw: float
    rmse_kw: float
    daily_energy_error_pct: float
    coverage_p10_p90_pct: float
    """Share of ISPs inside the P10-P90 band, a zero outcome on a band from zero counted by
    its share of the point mass (`covered`)."""
    coverage_p10_p90_plain_pct: float
    """The plain count: any outcome with P10 <= y <= P90 covered, zeros on [0, x] included."""
    pinball_kw: float
    """Mean pinball loss over P10, P50 and P90."""
    pinball_p10_kw: float
    pinball_p50_kw: float
    pinball_p90_kw: float


def pinball(actual: Float64Array, forecast: Float64Array, q: float) -> float:
    diff = actual - forecast
    return float(np.mean(np.maximum(q * diff, (q - 1.0) * diff)))


def score(
    actual_w: Float64Array,
    p10_w: Float64Array,
    p50_w: Float64Array,
    p90_w: Float64Array,
    day: Int64Array,
    p_zero: Float64Array | None = None,
) -> Scores:
    """Scores over all ISPs; `day` labels each ISP's local day for the daily-energy error.

    All arrays (N,) in W; `p_zero` (N,) the forecast's probability of zero load (see
    `covered`). The daily-energy error is Σ_days |Σ_ISP e| / Σ_days Σ_ISP y.
    """
    y = np.asarray(actual_w, dtype=np.float64) / 1000.0
    lo = np.asarray(p10_w, dtype=np.float64) / 1000.0
    mid = np.asarray(p50_w, dtype=np.float64) / 1000.0
    hi = np.asarray(p90_w, dtype=np.float64) / 1000.0
    if not (y.shape == lo.shape == mid.shape == hi.shape == np.shape(day)) or y.size == 0:
        raise ValueError("scores need equal, non-empty arrays")
    err = mid - y
    total = float(y.sum())
    if total <= 0:
        raise ValueError("the actual load is zero throughout: NMAE is undefined")
    _, inverse = np.unique(day, return_inverse=True)
    daily_err = np.bincount(inverse, weights=err)
    losses = [pinball(y, f, q) for f, q in zip((lo, mid, hi), QUANTILES, strict=True)]
    return Scores(
        nmae_pct=100.0 * float(np.abs(err).sum()) / total,
        mae_kw=float(np.abs(err).mean()),
        rmse_kw=float(np.sqrt(np.mean(err * err))),
        daily_energy_error_pct=100.0 * float(np.abs(daily_err).sum()) / total,
        coverage_p10_p90_pct=100.0 * float(np.mean(covered(y, lo, mid, hi, p_zero))),
        coverage_p10_p90_plain_pct=100.0 * float(np.mean((lo <= y) & (y <= hi))),
        pinball_kw=float(np.mean(losses)),
        pinball_p10_kw=losses[0],
        pinball_p50_kw=losses[1],
        pinball_p90_kw=losses[2],
    )
