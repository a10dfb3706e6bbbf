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
