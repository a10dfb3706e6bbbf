"""Flexibility of plugged-in sessions: envelope bounds and least-laxity-first allocation.

Sessions live on a target grid of H ISPs of `dt_h` hours. Session i may charge in ISPs
``start[i] <= t < end[i]``; ``end[i] > H`` means it stays beyond the horizon, where it is assumed
free to charge at its maximum. Power is a setpoint per ISP that is 0 or within
[pmin, pmax] (IEC 61851: most EVs stop below ~6 A, so a charger is off or at least at its
minimum); the energy a setpoint delivers is min(p · dt, energy still needed), because an EV
that is full stops drawing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EPS = 1e-9


@njit(cache=True, nogil=True)
def _must_run(need_wh: float, later_wh: float, pmin: float, pmax: float, dt_h: float) -> float:
    """Lowest setpoint now that still lets `need_wh` be met with `later_wh` possible later."""
    short = need_wh - later_wh
    if short <= _EPS:
        return 0.0
    p = short / dt_h
    if p < pmin:
        p = pmin
    return min(p, pmax)


@njit(cache=True, nogil=True)
def envelope(
    start: np.ndarray,
    end: np.ndarray,
    energy_wh: np.ndarray,
    pmin: np.ndarray,
    pmax: np.ndarray,
    limit: np.ndarray,
    dt_h: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lowest and highest site power per ISP that keep every session deliverable.

    start, end: (N,) int64; energy_wh, pmin, pmax: (N,) float64; limit: (H,) float64 W.
    Returns lower (H,), upper (H,) in W and short (N,) bool: sessions that cannot get their
    energy even at full power over their whole stay (for them "deliverable" means full power).

    upper[t] = min(limit[t], Σ present sessions' useful maximum); lower[t] is the larger of
    (a) Σ each session's must-run setpoint at t when it charges at pmax everywhere else, and
    (b) for every deadline e inside the horizon, the energy due by e from sessions leaving by
    e minus what those sessions could draw in the other ISPs before e under the site limit.
    Both are necessary, so every schedule that delivers all energy lies in [lower, upper];
    lower is exact when the site limit does not bind.
    """
    n = start.size
    horizon = limit.size
    lower = np.zeros(horizon)
    upper = np.zeros(horizon)
    short = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        slots = end[i] - max(start[i], 0)
        if slots <= 0:
            short[i] = energy_wh[i] > _EPS
            continue
        full = pmax[i] * dt_h * slots
        if energy_wh[i] > full + _EPS:
            short[i] = True
        useful = min(pmax[i], max(pmin[i], energy_wh[i] / dt_h)) if energy_wh[i] > _EPS else 0.0
        must = _must_run(energy_wh[i], pmax[i] * dt_h * (slots - 1), pmin[i], pmax[i], dt_h)
        for t in range(max(start[i], 0), min(end[i], horizon)):
            upper[t] += useful
            lower[t] += must
    # (b) deadline groups inside the horizon.
    cap = np.zeros(horizon)
    for e in range(1, horizon + 1):
        due = 0.0
        members = 0
        for t in range(horizon):
            cap[t] = 0.0
        for i in range(n):
            if end[i] == e and energy_wh[i] > _EPS:
                members += 1
        if members == 0:
            continue
        for i in range(n):
            if end[i] <= e and energy_wh[i] > _EPS:
                due += energy_wh[i]
                for t in range(max(start[i], 0), min(end[i], horizon)):
                    cap[t] += pmax[i]
        total = 0.0
        for t in range(e):
            cap[t] = min(cap[t], limit[t]) * dt_h
            total += cap[t]
        for t in range(e):
            need = (due - (total - cap[t])) / dt_h
            if need > lower[t]:
                lower[t] = need
    for t in range(horizon):
        upper[t] = min(upper[t], max(limit[t], 0.0))
        lower[t] = min(lower[t], upper[t])
    return lower, upper, short


@njit(cache=True, nogil=True)
def allocate(
    start: np.ndarray,
    end: np.ndarray,
    energy_wh: np.ndarray,
    pmin: np.ndarray,
    pmax: np.ndarray,
    limit: np.ndarray,
    target: np.ndarray,
    dt_h: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-session setpoints that follow a site target, least laxity first.

    start, end: (N,) int64; energy_wh, pmin, pmax: (N,) float64; limit, target: (H,) W.
    Returns schedule (N, H) W, remaining (N,) Wh still needed after the horizon and unmet (N,)
    Wh that cannot be delivered even at full power after the horizon.

    Each ISP in time order: first every session's must-run setpoint (what it needs now so that
    full power in its later ISPs still completes it), in order of least laxity (time left minus
    time needed at full power), so under a binding site limit the tightest sessions come first;
    then the rest of the target, again least laxity first, a session switched on only with at
    least its minimum. The site limit is never exceeded, the target may be, when sessions need it.
    """
    n = start.size
    horizon = limit.size
    schedule = np.zeros((n, horizon))
    remaining = energy_wh.copy()
    present = np.empty(n, dtype=np.int64)
    laxity = np.empty(n)
    for t in range(horizon):
        count = 0
        for i in range(n):
            if start[i] <= t < end[i] and remaining[i] > _EPS:
                present[count] = i
                laxity[i] = (end[i] - t) * dt_h - remaining[i] / pmax[i]
                count += 1
        # Insertion sort by (laxity, end, index): a few hundred sessions at most per site.
        for a in range(1, count):
            cur = present[a]
            b = a - 1
            while b >= 0:
                other = present[b]
                if laxity[other] > laxity[cur] or (
                    laxity[other] == laxity[cur]
                    and (end[other] > end[cur] or (end[other] == end[cur] and other > cur))
                ):
                    present[b + 1] = other
                    b -= 1
                else:
                    break
            present[b + 1] = cur
        room = max(limit[t], 0.0)
        used = 0.0
        for a in range(count):
            i = present[a]
            later = pmax[i] * dt_h * (end[i] - t - 1)
            p = _must_run(remaining[i], later, pmin[i], pmax[i], dt_h)
            if p > room:
                p = room if room >= pmin[i] else 0.0
            schedule[i, t] = p
            room -= p
            used += p
        want = target[t] - used
        for a in range(count):
            if want <= _EPS or room <= _EPS:
                break
            i = present[a]
            p = schedule[i, t]
            useful = min(pmax[i], max(pmin[i], remaining[i] / dt_h))
            add = min(useful - p, want, room)
            if add <= _EPS:
                continue
            if p == 0.0 and add < pmin[i]:
                continue
            schedule[i, t] = p + add
            want -= add
            room -= add
        for a in range(count):
            i = present[a]
            remaining[i] = max(remaining[i] - min(schedule[i, t] * dt_h, remaining[i]), 0.0)
    unmet = np.zeros(n)
    for i in range(n):
        after = max(end[i] - max(horizon, start[i]), 0)
        unmet[i] = max(remaining[i] - pmax[i] * dt_h * after, 0.0)
        if unmet[i] <= _EPS:
            unmet[i] = 0.0
    return schedule, remaining, unmet
