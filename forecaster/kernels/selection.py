"""Weighted per-slot estimates over history days for the selected forecast structures.

The numpy path in `forecaster.selection` builds the weighted quantiles of every slot as
(series, target days, slots, history days) arrays: a sort, a gather and a cumulative sum per
element, a few hundred MB for 1,000 series. Here each (series, slot) sorts its few dozen
history days once (insertion sort, in place; the order does not depend on the target day)
and every target day then walks that order with its own weights: no temporaries beyond one
row of indices per series.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

MEAN = 0
MEDIAN = 1
TRIMMED = 2
MEDIAN_AND_TRIMMED = 3
"""Both from one sort: the medians in the first K rows of the output, the trimmed means in
the next K (a combination of both over the same days needs the order once)."""

WATTS = 0
SQRT = 1
SQUARED_SQRT = 2
"""Spaces: the values in W, their square roots (of max(v, 0)), and those roots squared
(the second moment behind the spread of the square roots)."""


@njit(cache=True, nogil=True)
def _prepare(
    values: np.ndarray, s: int, smooth: int, spaces: np.ndarray, xs: np.ndarray, by_day: bool
) -> None:
    """xs: series s smoothed over +-smooth slots of each day (the mean of the slots with
    data, in the order numpy's shifted sums add them) in each space; NaN where no slot in
    reach has data. (K, P, D), slot-major, so that the days a slot sorts lie together; with
    `by_day` (K, D, P), so that a weighted sum adds whole days of slots at a time."""
    n_days, n_slots = values.shape[1], values.shape[2]
    roots = False
    for k in range(spaces.size):
        roots = roots or spaces[k] != WATTS
    # One day at a time: smoothed into `row`, then each space written from it in a loop of
    # its own (no branch per element, so the roots run as vector instructions).
    row = np.empty(n_slots)
    root = np.empty(n_slots)
    for d in range(n_days):
        for p in range(n_slots):
            acc = 0.0
            n = 0
            for j in range(max(0, p - smooth), min(n_slots, p + smooth + 1)):
                v = values[s, d, j]
                if v == v:
                    acc += v
                    n += 1
            # acc / 1 is acc: the division only where it changes a value.
            row[p] = np.nan if n == 0 else (acc if n == 1 else acc / n)
        if roots:
            for p in range(n_slots):
                x = row[p]
                # NaN stays NaN; zero and below have no root that a load could have: 0.
                root[p] = np.sqrt(x) if x > 0 else (x if x != x else 0.0)
        for k in range(spaces.size):
            for p in range(n_slots):
                if spaces[k] == WATTS:
                    y = row[p]
                elif spaces[k] == SQRT:
                    y = root[p]
                else:
                    y = root[p] * root[p]
                if by_day:
                    xs[k, d, p] = y
                else:
                    xs[k, p, d] = y


@njit(cache=True, nogil=True)
def _series_mean(
    values: np.ndarray,
    smooth: int,
    spaces: np.ndarray,
    w: np.ndarray,
    s: int,
    out: np.ndarray,
    mass: np.ndarray,
) -> None:
    """The weighted means of series s: per target, each day it weighs added to the sums of
    all slots at once. The slots of a day lie together and nothing depends on the previous
    slot, so the additions run as vector instructions; per slot they are the same additions
    in the same order (days ascending) as one slot at a time would make."""
    n_days, n_slots = values.shape[1], values.shape[2]
    n_space = spaces.size
    n_targets = w.shape[1]
    xs = np.empty((n_space, n_days, n_slots))
    _prepare(values, s, smooth, spaces, xs, True)
    # Unknown slots weigh nothing: 0 in the values, 0 in `known`.
    known = np.empty((n_days, n_slots))
    for d in range(n_days):
        for p in range(n_slots):
            if xs[0, d, p] == xs[0, d, p]:
                known[d, p] = 1.0
            else:
                known[d, p] = 0.0
                for k in range(n_space):
                    xs[k, d, p] = 0.0
    acc = np.empty((n_space, n_slots))
    total = np.empty(n_slots)
    for t in range(n_targets):
        acc[:] = 0.0
        total[:] = 0.0
        for d in range(n_days):
            wd = w[s, t, d]
            if wd <= 0:
                continue
            for p in range(n_slots):
                total[p] += wd * known[d, p]
            for k in range(n_space):
                for p in range(n_slots):
                    acc[k, p] += wd * xs[k, d, p]
        for p in range(n_slots):
            mass[s, t, p] = total[p]
            if total[p] > 0:
                for k in range(n_space):
                    out[k, s, t, p] = acc[k, p] / total[p]


@njit(cache=True, nogil=True)
def _series(
    values: np.ndarray,
    smooth: int,
    spaces: np.ndarray,
    w: np.ndarray,
    estimator: int,
    trim: float,
    s: int,
    out: np.ndarray,
    mass: np.ndarray,
) -> None:
    """`weighted_estimates` of series s into out and mass."""
    if estimator == MEAN:
        _series_mean(values, smooth, spaces, w, s, out, mass)
        return
    n_days, n_slots = values.shape[1], values.shape[2]
    n_space = spaces.size
    n_targets = w.shape[1]
    xs = np.empty((n_space, n_slots, n_days))
    _prepare(values, s, smooth, spaces, xs, False)
    order = np.empty(n_days, dtype=np.int64)
    ws = np.empty(n_days)
    rest = np.empty(n_days, dtype=np.int64)
    keys = np.empty(n_days)
    acc = np.empty(n_space)
    share = np.empty(n_space)
    # Each group's days (`marked` below); days no target weighs are never read.
    used = np.zeros(n_days, dtype=np.int64)
    # Targets whose history days overlap (the same day group) share one sort of those days;
    # a Saturday's target never sorts or walks the weekdays' days.
    cluster = np.full(n_targets, -1, dtype=np.int64)
    marked = np.zeros(n_days, dtype=np.bool_)
    members = np.empty(n_targets, dtype=np.int64)
    for first in range(n_targets):
        if cluster[first] >= 0:
            continue
        cluster[first] = first
        for d in range(n_days):
            marked[d] = w[s, first, d] > 0
        grown = True
        while grown:
            grown = False
            for u in range(n_targets):
                if cluster[u] >= 0:
                    continue
                for d in range(n_days):
                    if marked[d] and w[s, u, d] > 0:
                        cluster[u] = first
                        for e in range(n_days):
                            marked[e] = marked[e] or w[s, u, e] > 0
                        grown = True
                        break
        n_members = 0
        for u in range(n_targets):
            if cluster[u] == first:
                members[n_members] = u
                n_members += 1
        n_used = 0
        for d in range(n_days):
            if marked[d]:
                used[n_used] = d
                n_used += 1
        for p in range(n_slots):
            # Exact zeros (idle slots: every night) first, in day order, then the rest by
            # insertion; with no negative value that is the stable ascending order, and a
            # slot of zeros alone needs no walk at all.
            n = 0
            zeros = 0
            negative = False
            for i in range(n_used):
                d = used[i]
                v = xs[0, p, d]
                if v == 0:
                    order[zeros] = d
                    zeros += 1
                elif v == v:
                    rest[n] = d
                    n += 1
                    negative = negative or v < 0
            if negative:
                n = 0
                for i in range(n_used):
                    d = used[i]
                    v = xs[0, p, d]
                    if v != v:
                        continue
                    j = n
                    while j > 0 and keys[j - 1] > v:
                        keys[j] = keys[j - 1]
                        order[j] = order[j - 1]
                        j -= 1
                    keys[j] = v
                    order[j] = d
                    n += 1
            else:
                for i in range(n):
                    d = rest[i]
                    v = xs[0, p, d]
                    j = zeros + i
                    while j > zeros and keys[j - 1] > v:
                        keys[j] = keys[j - 1]
                        order[j] = order[j - 1]
                        j -= 1
                    keys[j] = v
                    order[j] = d
                n += zeros
            for ti in range(n_members):
                t = members[ti]
                total = 0.0
                for i in range(n):
                    ws[i] = w[s, t, order[i]]
                    total += ws[i]
                mass[s, t, p] = total
                if total <= 0:
                    continue
                if zeros == n:
                    for k in range(out.shape[0]):
                        out[k, s, t, p] = 0.0
                    continue
                if estimator != TRIMMED:  # MEDIAN or MEDIAN_AND_TRIMMED (not MEAN)
                    half = 0.5 * total
                    lower = -1
                    upper = 0
                    cum = 0.0
                    for i in range(n):
                        cum += ws[i]
                        if lower < 0 and cum >= half * (1 - 1e-12):
                            lower = i
                        if cum > half * (1 + 1e-12):
                            upper = i
                            break
                    if lower < 0:
                        lower = 0
                    for k in range(n_space):
                        out[k, s, t, p] = 0.5 * (xs[k, p, order[lower]] + xs[k, p, order[upper]])
                if estimator != MEDIAN:
                    # TRIMMED, or the second half of MEDIAN_AND_TRIMMED's rows.
                    row = n_space if estimator == MEDIAN_AND_TRIMMED else 0
                    lo = trim * total
                    hi = (1 - trim) * total
                    cum = 0.0
                    for k in range(n_space):
                        acc[k] = 0.0
                        share[k] = 0.0
                    for i in range(n):
                        cum += ws[i]
                        part = min(cum, hi) - max(cum - ws[i], lo)
                        if part > 0:
                            for k in range(n_space):
                                acc[k] += part * xs[k, p, order[i]]
                            share[0] += part
                        elif cum >= hi:
                            break
                    for k in range(n_space):
                        out[row + k, s, t, p] = acc[k] / max(share[0], 1e-300)


@njit(cache=True, nogil=True)
def weighted_estimates(
    values: np.ndarray,
    smooth: int,
    spaces: np.ndarray,
    w: np.ndarray,
    estimator: int,
    trim: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per series, target day and slot, the weighted estimate over the history days.

    values: (S, D, P) float64 in W, NaN where unknown.
    smooth: radius in slots of the moving mean applied to each day first.
    spaces: (K,) int64 of WATTS, SQRT, SQUARED_SQRT: the estimate in each (monotone maps of
       the same values, so one sort order per slot serves them all).
    w: (S, T, D) float64 weights (>= 0) of the history days for each target day.
    estimator: MEAN, MEDIAN (mean of the lower and upper weighted medians), TRIMMED
       (weighted mean of the central 1 - 2 * trim of the weight) or MEDIAN_AND_TRIMMED.
    Returns the estimates (K, S, T, P) ((2K, S, T, P) for MEDIAN_AND_TRIMMED), NaN where no
    weight falls on a known value, and the weight on known values (S, T, P).
    """
    n_space, n_series, n_targets = spaces.size, values.shape[0], w.shape[1]
    rows = 2 * n_space if estimator == MEDIAN_AND_TRIMMED else n_space
    out = np.full((rows, n_series, n_targets, values.shape[2]), np.nan)
    mass = np.zeros((n_series, n_targets, values.shape[2]))
    for s in range(n_series):
        _series(values, smooth, spaces, w, estimator, trim, s, out, mass)
    return out, mass


@njit(cache=True, nogil=True, parallel=True)
def weighted_estimates_parallel(
    values: np.ndarray,
    smooth: int,
    spaces: np.ndarray,
    w: np.ndarray,
    estimator: int,
    trim: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`weighted_estimates` with the series spread over threads (many series per call;
    a few series wait on the thread pool's start-up and, on a busy machine, its slowest
    thread, for nothing)."""
    n_space, n_series, n_targets = spaces.size, values.shape[0], w.shape[1]
    rows = 2 * n_space if estimator == MEDIAN_AND_TRIMMED else n_space
    out = np.full((rows, n_series, n_targets, values.shape[2]), np.nan)
    mass = np.zeros((n_series, n_targets, values.shape[2]))
    for s in prange(n_series):
        _series(values, smooth, spaces, w, estimator, trim, s, out, mass)
    return out, mass
