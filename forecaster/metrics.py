"""Forecast scores. Site load is zero in ~44 % of ISPs, so MAPE is
meaningless; NMAE (= WAPE) is the headline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecaster.calendar import Float64Array, Int64Array

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Scores:
    nmae_pct: float
    mae_kw: float
    rmse_kw: float
    daily_energy_error_pct: float
    coverage_p10_p90_pct: float
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
) -> Scores:
    """Scores over all ISPs; `day` labels each ISP's local day for the daily-energy error.

    All arrays (N,) in W. The daily-energy error is Σ_days |Σ_ISP e| / Σ_days Σ_ISP y.
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
        coverage_p10_p90_pct=100.0 * float(np.mean((lo <= y) & (y <= hi))),
        pinball_kw=float(np.mean(losses)),
        pinball_p10_kw=losses[0],
        pinball_p50_kw=losses[1],
        pinball_p90_kw=losses[2],
    )
