"""Pure-numpy reference implementations of the forecaster's numba kernels.

Each states, as plainly as numpy allows, what the matching kernel in `forecaster.kernels`
must compute; the unit tests compare kernel and reference on random inputs, and the forecast
benchmark times the profile reference as "our method in numpy".
"""

from __future__ import annotations

import numpy as np

from forecaster.calendar import DAY_TYPES, WEEKDAY

EPS = 1e-9


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
    n_series = values.shape[0]
    n_days, n_slots = index.shape[:2]
    nq = z.size
    profile = np.zeros((n_series, DAY_TYPES, nq, n_slots))
    level = np.ones((n_series, DAY_TYPES))
    pooled = np.zeros((n_series, DAY_TYPES), dtype=np.int64)
    exists = index[:, :, 0] >= 0
    transform = np.sqrt if use_sqrt else (lambda a: a)
    for s in range(n_series):
        passes = [
            np.where(index[:, :, j] >= 0, values[s][np.maximum(index[:, :, j], 0)], np.nan)
            for j in range(2)
        ]
        stacked = np.stack(passes)
        counted = (~np.isnan(stacked)).sum(axis=0)
        total = np.nansum(np.maximum(stacked, 0.0), axis=0)
        raw = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
        has_data = ~np.all(np.isnan(raw), axis=1)
        smoothed = np.full_like(raw, np.nan)
        for k in range(n_slots):
            window = raw[:, max(0, k - smooth) : k + smooth + 1]
            n = (~np.isnan(window)).sum(axis=1)
            smoothed[:, k] = np.where(n > 0, np.nansum(window, axis=1) / np.maximum(n, 1), np.nan)
        mean_root = transform(smoothed)
        root = np.where(np.isnan(raw), mean_root, transform(raw))
        seen = (~np.isnan(raw)).sum(axis=1)
        energy = np.where(whole_day & (seen == exists.sum(axis=1)), np.nansum(raw, axis=1), np.nan)
        count = np.bincount(day_type[has_data], minlength=DAY_TYPES)
        for tau in range(DAY_TYPES):
            if count[tau] >= min_type_days:
                members = {tau}
            elif tau != WEEKDAY and count[1] + count[2] >= min_type_days:
                members = {1, 2}
            else:
                members = {0, 1, 2}
            days = [d for d in range(n_days - 1, -1, -1) if has_data[d] and day_type[d] in members]
            pooled[s, tau] = len(days)
            if not days:
                continue
            w = (1.0 - alpha) ** np.arange(len(days))
            m = mean_root[days]
            r = root[days]
            valid = ~np.isnan(m)
            wv = w[:, None] * valid
            sw = wv.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.nansum(wv * np.nan_to_num(m), axis=0) / sw
                mroot = np.nansum(wv * np.nan_to_num(r), axis=0) / sw
                var = np.maximum(np.nansum(wv * np.nan_to_num(r) ** 2, axis=0) / sw - mroot**2, 0)
                n_eff = sw**2 / (wv**2).sum(axis=0)
                var = np.where(n_eff > 1 + 1e-9, var * n_eff / (n_eff - 1) * (1 + 1 / n_eff), var)
            sd = np.sqrt(var)
            for q in range(nq):
                u = np.maximum(mean + z[q] * sd, 0.0)
                profile[s, tau, q] = np.where(sw > 0, u * u if use_sqrt else u, 0.0)
            profile[s, tau] = np.maximum.accumulate(profile[s, tau], axis=0)
            e = energy[days]
            ok = ~np.isnan(e)
            ref = (w[ok] * e[ok]).sum()
            if ok.any() and ref > 0:
                ratio = e[ok][:level_days].mean() / (ref / w[ok].sum())
                ratio = min(max(ratio, 1.0 / level_clip), level_clip)
                level[s, tau] = 1.0 + level_weight * (ratio - 1.0)
    return profile, level, pooled


def asap_power(
    arrival: np.ndarray,
    departure: np.ndarray,
    energy_wh: np.ndarray,
    power_w: np.ndarray,
    grid_start: int,
    isp_seconds: int,
    length: int,
) -> np.ndarray:
    """Overlap of each session's charging interval with each ISP, times its power."""
    stay = (departure - arrival).astype(float)
    need = energy_wh * 3600.0 / power_w
    fits = need <= stay
    p = np.where(fits, power_w, energy_wh * 3600.0 / stay)
    t0 = (arrival - grid_start).astype(float)
    t1 = t0 + np.where(fits, need, stay)
    edges = np.arange(length + 1, dtype=float) * isp_seconds
    overlap = np.clip(
        np.minimum(t1[:, None], edges[None, 1:]) - np.maximum(t0[:, None], edges[None, :-1]),
        0.0,
        None,
    )
    return np.asarray((p[:, None] * overlap / isp_seconds).sum(axis=0))


def _must(
    need: np.ndarray, later: np.ndarray, pmin: np.ndarray, pmax: np.ndarray, dt: float
) -> np.ndarray:
    short = need - later
    p = np.where(short > EPS, np.maximum(short / dt, pmin), 0.0)
    return np.asarray(np.minimum(p, pmax))


def envelope(
    start: np.ndarray,
    end: np.ndarray,
    energy_wh: np.ndarray,
    pmin: np.ndarray,
    pmax: np.ndarray,
    limit: np.ndarray,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    horizon = limit.size
    t = np.arange(horizon)
    s0 = np.maximum(start, 0)
    present = (s0[:, None] <= t[None, :]) & (t[None, :] < end[:, None])
    slots = end - s0
    active = energy_wh > EPS
    useful = np.where(active, np.minimum(pmax, np.maximum(pmin, energy_wh / dt)), 0.0)
    must = _must(energy_wh, pmax * dt * (slots - 1), pmin, pmax, dt)
    usable = slots > 0
    upper = (present * (useful * usable)[:, None]).sum(axis=0)
    lower = (present * (must * usable)[:, None]).sum(axis=0)
    short = np.where(usable, energy_wh > pmax * dt * slots + EPS, active)
    for e in range(1, horizon + 1):
        if not np.any((end == e) & active):
            continue
        group = (end <= e) & active
        due = energy_wh[group].sum()
        cap = np.minimum((present[group] * pmax[group, None]).sum(axis=0), limit)[:e] * dt
        need = (due - (cap.sum() - cap)) / dt
        lower[:e] = np.maximum(lower[:e], need)
    upper = np.minimum(upper, np.maximum(limit, 0.0))
    return np.minimum(lower, upper), upper, short


def allocate(
    start: np.ndarray,
    end: np.ndarray,
    energy_wh: np.ndarray,
    pmin: np.ndarray,
    pmax: np.ndarray,
    limit: np.ndarray,
    target: np.ndarray,
    dt: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, horizon = start.size, limit.size
    schedule = np.zeros((n, horizon))
    remaining = energy_wh.astype(float).copy()
    ids = np.arange(n)
    for t in range(horizon):
        here = ids[(start <= t) & (t < end) & (remaining > EPS)]
        laxity = (end[here] - t) * dt - remaining[here] / pmax[here]
        order = here[np.lexsort((here, end[here], laxity))]
        room = max(limit[t], 0.0)
        must = _must(remaining, pmax * dt * (end - t - 1), pmin, pmax, dt)
        for i in order:
            p = must[i]
            if p > room:
                p = room if room >= pmin[i] else 0.0
            schedule[i, t] = p
            room -= p
        want = target[t] - schedule[order, t].sum()
        for i in order:
            if want <= EPS or room <= EPS:
                break
            p = schedule[i, t]
            useful = min(pmax[i], max(pmin[i], remaining[i] / dt))
            add = min(useful - p, want, room)
            if add <= EPS or (p == 0.0 and add < pmin[i]):
                continue
            schedule[i, t] = p + add
            want -= add
            room -= add
        remaining[order] = np.maximum(
            remaining[order] - np.minimum(schedule[order, t] * dt, remaining[order]), 0.0
        )
    after = np.maximum(end - np.maximum(horizon, start), 0)
    unmet = np.maximum(remaining - pmax * dt * after, 0.0)
    unmet[unmet <= EPS] = 0.0
    return schedule, remaining, unmet
