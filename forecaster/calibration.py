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
from forecaster.metrics import covered

BAND_HOURS = 4
COVERAGE = 0.8
COVERAGE_SLACK = 0.002
"""Held-out coverage this far below COVERAGE still counts as reaching it (the levels are a
coarse grid)."""
SCALE_EPSILON = 1e-6
UPPER_LEVELS = (0.8, 0.85, 0.9, 0.95, 0.98)
"""The bands' upper residual quantiles tried: a site with many zeros covered only in part
needs a P90 above its busy hours' 90 %."""
SPREAD_HALF_LIFE_DAYS = 28
SPREAD_FLOOR = 0.25
"""The bands' scale is the slot's spread plus this share of the mean spread, so a slot
whose past days happened to agree still gets a band."""


def zero_share(ctx: _Context) -> Float64Array:
    """(S, T, P) probability that a slot's load is exactly zero: the share of the same
    weekday's days (half-life 4 weeks, as the spread) on which it was; 1 where no such day
    is known. The point mass at zero the P10-P90 band's coverage is judged against
    (`forecaster.metrics.covered`)."""
    w = ctx.group_weights("weekday", "ew", SPREAD_HALF_LIFE_DAYS)
    known = ~np.isnan(ctx.values)
    zero = (known & (ctx.values == 0)).astype(np.float64)
    mass = w @ known.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (w @ zero) / np.maximum(mass, 1e-300)
    return np.where(mass > 0, share, 1.0)


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
    # Days that all had the same power have no spread; their difference of moments is
    # rounding of either sign, and `_scale` must not read a floor into it on one path and not
    # on the other. A spread under 1e-6 of the root mean square is that rounding.
    var = np.where(var > 1e-12 * np.where(np.isnan(mean_square), 0.0, mean_square), var, 0.0)
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
    p_zero: Float64Array,
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
    p50 = np.maximum(p50, 0.0)
    root_f = np.sqrt(p50)
    resid = (np.sqrt(np.maximum(y, 0.0)) - root_f) / scale
    band_of = np.broadcast_to(np.arange(slots) // per_band, actual.shape)
    w = np.broadcast_to(day_w[:, np.newaxis], actual.shape)
    # Slots that were zero on every past day and are forecast zero have no scale (their band
    # stays [0, 0]): a load there is a surprise no band level should be stretched to cover.
    sample = known & (scale > SCALE_EPSILON)
    groups = [(resid[sample & (band_of == b)], w[sample & (band_of == b)]) for b in range(n_bands)]
    wk = np.where(known, w, 0.0)

    total = wk.sum()

    # Each band's residuals sorted once, with their cumulative weights.
    prepared = []
    for r, g in groups:
        order = np.argsort(r, kind="stable")
        prepared.append((r[order], np.cumsum(g[order])))

    def quantile(b: int, level: float) -> float:
        r, cum = prepared[b]
        if r.size == 0:
            return 0.0
        i = int(np.searchsorted(cum, level * cum[-1], side="left"))
        return float(r[min(i, r.size - 1)])

    def bound(level: float) -> Float64Array:
        return np.array([quantile(b, level) for b in range(n_bands)])

    def coverage(p10: Float64Array, p90: Float64Array) -> float:
        return float((wk * covered(y, p10, p50, p90, p_zero)).sum() / total)

    def pinball(f: Float64Array, q: float) -> float:
        d = y - f
        return float((wk * np.maximum(q * d, (q - 1.0) * d)).sum())

    def lower(level: float) -> tuple[Float64Array, Float64Array]:
        lo_now = np.minimum(bound(level), 0.0)
        return lo_now, np.minimum(np.maximum(root_f + lo_now[band_of] * scale, 0.0) ** 2, p50)

    def fit(levels: tuple[int, ...]) -> tuple[float, float, Float64Array, Float64Array]:
        hi_now = np.maximum(
            np.array([quantile(b, UPPER_LEVELS[k]) for b, k in enumerate(levels)]), 0.0
        )
        p90 = np.maximum((root_f + hi_now[band_of] * scale) ** 2, p50)
        low_lo, low_hi = 0.0, 0.5  # P10 level: coverage falls as it rises
        for _ in range(16):
            mid = 0.5 * (low_lo + low_hi)
            if total > 0 and coverage(lower(mid)[1], p90) >= COVERAGE:
                low_lo = mid
            else:
                low_hi = mid
        lo_now, p10 = lower(low_lo)
        miss = max(0.0, COVERAGE - coverage(p10, p90)) if total > 0 else 0.0
        loss = pinball(p10, 0.1) + pinball(p90, 0.9)
        return max(0.0, miss - COVERAGE_SLACK), loss, lo_now, hi_now

    # P90 at a quantile of each band's own residuals, P10 at the level where the bands cover
    # COVERAGE of all held-out ISPs (`forecaster.metrics.covered`: a zero on a band from
    # zero counts by its share of the point mass). The bands' upper levels start at the
    # lowest of UPPER_LEVELS and rise one band and one step at a time, the step that most
    # lowers (shortfall from COVERAGE, pinball loss of P10 and P90) on the held-out days,
    # until no step does. Cut over all ISPs alone, the quiet ones let a busy band's P90 sink
    # to a P70; one level for every band stretches a band with a heavy tail (the first
    # arrivals of the morning) to cover what another band could cover at less cost.
    levels = tuple(0 for _ in range(n_bands))
    best = fit(levels)
    while True:
        steps = [
            (fit(tried), tried)
            for b in range(n_bands)
            if levels[b] + 1 < len(UPPER_LEVELS)
            for tried in [(*levels[:b], levels[b] + 1, *levels[b + 1 :])]
        ]
        if not steps:
            break
        step, tried = min(steps, key=lambda s: (s[0][0], s[0][1]))
        if (step[0], step[1]) >= (best[0], best[1]):
            break
        best, levels = step, tried
    _, _, lo, hi = best
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi), per_band
