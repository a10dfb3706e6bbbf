"""Plain-loop references for `forecaster.selection`: one target day, one slot, one history
day at a time, as the module docstring describes the candidates. The unit tests compare the
vectorised module with these on random tables."""

from __future__ import annotations

from datetime import date

import numpy as np

from forecaster import selection as sel
from forecaster.selection import Candidate


def group_of(grouping: str, ordinal: int, holiday: bool) -> int:
    wd = date.fromordinal(ordinal).weekday()
    if grouping == "calendar":
        return wd
    if grouping == "weekday":
        return 6 if holiday else wd
    if grouping == "daytype":
        if holiday or wd == 6:
            return 2
        return 1 if wd == 5 else 0
    return 0


def smooth_day(day: np.ndarray, radius: int) -> np.ndarray:
    out = np.full(day.size, np.nan)
    for k in range(day.size):
        window = [day[j] for j in range(max(0, k - radius), min(day.size, k + radius + 1))]
        window = [v for v in window if not np.isnan(v)]
        if window:
            out[k] = sum(window) / len(window)
    return out


def weights(
    values: np.ndarray,
    ordinals: np.ndarray,
    holiday: np.ndarray,
    target: int,
    target_holiday: bool,
    grouping: str,
    recency: str,
    span: int,
) -> np.ndarray:
    chain = [grouping] if grouping == "calendar" else [grouping, "daytype", "all"]
    for g in chain:
        w = np.zeros(ordinals.size)
        for j, o in enumerate(ordinals.tolist()):
            age = target - o
            if age < 1 or age > sel.MAX_HISTORY_DAYS or np.isnan(values[j]).all():
                continue
            if group_of(g, o, bool(holiday[j])) != group_of(g, target, target_holiday):
                continue
            if recency == "ew":
                w[j] = 0.5 ** ((age - 1) / span)
            elif age <= span:
                w[j] = 1.0
        if (w > 0).sum() >= sel.MIN_GROUP_DAYS or g == chain[-1]:
            return w
    raise AssertionError("unreachable")


def estimate(xs: list[float], ws: list[float], estimator: str) -> float:
    if not ws or sum(ws) <= 0:
        return float("nan")
    if estimator == "mean":
        return sum(w * x for x, w in zip(xs, ws, strict=True)) / sum(ws)
    pairs = sorted(zip(xs, ws, strict=True), key=lambda p: p[0])
    total = sum(ws)
    if estimator == "median":
        cum = 0.0
        lower = upper = None
        for x, w in pairs:
            cum += w
            if lower is None and cum >= 0.5 * total * (1 - 1e-12):
                lower = x
            if upper is None and cum > 0.5 * total * (1 + 1e-12):
                upper = x
        assert lower is not None
        assert upper is not None
        return 0.5 * (lower + upper)
    lo, hi = sel.TRIM * total, (1 - sel.TRIM) * total
    cum = 0.0
    acc = mass = 0.0
    for x, w in pairs:
        part = max(0.0, min(cum + w, hi) - max(cum, lo))
        acc += part * x
        mass += part
        cum += w
    return acc / mass if mass > 0 else float("nan")


def forecast(
    values: np.ndarray,
    ordinals: np.ndarray,
    holiday: np.ndarray,
    target: int,
    target_holiday: bool,
    c: Candidate,
) -> np.ndarray:
    """(P,) P50 in W of candidate `c` for day `target`."""
    slots = values.shape[1]
    days = [smooth_day(values[j], c.smooth) for j in range(ordinals.size)]
    if c.sqrt:
        days = [np.sqrt(np.maximum(d, 0.0)) for d in days]

    def per_slot(grouping: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = weights(
            values, ordinals, holiday, target, target_holiday, grouping, c.recency, c.span_days
        )
        est = np.full(slots, np.nan)
        n_eff = np.zeros(slots)
        for k in range(slots):
            xs = [
                float(days[j][k]) for j in range(len(days)) if w[j] > 0 and not np.isnan(days[j][k])
            ]
            ws = [float(w[j]) for j in range(len(days)) if w[j] > 0 and not np.isnan(days[j][k])]
            est[k] = estimate(xs, ws, c.estimator)
            if ws:
                n_eff[k] = sum(ws) ** 2 / sum(v * v for v in ws)
        return est, n_eff, w

    if c.grouping == "shrink":
        own, n_own, w = per_slot("weekday")
        pool, _, _ = per_slot("daytype")
        out = np.empty(slots)
        for k in range(slots):
            if np.isnan(own[k]):
                out[k] = pool[k]
            elif np.isnan(pool[k]):
                out[k] = own[k]
            else:
                lam = n_own[k] / (n_own[k] + sel.SHRINK_DAYS)
                out[k] = lam * own[k] + (1 - lam) * pool[k]
    else:
        out, _, w = per_slot(c.grouping)
    out = np.where(np.isnan(out), 0.0, np.maximum(out, 0.0))
    if c.sqrt:
        out = out * out
    if c.level:
        complete = [j for j in range(ordinals.size) if w[j] > 0 and not np.isnan(values[j]).any()]
        if complete:
            energy = {j: float(values[j].sum()) for j in complete}
            mean = sum(w[j] * energy[j] for j in complete) / sum(w[j] for j in complete)
            newest = sorted(complete)[-sel.LEVEL_DAYS :]
            recent = sum(energy[j] for j in newest) / len(newest)
            ratio = recent / mean if mean > 0 else 1.0
            ratio = min(max(ratio, 1 / sel.LEVEL_CLIP), sel.LEVEL_CLIP)
            out = out * (1 + sel.LEVEL_WEIGHT * (ratio - 1))
    return out


def select_scores(
    values: np.ndarray,
    ordinals: np.ndarray,
    holiday: np.ndarray,
    candidates: list[Candidate],
    eval_days: int,
) -> dict[str, float]:
    """Recency-weighted held-out NMAE % of each candidate over the last `eval_days` days."""
    n = values.shape[0]
    num = {c.name: 0.0 for c in candidates}
    den = 0.0
    for e in range(n - eval_days, n):
        w = 0.5 ** ((n - 1 - e) / sel.EVAL_HALF_LIFE_DAYS)
        y = values[e]
        known = ~np.isnan(y)
        den += w * float(y[known].sum())
        for c in candidates:
            f = forecast(
                values[:e], ordinals[:e], holiday[:e], int(ordinals[e]), bool(holiday[e]), c
            )
            num[c.name] += w * float(np.abs(f - y)[known].sum())
    return {name: 100.0 * v / den for name, v in num.items()}
