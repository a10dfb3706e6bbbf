"""P10/P90 of a chosen structure: split conformal bands from its held-out residuals.

Kept apart from the choice of the P50 (`forecaster.selection`): the bands are fitted after
it, on the same held-out days, and read the candidates' machinery only for each slot's
spread.
"""

from __future__ import annotations

import math

import numpy as np

from forecaster.calendar import Float64Array
from forecaster.candidates import TRIM, Candidate, _Context, _estimate, _weighted_estimates

BAND_HOURS = 4
COVERAGE = 0.8
SPREAD_HALF_LIFE_DAYS = 28
SPREAD_FLOOR = 0.25
"""The bands' scale is the slot's spread plus this share of the mean spread, so a slot
whose past days happened to agree still gets a band."""


def _weighted_quantile(values: Float64Array, weights: Float64Array, q: float) -> float:
    if values.size == 0:
        return 0.0
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    i = int(np.searchsorted(cum, q * cum[-1], side="left"))
    return float(values[order][min(i, values.size - 1)])


def _spread(ctx: _Context) -> Float64Array:
    """(S, T, P) spread of sqrt(power) per slot: the weighted standard deviation over the same
    weekday's days (half-life 4 weeks) before each target day, unsmoothed. It carries what
    the hour bands cannot: a ramp inside a band, a weekday busier than the others."""
    w = ctx.group_weights("weekday", "ew", SPREAD_HALF_LIFE_DAYS)
    if ctx.kernel:
        from forecaster.kernels import selection as selection_kernel

        # The weighted mean and mean square in one pass. The variance is their difference,
        # so rounding in either is amplified where the spread is small against the mean:
        # the numpy path's BLAS sums agree to ~1e-7 relative there, not to the last bit.
        moments, mass = _weighted_estimates(
            ctx.raw,
            0,
            np.array([selection_kernel.SQRT, selection_kernel.SQUARED_SQRT], dtype=np.int64),
            w,
            selection_kernel.MEAN,
            TRIM,
        )
        mean, mean_square = moments[0], moments[1]
    else:
        c = Candidate("weekday", "ew", SPREAD_HALF_LIFE_DAYS, "mean", True, False, 0)
        mean, mass = _estimate(ctx, "weekday", c)
        x, known = ctx.values_in(True, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_square = (w @ np.where(known, x * x, 0.0)) / np.maximum(mass, 1e-300)
    var = mean_square - np.where(np.isnan(mean), 0.0, mean) ** 2
    return np.where(mass > 0, np.sqrt(np.maximum(np.where(mass > 0, var, 0.0), 0.0)), 0.0)


def _scale(spread: Float64Array, p50: Float64Array, floor: float) -> Float64Array:
    """The band's scale per slot: the spread, plus the floor where anything is expected. A
    slot that was zero on every past day and is forecast zero keeps a zero band (a floor
    there put a P90 above zero over every quiet night, a pinball cost at each)."""
    return spread + np.where((p50 > 0) | (spread > 0), floor, 1e-9)


def _bands(
    p50: Float64Array,
    scale: Float64Array,
    actual: Float64Array,
    day_w: Float64Array,
    slots: int,
    band_hours: int,
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Quantiles per local hour band of the residuals sqrt(actual) - sqrt(P50) divided by
    `scale` (the slot's spread plus a floor), weighted by the held-out days' recency, then
    levels shifted so that each of P10 and P90 has 10 % of the held-out ISPs beyond it
    (recency-weighted too): split conformal, normalised.

    Per hour band because errors follow the clock (nights are exact zeros, arrivals are
    not); scaled by the spread because a quiet day's errors are smaller than a busy day's at
    the same hour; recency-weighted because a site that changed (a collapse, new chargers)
    changes its errors too; the shifted levels because many ISPs sit exactly at zero (never
    below any P10), so nominal levels per band leave too little below P10."""
    per_band = max(1, slots * band_hours // 24)
    n_bands = math.ceil(slots / per_band)
    known = ~np.isnan(actual)
    y = np.where(known, actual, 0.0)
    root_f = np.sqrt(np.maximum(p50, 0.0))
    resid = (np.sqrt(np.maximum(y, 0.0)) - root_f) / scale
    band_of = np.broadcast_to(np.arange(slots) // per_band, actual.shape)
    w = np.broadcast_to(day_w[:, np.newaxis], actual.shape)
    groups = [(resid[known & (band_of == b)], w[known & (band_of == b)]) for b in range(n_bands)]
    wk = np.where(known, w, 0.0)

    total = wk.sum()
    tail = (1.0 - COVERAGE) / 2.0

    def bound(level: float) -> Float64Array:
        return np.array([_weighted_quantile(r, g, level) for r, g in groups])

    def share_below(level: float) -> float:
        p10 = np.maximum(root_f + np.minimum(bound(level), 0.0)[band_of] * scale, 0.0) ** 2
        return float((wk * (y < p10 - 1e-9)).sum() / total)

    def pinball(f: Float64Array, q: float) -> float:
        d = y - f
        return float((wk * np.maximum(q * d, (q - 1.0) * d)).sum())

    # P90 at each band's own quantile `upper`, P10 at the level where the band covers
    # COVERAGE of all held-out ISPs; of a few `upper` the one with the least held-out pinball
    # loss of P10 and P90. Cut over all ISPs alone, the quiet ones (never beyond any band)
    # let a busy band's P90 sink to a P70; each band's own 10 %/90 % alone over-covers a
    # site with many quiet ISPs.
    best: tuple[float, Float64Array, Float64Array] | None = None
    for upper in (0.8, 0.85, 0.9, 0.95):
        hi_now = np.maximum(bound(upper), 0.0)
        p90 = (root_f + hi_now[band_of] * scale) ** 2
        above = float((wk * (y > p90 + 1e-9)).sum() / total) if total > 0 else tail
        want_below = max(0.0, 1.0 - COVERAGE - above)
        low_lo, low_hi = 0.0, 0.5  # P10 level: its share below rises with it
        for _ in range(16):
            mid = 0.5 * (low_lo + low_hi)
            if total > 0 and share_below(mid) <= want_below:
                low_lo = mid
            else:
                low_hi = mid
        lo_now = np.minimum(bound(low_lo), 0.0)
        p10 = np.maximum(root_f + lo_now[band_of] * scale, 0.0) ** 2
        loss = pinball(p10, 0.1) + pinball(p90, 0.9)
        if best is None or loss < best[0]:
            best = (loss, lo_now, hi_now)
    assert best is not None
    _, lo, hi = best
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi), per_band
