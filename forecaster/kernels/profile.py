"""Day-type × clock-slot profile in square-root space, with EW weights and a recent-level factor.

Per series, day type (weekday, Saturday, Sunday/holiday) and local clock slot the kernel keeps
exponentially weighted moments of sqrt(power) over the days of that type, newest day weight 1,
each older one (1 - alpha) times the next. Why square roots: site load is a sum of charging
cars, count-like, zero in ~44 % of ISPs and right-skewed; sqrt is the variance-stabilising
transform for counts, so a normal band there fits far better than on watts, and the squared
mean is close to the median, the L1-optimal point forecast (a mean in watts over-forecasts the
ramps). On the Caltech protocol this streaming estimator comes within 0.2 points of weighted
empirical medians at a fraction of their cost (docs/forecasting.md).

* Mean: of the day smoothed over ±`smooth` slots (arrival noise shifts ramps by a slot or two).
* Spread: of the unsmoothed values, widened by the effective sample size
  n = (Σw)² / Σw² to a predictive spread: var · n / (n - 1) · (1 + 1 / n).
* Level: the pooled profile is scaled by 1 + level_weight · (r - 1), r the ratio of the last
  `level_days` complete same-type days' energy to the EW mean daily energy, clipped to
  [1 / level_clip, level_clip], so a site whose use grows or falls is followed within days.
* Pooling: a type with fewer than `min_type_days` days pools Saturday with Sunday/holidays, then
  every day: a new site forecasts from what it has instead of failing.

The update is one pass over the history, O(S · T), and could run online one day at a time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from forecaster.calendar import DAY_TYPES, WEEKDAY

_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
"""fastmath without `nnan`/`ninf`: NaN marks gaps and must survive; the rest lets LLVM
vectorise the square roots and sums (the kernel is otherwise bound by scalar sqrt)."""

POOLS = DAY_TYPES + 2
"""Pools: the three day types, Saturday+Sunday/holiday together, and every day."""
WEEKEND_POOL = DAY_TYPES
ALL_POOL = DAY_TYPES + 1


@njit(cache=True, nogil=True)
def _pool_contains(pool: int, day_type: int) -> bool:
    if pool == ALL_POOL:
        return True
    if pool == WEEKEND_POOL:
        return day_type != WEEKDAY
    return pool == day_type


@njit(cache=True, nogil=True)
def _gather_day(
    values: np.ndarray, index: np.ndarray, s: int, d: int, raw: np.ndarray
) -> tuple[float, int, int]:
    """Slot values of local day d (mean of a repeated hour's two ISPs, NaN where none).

    Returns the day's energy proxy (sum of slot values), slots with data, slots that exist.
    """
    total = 0.0
    seen = 0
    exists = 0
    for k in range(index.shape[1]):
        acc = 0.0
        n = 0
        for j in range(2):
            t = index[d, k, j]
            if t >= 0:
                if j == 0:
                    exists += 1
                v = values[s, t]
                if v == v:
                    acc += max(v, 0.0)
                    n += 1
        if n > 0:
            raw[k] = acc / n
            total += acc / n
            seen += 1
        else:
            raw[k] = np.nan
    return total, seen, exists


@njit(cache=True, nogil=True)
def _smooth_complete(raw: np.ndarray, radius: int, out: np.ndarray) -> None:
    """Moving mean over ±radius slots of a gap-free, non-negative day, the window cut at
    the day's edges.

    Each slot's window is summed directly: the slots are independent, so the loop vectorises
    and pipelines, where a running prefix sum is one long chain of dependent additions (it
    was the kernel's bottleneck)."""
    n_slots = raw.size
    if radius == 1 and n_slots >= 2:
        third = 1.0 / 3.0
        for k in range(1, n_slots - 1):
            out[k] = (raw[k - 1] + raw[k] + raw[k + 1]) * third
        out[0] = (raw[0] + raw[1]) * 0.5
        out[n_slots - 1] = (raw[n_slots - 2] + raw[n_slots - 1]) * 0.5
        return
    for k in range(n_slots):
        lo = max(0, k - radius)
        hi = min(n_slots, k + radius + 1)
        acc = 0.0
        for j in range(lo, hi):
            acc += raw[j]
        out[k] = acc / (hi - lo)


@njit(cache=True, nogil=True)
def _smooth_gappy(raw: np.ndarray, radius: int, out: np.ndarray) -> None:
    """Moving mean over the slots with data; NaN where the whole window is empty."""
    n_slots = raw.size
    for k in range(n_slots):
        acc = 0.0
        n = 0
        for j in range(max(0, k - radius), min(n_slots, k + radius + 1)):
            v = raw[j]
            if v == v:
                acc += v
                n += 1
        out[k] = acc / n if n > 0 else np.nan


Scratch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@njit(cache=True, nogil=True)
def _scratch(n_days: int, n_slots: int, level_days: int) -> Scratch:
    """Work arrays of one `_fit_series` call: per-slot rows (day values, smoothed, roots and
    the five moment sums per pool), per-pool floats, recent day energies, per-pool and
    per-day-type counters, days with data, pools in use."""
    return (
        np.empty((4 + 5 * POOLS, n_slots)),
        np.empty((4, POOLS)),
        np.empty((POOLS, max(level_days, 1))),
        np.empty((3, POOLS), dtype=np.int64),
        np.empty((2, DAY_TYPES), dtype=np.int64),
        np.empty(n_days, dtype=np.bool_),
        np.empty(POOLS, dtype=np.bool_),
    )


@njit(cache=True, nogil=True, fastmath=_FAST)
def _fit_series(
    s: int,
    values: np.ndarray,
    index: np.ndarray,
    day_type: np.ndarray,
    whole_day: np.ndarray,
    regular_day: np.ndarray,
    alpha: float,
    z: np.ndarray,
    smooth: int,
    min_type_days: int,
    level_days: int,
    level_weight: float,
    level_clip: float,
    use_sqrt: bool,
    profile: np.ndarray,
    level: np.ndarray,
    pooled: np.ndarray,
    scratch: Scratch,
) -> None:
    """One series of `sqrt_profiles` into row s of the outputs. The scratch arrays (from
    `_scratch`) are reset here, so one set serves every series a thread fits: allocating
    them per series cost more than a tenth of the kernel."""
    n_days, n_slots = index.shape[0], index.shape[1]
    nq = z.size
    slots, pool_f, recent, pool_i, type_i, has_data, in_use = scratch
    raw, smoothed, mean_root, root = slots[0], slots[1], slots[2], slots[3]
    sum_w = slots[4 : 4 + POOLS]
    sum_w2 = slots[4 + POOLS : 4 + 2 * POOLS]
    sum_mean = slots[4 + 2 * POOLS : 4 + 3 * POOLS]
    sum_root = slots[4 + 3 * POOLS : 4 + 4 * POOLS]
    sum_sq = slots[4 + 4 * POOLS : 4 + 5 * POOLS]
    energy_w, energy_sum, full_w, full_w2 = pool_f[0], pool_f[1], pool_f[2], pool_f[3]
    n_recent, days_in, later = pool_i[0], pool_i[1], pool_i[2]
    count, pool_of = type_i[0], type_i[1]
    keep = 1.0 - alpha
    # Which days have data, and so which pool each day type draws from.
    count[:] = 0
    for d in range(n_days):
        has_data[d] = False
        for k in range(n_slots):
            t = index[d, k, 0]
            if t >= 0 and values[s, t] == values[s, t]:
                has_data[d] = True
                break
        if has_data[d]:
            count[day_type[d]] += 1
    in_use[:] = False
    for tau in range(DAY_TYPES):
        if count[tau] >= min_type_days:
            pool_of[tau] = tau
        elif tau != WEEKDAY and count[1] + count[2] >= min_type_days:
            pool_of[tau] = WEEKEND_POOL
        else:
            pool_of[tau] = ALL_POOL
        in_use[pool_of[tau]] = True
    sum_w[:] = 0.0
    sum_w2[:] = 0.0
    sum_mean[:] = 0.0
    sum_root[:] = 0.0
    sum_sq[:] = 0.0
    pool_f[:] = 0.0
    pool_i[:] = 0
    # The newest day of a pool weighs 1 and each older one `keep` times less: a day's weight
    # is keep ** (days of its pool after it). Days go oldest first so that the history
    # streams forward through memory, which the hardware prefetcher follows; newest first
    # made the kernel wait on memory (3x slower on 1,000 series of 8 weeks).
    for p in range(POOLS):
        for tau in range(DAY_TYPES):
            if _pool_contains(p, tau):
                later[p] += count[tau]
    for d in range(n_days):
        if not has_data[d]:
            continue
        first = index[d, 0, 0]
        regular = first >= 0 and regular_day[d]
        no_gaps = False
        total = 0.0
        if regular:
            # Fast path: the day is P consecutive grid ISPs (no DST change, not cut).
            # One branch-free pass: a NaN anywhere makes `probe` NaN (a gap: slow path).
            probe = 0.0
            for k in range(n_slots):
                v = values[s, first + k]
                probe += v
                v = v if v > 0.0 else 0.0
                raw[k] = v
                total += v
            no_gaps = probe == probe
            if not no_gaps:
                total = 0.0
        seen = n_slots
        exists = n_slots
        if not no_gaps:
            total, seen, exists = _gather_day(values, index, s, d, raw)
            no_gaps = seen == n_slots
        # Only whole days with every ISP known tell the level; a partial day would bias it.
        complete = whole_day[d] and seen == exists
        if use_sqrt:
            # Square roots in float32 (sums stay float64): twice the lanes per instruction,
            # and 1e-7 relative is far below a watt at site scale.
            for k in range(n_slots):
                root[k] = np.float64(math.sqrt(np.float32(raw[k])))  # NaN stays NaN
        else:
            root[:] = raw
        if no_gaps:
            _smooth_complete(raw, smooth, smoothed)
        else:
            _smooth_gappy(raw, smooth, smoothed)
        if use_sqrt:
            for k in range(n_slots):
                mean_root[k] = np.float64(math.sqrt(np.float32(smoothed[k])))
        else:
            mean_root[:] = smoothed
        day_energy = total if complete else np.nan
        for p in range(POOLS):
            if not in_use[p] or not _pool_contains(p, day_type[d]):
                continue
            later[p] -= 1
            w = keep ** later[p]
            days_in[p] += 1
            if no_gaps:
                # Every slot has the day's weight: its sums stay scalars per pool.
                full_w[p] += w
                full_w2[p] += w * w
                acc_mean, acc_root, acc_sq = sum_mean[p], sum_root[p], sum_sq[p]
                for k in range(n_slots):
                    acc_mean[k] += w * mean_root[k]
                    r = root[k]
                    acc_root[k] += w * r
                    acc_sq[k] += w * r * r
            else:
                for k in range(n_slots):
                    m = mean_root[k]
                    if m != m:
                        continue
                    r = root[k]
                    if r != r:  # a gap filled by its neighbours: spread as if at the mean
                        r = m
                    sum_w[p, k] += w
                    sum_w2[p, k] += w * w
                    sum_mean[p, k] += w * m
                    sum_root[p, k] += w * r
                    sum_sq[p, k] += w * r * r
            if day_energy == day_energy:
                energy_sum[p] += w * day_energy
                energy_w[p] += w
                # The last `level_days` complete days, oldest overwritten first.
                recent[p, n_recent[p] % level_days] = day_energy
                n_recent[p] += 1
    for tau in range(DAY_TYPES):
        p = pool_of[tau]
        pooled[s, tau] = days_in[p]
        for k in range(n_slots):
            sw = sum_w[p, k] + full_w[p]
            if sw <= 0.0:
                for q in range(nq):
                    profile[s, tau, q, k] = 0.0
                continue
            mean = sum_mean[p, k] / sw
            mroot = sum_root[p, k] / sw
            var = max(sum_sq[p, k] / sw - mroot * mroot, 0.0)
            n_eff = sw * sw / (sum_w2[p, k] + full_w2[p])
            if n_eff > 1.0 + 1e-9:
                var *= n_eff / (n_eff - 1.0) * (1.0 + 1.0 / n_eff)
            sd = math.sqrt(var)
            prev = 0.0
            for q in range(nq):
                u = max(mean + z[q] * sd, 0.0)
                v = max(u * u if use_sqrt else u, prev)
                profile[s, tau, q, k] = v
                prev = v
        if energy_w[p] > 0.0 and energy_sum[p] > 0.0 and n_recent[p] > 0:
            held = min(n_recent[p], level_days)
            rec = 0.0
            for i in range(held):
                rec += recent[p, i]
            ratio = (rec / held) / (energy_sum[p] / energy_w[p])
            ratio = min(max(ratio, 1.0 / level_clip), level_clip)
            level[s, tau] = 1.0 + level_weight * (ratio - 1.0)


@njit(cache=True, nogil=True)
def _regular_days(index: np.ndarray) -> np.ndarray:
    """Days whose slots are consecutive grid ISPs (no DST change, not cut): the fast path."""
    n_days, n_slots = index.shape[0], index.shape[1]
    regular_day = np.zeros(n_days, dtype=np.bool_)
    for d in range(n_days):
        first = index[d, 0, 0]
        ok = first >= 0
        for k in range(n_slots):
            ok = ok and index[d, k, 0] == first + k and index[d, k, 1] < 0
        regular_day[d] = ok
    return regular_day


@njit(cache=True, nogil=True)
def sqrt_profiles(
    values: np.ndarray,
    index: np.ndarray,
    day_type: np.ndarray,
    whole_day: np.ndarray,
    alpha: float,
    z: np.ndarray,
    smooth: int,
    min_type_days: int,
    level_days: int,
    level_weight: float,
    level_clip: float,
    use_sqrt: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile profiles per series and day type.

    use_sqrt False keeps the moments in W (the plain EW profile, kept for the backtest's
    comparison).

    values: (S, T) float64 power in W on the UTC grid, NaN for gaps.
    index: (D, P, 2) int64 grid position of (local day, slot, pass) or -1 (see HistoryLayout).
    day_type: (D,) int64 in {0 weekday, 1 Saturday, 2 Sunday/holiday}.
    whole_day: (D,) bool, False for a first or last day the window cuts.
    z: (Q,) float64 standard-normal scores of the quantile levels, ascending.
    Returns profile (S, 3, Q, P) float64 in W (>= 0, non-decreasing along Q), level factor
    (S, 3) float64 and the number of days pooled (S, 3) int64 (0: no usable day at all).
    """
    n_series = values.shape[0]
    n_slots = index.shape[1]
    nq = z.size
    profile = np.zeros((n_series, DAY_TYPES, nq, n_slots))
    level = np.ones((n_series, DAY_TYPES))
    pooled = np.zeros((n_series, DAY_TYPES), dtype=np.int64)
    regular_day = _regular_days(index)
    scratch = _scratch(index.shape[0], n_slots, level_days)
    for s in range(n_series):
        _fit_series(
            s,
            values,
            index,
            day_type,
            whole_day,
            regular_day,
            alpha,
            z,
            smooth,
            min_type_days,
            level_days,
            level_weight,
            level_clip,
            use_sqrt,
            profile,
            level,
            pooled,
            scratch,
        )
    return profile, level, pooled


@njit(cache=True, nogil=True, parallel=True)
def sqrt_profiles_parallel(
    values: np.ndarray,
    index: np.ndarray,
    day_type: np.ndarray,
    whole_day: np.ndarray,
    alpha: float,
    z: np.ndarray,
    smooth: int,
    min_type_days: int,
    level_days: int,
    level_weight: float,
    level_clip: float,
    use_sqrt: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`sqrt_profiles` with the series spread over threads (many series per call).

    use_sqrt False keeps the moments in W (the plain EW profile, kept for the backtest's
    comparison).

    values: (S, T) float64 power in W on the UTC grid, NaN for gaps.
    index: (D, P, 2) int64 grid position of (local day, slot, pass) or -1 (see HistoryLayout).
    day_type: (D,) int64 in {0 weekday, 1 Saturday, 2 Sunday/holiday}.
    whole_day: (D,) bool, False for a first or last day the window cuts.
    z: (Q,) float64 standard-normal scores of the quantile levels, ascending.
    Returns profile (S, 3, Q, P) float64 in W (>= 0, non-decreasing along Q), level factor
    (S, 3) float64 and the number of days pooled (S, 3) int64 (0: no usable day at all).
    """
    n_series = values.shape[0]
    n_slots = index.shape[1]
    nq = z.size
    profile = np.zeros((n_series, DAY_TYPES, nq, n_slots))
    level = np.ones((n_series, DAY_TYPES))
    pooled = np.zeros((n_series, DAY_TYPES), dtype=np.int64)
    regular_day = _regular_days(index)
    for s in prange(n_series):
        # Scratch per series: numba's thread count cannot be read in a cached kernel, so
        # series are not chunked per thread (allocation is ~1 % of a series' work here).
        scratch = _scratch(index.shape[0], n_slots, level_days)
        _fit_series(
            s,
            values,
            index,
            day_type,
            whole_day,
            regular_day,
            alpha,
            z,
            smooth,
            min_type_days,
            level_days,
            level_weight,
            level_clip,
            use_sqrt,
            profile,
            level,
            pooled,
            scratch,
        )
    return profile, level, pooled


@njit(cache=True, nogil=True)
def _assemble_series(
    s: int,
    profile: np.ndarray,
    level: np.ndarray,
    target_type: np.ndarray,
    target_slot: np.ndarray,
    out: np.ndarray,
) -> None:
    nq = profile.shape[2]
    for h in range(target_type.size):
        tau = target_type[h]
        k = target_slot[h]
        f = level[s, tau]
        prev = 0.0
        for q in range(nq):
            v = max(profile[s, tau, q, k] * f, prev)
            out[q, s, h] = v
            prev = v


@njit(cache=True, nogil=True)
def assemble_forecast(
    profile: np.ndarray, level: np.ndarray, target_type: np.ndarray, target_slot: np.ndarray
) -> np.ndarray:
    """Forecast at target ISPs from the profiles.

    profile: (S, 3, Q, P); level: (S, 3); target_type, target_slot: (H,) int64.
    Returns (Q, S, H) float64, never negative, non-decreasing along Q (so each quantile is a
    contiguous (S, H) block).
    """
    out = np.empty((profile.shape[2], profile.shape[0], target_type.size))
    for s in range(profile.shape[0]):
        _assemble_series(s, profile, level, target_type, target_slot, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def assemble_forecast_parallel(
    profile: np.ndarray, level: np.ndarray, target_type: np.ndarray, target_slot: np.ndarray
) -> np.ndarray:
    """`assemble_forecast` with the series spread over threads: for many series the output
    (megabytes, first touched here) is written from every core."""
    out = np.empty((profile.shape[2], profile.shape[0], target_type.size))
    for s in prange(profile.shape[0]):
        _assemble_series(s, profile, level, target_type, target_slot, out)
    return out
