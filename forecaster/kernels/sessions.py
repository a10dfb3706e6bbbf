"""Session kernels: power of charging sessions on an ISP grid."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def asap_power(
    arrival: np.ndarray,
    departure: np.ndarray,
    energy_wh: np.ndarray,
    power_w: np.ndarray,
    grid_start: int,
    isp_seconds: int,
    length: int,
) -> np.ndarray:
    """Site power of sessions charging "as soon as possible", split exactly into ISPs.

    arrival, departure: (N,) int64 epoch seconds, departure > arrival.
    energy_wh, power_w: (N,) float64; each session draws power_w from arrival until energy_wh
    is delivered, capped at departure (if it cannot fit, its mean power over the stay).
    Returns (length,) float64 mean power in W per ISP of the grid starting at grid_start; the
    parts of sessions outside the grid are left out.
    """
    out = np.zeros(length)
    for i in range(arrival.size):
        stay = float(departure[i] - arrival[i])
        if stay <= 0.0 or energy_wh[i] <= 0.0 or power_w[i] <= 0.0:
            continue
        need = energy_wh[i] * 3600.0 / power_w[i]
        if need > stay:
            p = energy_wh[i] * 3600.0 / stay
            duration = stay
        else:
            p = power_w[i]
            duration = need
        t0 = float(arrival[i] - grid_start)
        t1 = t0 + duration
        first = int(np.floor(t0 / isp_seconds))
        last = int(np.ceil(t1 / isp_seconds))
        for k in range(max(first, 0), min(last, length)):
            lo = max(t0, float(k * isp_seconds))
            hi = min(t1, float((k + 1) * isp_seconds))
            if hi > lo:
                out[k] += p * (hi - lo) / isp_seconds
    return out


@njit(cache=True, nogil=True)
def known_session_power(
    series: np.ndarray,
    n_series: int,
    origin: int,
    arrival: np.ndarray,
    stated_departure: np.ndarray,
    needed_wh: np.ndarray,
    delivered_wh: np.ndarray,
    pmax_w: np.ndarray,
    power_now_w: np.ndarray,
    departure_residual_s: np.ndarray,
    stay_s: np.ndarray,
    energy_ratio: np.ndarray,
    energy_wh: np.ndarray,
    targets: np.ndarray,
    isp_seconds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the power of plugged-in sessions at target ISPs.

    series: (N,) int64 row of each session; arrival: (N,) int64 epoch s; stated_departure,
    needed_wh, delivered_wh, pmax_w, power_now_w: (N,) float64 (NaN: the driver gave no
    departure or energy, or the draw now is not known). A car drawing nothing now is full
    and adds nothing; a car drawing power still needs energy, so samples that say it is
    done are dropped. Calibration (K,) samples: departure_residual_s (actual - stated),
    stay_s (for no stated departure), energy_ratio (actual / stated total energy),
    energy_wh (total energy for no stated energy). targets: (H,) int64 ISP starts.
    Each session charges at pmax from `origin` until its remaining energy is in or it
    leaves; every (energy, departure) pair of samples is equally likely; departures at or
    before `origin` are impossible (the car is still there) and are dropped.
    Returns mean (S, H) and variance (S, H) in W and W².
    """
    horizon = targets.size
    mean = np.zeros((n_series, horizon))
    var = np.zeros((n_series, horizon))
    n_dep = departure_residual_s.size
    n_energy = energy_ratio.size
    deps = np.empty(max(n_dep, stay_s.size))
    rems = np.empty(max(n_energy, energy_wh.size))
    acc = np.empty(horizon)
    acc2 = np.empty(horizon)
    for i in range(series.size):
        s = series[i]
        # Departure samples, conditioned on the car still being there at `origin`.
        nd = 0
        if stated_departure[i] == stated_departure[i]:
            for j in range(n_dep):
                d = stated_departure[i] + departure_residual_s[j]
                if d > origin:
                    deps[nd] = d
                    nd += 1
        else:
            for j in range(stay_s.size):
                d = arrival[i] + stay_s[j]
                if d > origin:
                    deps[nd] = d
                    nd += 1
        if nd == 0:  # every sample says it has left: it leaves within the first ISP
            deps[0] = origin + isp_seconds
            nd = 1
        if power_now_w[i] == 0.0:
            continue
        drawing = power_now_w[i] > 0.0
        delivered = delivered_wh[i] if delivered_wh[i] == delivered_wh[i] else 0.0
        ne = 0
        if needed_wh[i] == needed_wh[i]:
            for j in range(n_energy):
                r = max(energy_ratio[j] * (delivered + needed_wh[i]) - delivered, 0.0)
                if r > 0.0 or not drawing:
                    rems[ne] = r
                    ne += 1
        else:
            for j in range(energy_wh.size):
                r = max(energy_wh[j] - delivered, 0.0)
                if r > 0.0 or not drawing:
                    rems[ne] = r
                    ne += 1
        if ne == 0:  # drawing, yet every sample says it is full: it finishes within an ISP
            rems[0] = pmax_w[i] * isp_seconds / 3600.0 / 2.0
            ne = 1
        acc[:] = 0.0
        acc2[:] = 0.0
        p = pmax_w[i]
        for a in range(ne):
            full = origin + rems[a] * 3600.0 / p
            for b in range(nd):
                stop = min(full, deps[b])
                for h in range(horizon):
                    lo = max(float(targets[h]), float(origin))
                    hi = min(float(targets[h] + isp_seconds), stop)
                    if hi > lo:
                        v = p * (hi - lo) / isp_seconds
                        acc[h] += v
                        acc2[h] += v * v
        combos = float(ne * nd)
        for h in range(horizon):
            m = acc[h] / combos
            mean[s, h] += m
            var[s, h] += max(acc2[h] / combos - m * m, 0.0)
    return mean, var


@njit(cache=True, nogil=True)
def arrival_load(
    arrival_slot: np.ndarray,
    arrival_type: np.ndarray,
    offset_s: np.ndarray,
    duration_s: np.ndarray,
    power_w: np.ndarray,
    slots: int,
    isp_seconds: int,
) -> np.ndarray:
    """Load per (day type, arrival slot, clock slot) of the same local day.

    arrival_slot, arrival_type: (N,) int64; offset_s: (N,) float64 seconds from the start of
    the arrival slot; duration_s, power_w: (N,) float64 charging time and power.
    Returns (3, P, P) float64 energy-weighted load sums (W · days).
    """
    out = np.zeros((3, slots, slots))
    day = slots * isp_seconds
    for i in range(arrival_slot.size):
        a = arrival_slot[i]
        t0 = a * isp_seconds + offset_s[i]
        t1 = min(t0 + duration_s[i], float(day))
        for k in range(a, slots):
            lo = max(t0, float(k * isp_seconds))
            hi = min(t1, float((k + 1) * isp_seconds))
            if hi <= lo:
                if k * isp_seconds >= t1:
                    break
                continue
            out[arrival_type[i], a, k] += power_w[i] * (hi - lo) / isp_seconds
    return out
