"""numpy twins of the kernels an agent runs every few seconds, for a process without numba.

Importing numba (and LLVM) costs a process over 100 MB that stays resident; the agent runs its
forecasts, which need the compiled kernels, in a short-lived worker process
(`forecaster.worker`), and keeps numba out of its own process. What it computes between
forecasts (allocating a site target to per-session schedules, the flexibility envelope, the
arrival shares of the session calibration) runs here instead: the same loops as
`forecaster.kernels.flex` and `forecaster.kernels.sessions`, doing the same float64 operations
in the same order, so their results are equal to the kernels' to the last bit (property-tested
against them). Where the kernel sums along an axis, these do it one element at a time in the
kernel's order, or vectorise only over elements that are independent of each other.

A site has tens of sessions and about a hundred ISPs: a call takes milliseconds here.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-9


def _must_run(need_wh: float, later_wh: float, pmin: float, pmax: float, dt_h: float) -> float:
    short = need_wh - later_wh
    if short <= _EPS:
        return 0.0
    p = short / dt_h
    if p < pmin:
        p = pmin
    return min(p, pmax)


def envelope(
    start: np.ndarray,
    end: np.ndarray,
    energy_wh: np.ndarray,
    pmin: np.ndarray,
    pmax: np.ndarray,
    limit: np.ndarray,
    dt_h: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`forecaster.kernels.flex.envelope` (same arguments, same results)."""
    n = start.size
    horizon = limit.size
    lower = np.zeros(horizon)
    upper = np.zeros(horizon)
    short = np.zeros(n, dtype=np.bool_)
    starts = [int(v) for v in start]
    ends = [int(v) for v in end]
    energy = [float(v) for v in energy_wh]
    lo_w = [float(v) for v in pmin]
    hi_w = [float(v) for v in pmax]
    for i in range(n):
        first = max(starts[i], 0)
        slots = ends[i] - first
        if slots <= 0:
            short[i] = energy[i] > _EPS
            continue
        full = hi_w[i] * dt_h * slots
        if energy[i] > full + _EPS:
            short[i] = True
        useful = min(hi_w[i], max(lo_w[i], energy[i] / dt_h)) if energy[i] > _EPS else 0.0
        must = _must_run(energy[i], hi_w[i] * dt_h * (slots - 1), lo_w[i], hi_w[i], dt_h)
        last = min(ends[i], horizon)
        if last > first:
            # Each ISP gets one addition per session, in session order: as the kernel.
            upper[first:last] += useful
            lower[first:last] += must
    active = [i for i in range(n) if energy[i] > _EPS]
    deadlines = {ends[i] for i in active}
    for e in range(1, horizon + 1):
        if e not in deadlines:
            continue
        cap = np.zeros(horizon)
        due = 0.0
        for i in active:
            if ends[i] <= e:
                due += energy[i]
                first, last = max(starts[i], 0), min(ends[i], horizon)
                if last > first:
                    cap[first:last] += hi_w[i]
        head = np.minimum(cap[:e], limit[:e]) * dt_h
        total = 0.0
        for value in head.tolist():
            total += value
        need = (due - (total - head)) / dt_h
        lower[:e] = np.where(need > lower[:e], need, lower[:e])
    upper = np.minimum(upper, np.maximum(limit, 0.0))
    lower = np.minimum(lower, upper)
    return lower, upper, short


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
    """`forecaster.kernels.flex.allocate` (same arguments, same results)."""
    n = start.size
    horizon = limit.size
    schedule = np.zeros((n, horizon))
    starts = [int(v) for v in start]
    ends = [int(v) for v in end]
    lo_w = [float(v) for v in pmin]
    hi_w = [float(v) for v in pmax]
    remaining = [float(v) for v in energy_wh]
    limits = [float(v) for v in limit]
    targets = [float(v) for v in target]
    for t in range(horizon):
        present = [i for i in range(n) if starts[i] <= t < ends[i] and remaining[i] > _EPS]
        laxity = {i: (ends[i] - t) * dt_h - remaining[i] / hi_w[i] for i in present}
        # The kernel's insertion sort orders by (laxity, end, index), a total order.
        present.sort(key=lambda i: (laxity[i], ends[i], i))
        setpoint = dict.fromkeys(present, 0.0)
        room = max(limits[t], 0.0)
        used = 0.0
        for i in present:
            later = hi_w[i] * dt_h * (ends[i] - t - 1)
            p = _must_run(remaining[i], later, lo_w[i], hi_w[i], dt_h)
            if p > room:
                p = room if room >= lo_w[i] else 0.0
            setpoint[i] = p
            room -= p
            used += p
        want = targets[t] - used
        for i in present:
            if want <= _EPS or room <= _EPS:
                break
            p = setpoint[i]
            useful = min(hi_w[i], max(lo_w[i], remaining[i] / dt_h))
            add = min(useful - p, want, room)
            if add <= _EPS:
                continue
            if p == 0.0 and add < lo_w[i]:
                continue
            setpoint[i] = p + add
            want -= add
            room -= add
        for i in present:
            p = setpoint[i]
            schedule[i, t] = p
            remaining[i] = max(remaining[i] - min(p * dt_h, remaining[i]), 0.0)
    unmet = np.zeros(n)
    for i in range(n):
        after = max(ends[i] - max(horizon, starts[i]), 0)
        left = max(remaining[i] - hi_w[i] * dt_h * after, 0.0)
        unmet[i] = 0.0 if left <= _EPS else left
    return schedule, np.array(remaining, dtype=np.float64), unmet


def arrival_load(
    arrival_slot: np.ndarray,
    arrival_type: np.ndarray,
    offset_s: np.ndarray,
    duration_s: np.ndarray,
    power_w: np.ndarray,
    slots: int,
    isp_seconds: int,
) -> np.ndarray:
    """`forecaster.kernels.sessions.arrival_load` (same arguments, same results)."""
    out = np.zeros((3, slots, slots))
    day = float(slots * isp_seconds)
    edges = np.arange(slots + 1, dtype=np.int64) * isp_seconds
    left = edges[:-1].astype(np.float64)
    right = edges[1:].astype(np.float64)
    for i in range(arrival_slot.size):
        a = int(arrival_slot[i])
        t0 = float(a * isp_seconds) + float(offset_s[i])
        t1 = min(t0 + float(duration_s[i]), day)
        lo = np.maximum(t0, left[a:])
        hi = np.minimum(t1, right[a:])
        hit = hi > lo
        if hit.any():
            add = float(power_w[i]) * (hi - lo) / isp_seconds
            row = out[int(arrival_type[i]), a, a:]
            row[hit] += add[hit]
    return out
