"""Per-site structure selection: each site's forecast is chosen by rolling-origin evaluation
on that site's own history, with the simple baselines among the candidates.

Why: a structure tuned on one site (Mon-Fri pooled, one recency, square roots) lost to a
4-week same-weekday mean on another workplace site. Sites differ in which weekday differs,
how fast they change and how noisy they are, so the structure is a per-site choice, made
from what the site did, not from what one garage did.

Everything works on a *day table*: one series as (D, P) power in W per local day and clock
slot (NaN where unknown), with each day's ordinal and holiday flag. A candidate forecasts a
target day from the days strictly before it (age >= 1 day), within `MAX_HISTORY_DAYS`:

* grouping: the same weekday (holidays with Sundays), Mon-Fri + Saturday + Sunday/holiday,
  or the weekday's own estimate shrunk towards its group's by n / (n + `SHRINK_DAYS`);
  a group with fewer than `MIN_GROUP_DAYS` days falls back to the wider group, then to all;
* recency: exponential weights by age (half-lives in days) or a plain window of 2-8 weeks;
* estimate per slot: weighted mean, weighted median or 20 % trimmed mean, of the day
  smoothed over +-1 ISP, in square-root space (count-like load) or in watts;
* level correction on/off: the last 3 group days' energy against the weighted mean energy.

The two baselines (seasonal naive D-7 and the 4-week same-weekday mean, both on the plain
calendar weekday as the backtest scores them) are candidates too. Selection scores every
candidate on the last `EVAL_DAYS` days before the origin (each forecast only from days
before it), recency-weighted, and keeps the best, or an inverse-error combination of the
best few when that scores better on the same days; so on those held-out days the choice is
never worse than the best baseline. P10/P90 come from the chosen forecast's residuals on
those days in square-root space, per local hour band (split conformal), recalibrated so
that their joint coverage on the held-out days is 80 %.

Pure numpy, no I/O: the agent and the backtest feed arrays in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt

from forecaster.calendar import Float64Array, Int64Array, SiteCalendar, history_layout

MAX_HISTORY_DAYS = 56
"""A candidate reads at most this many days back from its target day."""
EVAL_DAYS = 28
"""Held-out days scored per selection (4 weeks: every weekday 4 times)."""
MIN_EVAL_DAYS = 7
EVAL_HALF_LIFE_DAYS = 14.0
"""Held-out days are weighted by recency, so a site that changed is judged on its new self."""
MIN_GROUP_DAYS = 2
SHRINK_DAYS = 3.0
LEVEL_DAYS = 3
LEVEL_WEIGHT = 0.5
LEVEL_CLIP = 2.0
TRIM = 0.2
COMBINE_MAX = 3
BAND_HOURS = 4
COVERAGE = 0.8
SPREAD_HALF_LIFE_DAYS = 28
SPREAD_FLOOR = 0.25
"""The bands' scale is the slot's spread plus this share of the mean spread, so a slot
whose past days happened to agree still gets a band."""
BASELINES = ("seasonal_naive", "weekday_mean_4w")

BoolArray = npt.NDArray[np.bool_]


class SelectionError(ValueError):
    """Inputs selection cannot use (too little history, mismatched shapes, unknown names)."""


@dataclass(frozen=True)
class Candidate:
    """One forecast structure; `name` spells it out and identifies it in the store."""

    grouping: str  # "weekday" | "daytype" | "shrink" | "calendar" (plain weekday, baselines)
    recency: str  # "ew" | "window"
    span_days: int  # half-life (ew) or window length (window), days
    estimator: str  # "mean" | "median" | "trimmed"
    sqrt: bool
    level: bool
    smooth: int
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [
            self.grouping,
            f"{'hl' if self.recency == 'ew' else 'win'}{self.span_days}",
            self.estimator,
            "sqrt" if self.sqrt else "watts",
        ]
        if self.level:
            parts.append("level")
        return "-".join(parts)


def _grid() -> dict[str, Candidate]:
    out: dict[str, Candidate] = {}
    for base in (
        Candidate("calendar", "window", 7, "mean", False, False, 0, BASELINES[0]),
        Candidate("calendar", "window", 28, "mean", False, False, 0, BASELINES[1]),
    ):
        out[base.name] = base
    recencies = [("ew", 7), ("ew", 14), ("ew", 28), ("window", 14), ("window", 28), ("window", 56)]
    for grouping in ("weekday", "daytype", "shrink"):
        for recency, span in recencies:
            for estimator in ("mean", "median", "trimmed"):
                # A median is the same in watts and in square roots (a monotone map).
                for use_sqrt in (True,) if estimator == "median" else (True, False):
                    for level in (False, True):
                        c = Candidate(grouping, recency, span, estimator, use_sqrt, level, 1)
                        out[c.name] = c
    return out


CANDIDATES: dict[str, Candidate] = _grid()


# --- the day table ----------------------------------------------------------------------


@dataclass(frozen=True)
class DayTable:
    """One series per local day: values (D, P) W with NaN unknown, ordinals (D,) consecutive
    local dates (``date.toordinal``), holiday (D,) bool."""

    values: Float64Array
    ordinals: Int64Array
    holiday: BoolArray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != self.ordinals.size:
            raise SelectionError(
                f"day table shapes differ: values {self.values.shape}, {self.ordinals.size} days"
            )
        if self.ordinals.size and (np.diff(self.ordinals) != 1).any():
            raise SelectionError("day table ordinals must be consecutive days")

    @property
    def days(self) -> int:
        return int(self.ordinals.size)

    def before(self, ordinal: int) -> DayTable:
        """The days strictly before `ordinal`: what is known at 00:00 of that day."""
        keep = self.ordinals < ordinal
        return DayTable(self.values[keep], self.ordinals[keep], self.holiday[keep])


def day_table(
    values: Float64Array, start_epoch: int, calendar: SiteCalendar, until_epoch: int
) -> DayTable:
    """The whole local days of a (T,) power series on the UTC grid from `start_epoch` that end
    by `until_epoch`. A fall-back day's repeated hour is the mean of its two ISPs; the slots
    a spring-forward day skips are interpolated from their neighbours (they have no ISP)."""
    isp = calendar.isp_seconds
    length = min(values.size, max(0, (until_epoch - start_epoch) // isp))
    if length <= 0:
        return DayTable(
            np.zeros((0, calendar.slots_per_day)),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=bool),
        )
    layout = history_layout(calendar, start_epoch, length)
    index = layout.index
    first = np.where(index[:, :, 0] >= 0, values[np.maximum(index[:, :, 0], 0)], np.nan)
    second = np.where(index[:, :, 1] >= 0, values[np.maximum(index[:, :, 1], 0)], np.nan)
    table = np.where(
        np.isnan(second), first, np.where(np.isnan(first), second, (first + second) / 2)
    )
    absent = (index[:, :, 0] < 0) & (index[:, :, 1] < 0)
    slots = np.arange(table.shape[1])
    for d in np.flatnonzero(absent.any(axis=1) & layout.whole_day):
        known = ~absent[d] & ~np.isnan(table[d])
        if known.any():
            table[d, absent[d]] = np.interp(slots[absent[d]], slots[known], table[d, known])
    whole = layout.whole_day
    ordinals = layout.first_ordinal + np.arange(layout.days, dtype=np.int64)
    # Only whole days: a cut first or last day would look like a quiet day.
    keep = np.flatnonzero(whole)
    if keep.size and (np.diff(keep) != 1).any():
        raise SelectionError("day table: a cut day inside the history")
    return DayTable(
        np.ascontiguousarray(table[keep]),
        ordinals[keep],
        np.array([date.fromordinal(int(o)) in calendar.holidays for o in ordinals[keep]]),
    )


# --- candidate forecasts ----------------------------------------------------------------


def _weekday(ordinals: Int64Array) -> Int64Array:
    # date.toordinal(0001-01-01) = 1, a Monday: weekday() = (ordinal - 1) % 7.
    return (ordinals - 1) % 7


def _group_key(grouping: str, ordinals: Int64Array, holiday: BoolArray) -> Int64Array:
    wd = _weekday(ordinals)
    if grouping == "calendar":
        return wd
    if grouping == "weekday":
        return np.where(holiday, 6, wd)
    if grouping == "daytype":
        return np.where(holiday | (wd == 6), 2, np.where(wd == 5, 1, 0))
    return np.zeros(ordinals.size, dtype=np.int64)  # "all"


def _smooth(values: Float64Array, radius: int) -> Float64Array:
    """Moving mean over +-radius slots (the last axis) of each day, over the slots with data."""
    if radius == 0:
        return values
    known = ~np.isnan(values)
    filled = np.where(known, values, 0.0)
    acc = np.zeros_like(filled)
    n = np.zeros_like(filled)
    slots = values.shape[-1]
    for shift in range(-radius, radius + 1):
        lo, hi = max(0, shift), min(slots, slots + shift)
        acc[..., lo - shift : hi - shift] += filled[..., lo:hi]
        n[..., lo - shift : hi - shift] += known[..., lo:hi]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, acc / np.maximum(n, 1), np.nan)


@dataclass
class _Context:
    """What every candidate on S series' day tables (one calendar) and one set of target
    days shares, computed once. Arrays carry the series first: (S, T, P) estimates."""

    values: Float64Array  # (S, D, P)
    ordinals: Int64Array  # (D,)
    holiday: BoolArray  # (D,)
    target_ordinals: Int64Array
    target_holiday: BoolArray
    age: Int64Array  # (T, D)
    has_data: BoolArray  # (S, D)
    energy: Float64Array  # (S, D) W-slots of complete days, NaN otherwise
    prepared: dict[tuple[bool, int], tuple[Float64Array, BoolArray, Int64Array, Float64Array]] = (
        field(default_factory=dict)
    )
    weights: dict[tuple[str, str, int], Float64Array] = field(default_factory=dict)
    cumulative: dict[tuple[str, str, int, int], tuple[Float64Array, Float64Array]] = field(
        default_factory=dict
    )
    estimates: dict[tuple[str, str, int, str, bool, int], tuple[Float64Array, Float64Array]] = (
        field(default_factory=dict)
    )

    def space(
        self, use_sqrt: bool, smooth: int
    ) -> tuple[Float64Array, BoolArray, Int64Array, Float64Array]:
        """(values, known, sort order along days, sorted values), each (S, D, P), in the
        candidate's space."""
        key = (use_sqrt, smooth)
        if key not in self.prepared:
            x = _smooth(self.values, smooth)
            if use_sqrt:
                x = np.sqrt(np.maximum(x, 0.0))
            known = ~np.isnan(x)
            other = self.prepared.get((not use_sqrt, smooth))
            if other is not None:
                # The square root keeps the order: one sort serves both spaces.
                order = other[2]
            else:
                order = np.argsort(np.where(known, x, np.inf), axis=1, kind="stable")
            self.prepared[key] = (x, known, order, np.take_along_axis(x, order, axis=1))
        return self.prepared[key]

    def group_weights(self, grouping: str, recency: str, span: int) -> Float64Array:
        """(S, T, D) weights of the history days for each target, with the fallback to wider
        groups for targets whose group has too few days."""
        key = (grouping, recency, span)
        if key in self.weights:
            return self.weights[key]
        age = self.age[np.newaxis]
        usable = (age >= 1) & (age <= MAX_HISTORY_DAYS) & self.has_data[:, np.newaxis, :]
        if recency == "ew":
            rec = np.where(usable, 0.5 ** ((age - 1) / span), 0.0)
        else:
            rec = np.where(usable & (age <= span), 1.0, 0.0)
        chain = [grouping] if grouping == "calendar" else [grouping, "daytype", "all"]
        w = np.zeros_like(rec)
        done = np.zeros(rec.shape[:2], dtype=bool)
        for g in chain:
            hk = _group_key(g, self.ordinals, self.holiday)
            tk = _group_key(g, self.target_ordinals, self.target_holiday)
            wg = np.where((tk[:, np.newaxis] == hk[np.newaxis, :])[np.newaxis], rec, 0.0)
            enough = ((wg > 0).sum(axis=2) >= MIN_GROUP_DAYS) | (g == chain[-1])
            take = enough & ~done
            w[take] = wg[take]
            done |= take
        self.weights[key] = w
        return w


def _context(
    values: Float64Array,
    ordinals: Int64Array,
    holiday: BoolArray,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
) -> _Context:
    """`values` (S, D, P): S series over the same local days."""
    target_ordinals = np.asarray(target_ordinals, dtype=np.int64)
    # Days from the last target on are never read (age >= 1); cutting them off here means
    # they are not even in the arrays, so nothing after the origin can touch a forecast.
    if target_ordinals.size:
        keep = ordinals < int(np.max(target_ordinals))
        values, ordinals, holiday = values[:, keep], ordinals[keep], holiday[keep]
    complete = ~np.isnan(values).any(axis=2)
    return _Context(
        values=values,
        ordinals=ordinals,
        holiday=holiday,
        target_ordinals=target_ordinals,
        target_holiday=np.asarray(target_holiday, dtype=bool),
        age=target_ordinals[:, np.newaxis] - ordinals,
        has_data=np.asarray(~np.isnan(values).all(axis=2), dtype=bool),
        energy=np.where(complete, np.nansum(values, axis=2), np.nan),
    )


def _table_context(
    table: DayTable, target_ordinals: Int64Array, target_holiday: BoolArray
) -> _Context:
    return _context(
        table.values[np.newaxis], table.ordinals, table.holiday, target_ordinals, target_holiday
    )


def _estimate(ctx: _Context, grouping: str, c: Candidate) -> tuple[Float64Array, Float64Array]:
    """(S, T, P) estimate in the candidate's space and the (S, T, P) sum of weights behind it.

    Cached per (weights, estimator, space): candidates that differ only in the level
    correction, and the shrinkage's two parts, share it."""
    key = (grouping, c.recency, c.span_days, c.estimator, c.sqrt, c.smooth)
    if key in ctx.estimates:
        return ctx.estimates[key]
    w = ctx.group_weights(grouping, c.recency, c.span_days)
    x, known, order, sorted_x = ctx.space(c.sqrt, c.smooth)
    if c.estimator == "mean":
        mass = w @ known.astype(np.float64)
        total = w @ np.where(known, x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(mass > 0, total / np.maximum(mass, 1e-300), np.nan)
        ctx.estimates[key] = (value, mass)
        return value, mass
    # Weighted quantiles per slot: the days' weights in each slot's sorted order,
    # (S, T, P, D). The order is the same in watts and in square roots (a monotone map), so
    # both share it.
    ckey = (grouping, c.recency, c.span_days, c.smooth)
    if ckey not in ctx.cumulative:
        order_t = order.transpose(0, 2, 1)[:, np.newaxis]  # (S, 1, P, D)
        known_t = np.take_along_axis(known, order, axis=1).transpose(0, 2, 1)[:, np.newaxis]
        ws = np.take_along_axis(w[:, :, np.newaxis, :], order_t, axis=3) * known_t
        ctx.cumulative[ckey] = (ws, np.cumsum(ws, axis=3))
    ws, cum = ctx.cumulative[ckey]
    total = cum[..., -1:]
    xs = np.where(np.isnan(sorted_x), 0.0, sorted_x).transpose(0, 2, 1)[:, np.newaxis]
    if c.estimator == "median":
        half = 0.5 * total
        lower = np.argmax(cum >= half * (1 - 1e-12), axis=3)[..., np.newaxis]
        upper = np.argmax(cum > half * (1 + 1e-12), axis=3)[..., np.newaxis]
        value = (
            0.5
            * (np.take_along_axis(xs, lower, axis=3) + np.take_along_axis(xs, upper, axis=3))[
                ..., 0
            ]
        )
    else:
        lo, hi = TRIM * total, (1 - TRIM) * total
        part = np.clip(np.minimum(cum, hi) - np.maximum(cum - ws, lo), 0.0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (part * xs).sum(axis=3) / np.maximum(part.sum(axis=3), 1e-300)
    mass = total[..., 0]
    result = (np.where(mass > 0, value, np.nan), mass)
    ctx.estimates[key] = result
    return result


def _level(ctx: _Context, w: Float64Array) -> Float64Array:
    """(S, T) level factor: the last LEVEL_DAYS complete group days against the weighted
    mean."""
    has = (w > 0) & ~np.isnan(ctx.energy)[:, np.newaxis, :]
    energy = np.where(np.isnan(ctx.energy), 0.0, ctx.energy)[:, np.newaxis, :]
    ew = np.where(has, w, 0.0)
    mean = (ew * energy).sum(axis=2) / np.maximum(ew.sum(axis=2), 1e-300)
    # Rank from the newest usable day: 1 for the newest.
    rank = np.cumsum(has[..., ::-1], axis=2)[..., ::-1]
    recent = has & (rank <= LEVEL_DAYS)
    n = recent.sum(axis=2)
    rec = (recent * energy).sum(axis=2) / np.maximum(n, 1)
    ok = (n > 0) & (mean > 0)
    ratio = np.clip(np.where(ok, rec / np.where(ok, mean, 1.0), 1.0), 1 / LEVEL_CLIP, LEVEL_CLIP)
    return 1.0 + LEVEL_WEIGHT * (ratio - 1.0)


def _forecast(ctx: _Context, c: Candidate) -> Float64Array:
    """(S, T, P) P50 in W, >= 0, 0 where nothing is known."""
    if c.grouping == "shrink":
        w_own = ctx.group_weights("weekday", c.recency, c.span_days)
        own, m_own = _estimate(ctx, "weekday", c)
        pool, _ = _estimate(ctx, "daytype", c)
        # Effective number of own days behind each slot's estimate.
        known = ctx.space(c.sqrt, c.smooth)[1].astype(np.float64)
        n_own = m_own * m_own / np.maximum((w_own * w_own) @ known, 1e-300)
        lam = n_own / (n_own + SHRINK_DAYS)
        est = np.where(
            np.isnan(own), pool, lam * own + (1 - lam) * np.where(np.isnan(pool), own, pool)
        )
        w = w_own
    else:
        w = ctx.group_weights(c.grouping, c.recency, c.span_days)
        est, _ = _estimate(ctx, c.grouping, c)
    est = np.where(np.isnan(est), 0.0, np.maximum(est, 0.0))
    out = est * est if c.sqrt else est
    if c.level:
        out = out * _level(ctx, w)[..., np.newaxis]
    return out


def candidate_forecast(
    table: DayTable,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
    candidate: Candidate,
) -> Float64Array:
    """(T, P) P50 in W of one candidate for the target days, each from the days before it."""
    out = _forecast(_table_context(table, target_ordinals, target_holiday), candidate)
    return np.asarray(out[0], dtype=np.float64)


# --- selection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The chosen structure of one series and what it was chosen on."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    heldout_nmae_pct: float
    baseline_nmae_pct: dict[str, float]
    eval_days: int
    origin_ordinal: int
    mean_abs_error_w: float
    """Recency-weighted mean absolute error per ISP on the held-out days: the yardstick for
    detecting a regime change later."""
    band_lo: tuple[float, ...]
    band_hi: tuple[float, ...]
    spread_floor: float
    """Quantiles per local hour band of the residuals in square-root space divided by the
    slot's spread (see `_spread`) plus `spread_floor` (sqrt W)."""
    slots_per_band: int

    @property
    def structure(self) -> str:
        if len(self.members) == 1:
            return self.members[0]
        return " + ".join(f"{w:.2f}*{m}" for m, w in zip(self.members, self.weights, strict=True))

    def as_json(self) -> dict[str, object]:
        return {
            "structure": self.structure,
            "members": list(self.members),
            "weights": list(self.weights),
            "heldout_nmae_pct": self.heldout_nmae_pct,
            "baseline_nmae_pct": dict(self.baseline_nmae_pct),
            "eval_days": self.eval_days,
            "origin": date.fromordinal(self.origin_ordinal).isoformat(),
            "mean_abs_error_w": self.mean_abs_error_w,
            "band_lo": list(self.band_lo),
            "band_hi": list(self.band_hi),
            "spread_floor": self.spread_floor,
            "slots_per_band": self.slots_per_band,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Selection:
        def floats(key: str) -> tuple[float, ...]:
            raw = data[key]
            if not isinstance(raw, list):
                raise SelectionError(f"stored selection: {key} is not a list")
            return tuple(float(v) for v in raw)

        try:
            members = data["members"]
            baselines = data["baseline_nmae_pct"]
            if not isinstance(members, list) or not isinstance(baselines, dict):
                raise SelectionError("stored selection: members or baselines malformed")
            unknown = [m for m in members if m not in CANDIDATES]
            if unknown:
                raise SelectionError(f"stored selection names unknown structures {unknown}")
            return cls(
                members=tuple(str(m) for m in members),
                weights=floats("weights"),
                heldout_nmae_pct=float(str(data["heldout_nmae_pct"])),
                baseline_nmae_pct={str(k): float(v) for k, v in baselines.items()},
                eval_days=int(str(data["eval_days"])),
                origin_ordinal=date.fromisoformat(str(data["origin"])).toordinal(),
                mean_abs_error_w=float(str(data["mean_abs_error_w"])),
                band_lo=floats("band_lo"),
                band_hi=floats("band_hi"),
                spread_floor=float(str(data["spread_floor"])),
                slots_per_band=int(str(data["slots_per_band"])),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SelectionError(f"stored selection unreadable: {exc}") from exc


def _combined(forecasts: Sequence[Float64Array], weights: Sequence[float]) -> Float64Array:
    out = np.zeros_like(forecasts[0])
    for f, w in zip(forecasts, weights, strict=True):
        out += w * f
    return out


def select(
    table: DayTable,
    candidates: Iterable[Candidate] | None = None,
    *,
    eval_days: int = EVAL_DAYS,
    band_hours: int = BAND_HOURS,
) -> Selection:
    """Choose the structure for the day after the table's last day from the table alone.

    Each of the last `eval_days` days (fewer when the history is short, at least
    `MIN_EVAL_DAYS`) is forecast by every candidate from the days before it; the score is
    the recency-weighted NMAE over those days.
    """
    pool = list(CANDIDATES.values() if candidates is None else candidates)
    if not any(c.label in BASELINES for c in pool):
        raise SelectionError("the candidates must include the baselines")
    slots = table.values.shape[1]
    if slots == 0 or 1440 % slots:
        raise SelectionError(f"{slots} slots per day is not a whole number of minutes per ISP")
    # Evaluate only days that have at least a week of history before them.
    usable = max(0, table.days - 7)
    n_eval = min(eval_days, usable)
    if n_eval < MIN_EVAL_DAYS:
        raise SelectionError(
            f"{table.days} days of history: selection needs at least {MIN_EVAL_DAYS + 7}"
        )
    eval_idx = np.arange(table.days - n_eval, table.days)
    measured = int((~np.isnan(table.values[eval_idx]).all(axis=1)).sum())
    if measured < MIN_EVAL_DAYS:
        raise SelectionError(
            f"{measured} of the last {n_eval} days have data: selection needs at least "
            f"{MIN_EVAL_DAYS} (a young site uses the day-type profile until then)"
        )
    ctx = _table_context(table, table.ordinals[eval_idx], table.holiday[eval_idx])
    actual = table.values[eval_idx]
    known = ~np.isnan(actual)
    y = np.where(known, actual, 0.0)
    age = table.days - eval_idx  # 1 for the newest
    day_w = 0.5 ** ((age - 1) / EVAL_HALF_LIFE_DAYS)
    wk = known * day_w[:, np.newaxis]
    scale = float((wk * y).sum())
    if scale <= 0:
        raise SelectionError("no load at all on the held-out days: nothing to choose by")

    def nmae(f: Float64Array) -> float:
        return 100.0 * float((wk * np.abs(f - y)).sum()) / scale

    forecasts = {c.name: _forecast(ctx, c)[0] for c in pool}
    scores = {name: nmae(f) for name, f in forecasts.items()}
    ranked = sorted(scores, key=lambda n: (scores[n], n))
    best_members: tuple[str, ...] = (ranked[0],)
    best_weights: tuple[float, ...] = (1.0,)
    best_score = scores[ranked[0]]
    best_f = forecasts[ranked[0]]
    for k in range(2, min(COMBINE_MAX, len(ranked)) + 1):
        members = tuple(ranked[:k])
        inv = np.array([1.0 / max(scores[m], 1e-9) for m in members])
        weights = tuple(float(v) for v in inv / inv.sum())
        f = _combined([forecasts[m] for m in members], weights)
        s = nmae(f)
        if s < best_score:
            best_members, best_weights, best_score, best_f = members, weights, s, f
    spread = _spread(ctx)[0]
    floor = SPREAD_FLOOR * float(np.mean(spread)) + 1e-9
    lo, hi, per_band = _bands(
        best_f, _scale(spread, best_f, floor), actual, day_w, slots, band_hours
    )
    return Selection(
        members=best_members,
        weights=best_weights,
        heldout_nmae_pct=best_score,
        baseline_nmae_pct={b: scores[b] for b in BASELINES if b in scores},
        eval_days=int(n_eval),
        origin_ordinal=int(table.ordinals[-1]) + 1,
        mean_abs_error_w=float((wk * np.abs(best_f - y)).sum() / max(wk.sum(), 1e-300)),
        band_lo=lo,
        band_hi=hi,
        spread_floor=floor,
        slots_per_band=per_band,
    )


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
    c = Candidate("weekday", "ew", SPREAD_HALF_LIFE_DAYS, "mean", True, False, 0)
    mean, mass = _estimate(ctx, "weekday", c)
    w = ctx.group_weights("weekday", "ew", SPREAD_HALF_LIFE_DAYS)
    x, known, _, _ = ctx.space(True, 0)
    square = w @ np.where(known, x * x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = square / np.maximum(mass, 1e-300) - np.where(np.isnan(mean), 0.0, mean) ** 2
    return np.where(mass > 0, np.sqrt(np.maximum(var, 0.0)), 0.0)


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


def forecast_days(
    selection: Selection,
    table: DayTable,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
) -> tuple[Float64Array, Float64Array, Float64Array]:
    """P10, P50, P90 (T, P) in W for the target days with the chosen structure, each target
    day from the table's days before it."""
    ctx = _table_context(table, np.asarray(target_ordinals), np.asarray(target_holiday))
    p10, p50, p90 = _quantiles(selection, ctx)
    return p10[0], p50[0], p90[0]


SERIES_PER_BLOCK = 32
"""Series per vectorised block in `forecast_many`: the weighted quantiles hold
(series, days ahead, slots, history days) floats, ~10 MB per block for a week ahead."""


def forecast_many(
    selection: Selection,
    values: Float64Array,
    ordinals: Int64Array,
    holiday: BoolArray,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
) -> tuple[Float64Array, Float64Array, Float64Array]:
    """`forecast_days` for S series that share one structure and one calendar at once:
    `values` (S, D, P) over the local days `ordinals`; returns P10, P50, P90 (S, T, P) W.
    The same numbers as one `forecast_days` per series, in one vectorised pass per block."""
    if values.ndim != 3 or values.shape[1] != ordinals.size:
        raise SelectionError(f"values {values.shape} do not match {ordinals.size} days")
    parts = []
    for first in range(0, values.shape[0], SERIES_PER_BLOCK):
        block = values[first : first + SERIES_PER_BLOCK]
        ctx = _context(block, ordinals, holiday, target_ordinals, target_holiday)
        parts.append(_quantiles(selection, ctx))
    p10, p50, p90 = (np.concatenate([part[q] for part in parts]) for q in range(3))
    return p10, p50, p90


def _quantiles(
    selection: Selection, ctx: _Context
) -> tuple[Float64Array, Float64Array, Float64Array]:
    p50 = _combined([_forecast(ctx, CANDIDATES[m]) for m in selection.members], selection.weights)
    band_of = np.arange(ctx.values.shape[2]) // selection.slots_per_band
    root = np.sqrt(p50)
    scale = _scale(_spread(ctx), p50, selection.spread_floor)
    lo = np.asarray(selection.band_lo)[band_of] * scale
    hi = np.asarray(selection.band_hi)[band_of] * scale
    p10 = np.minimum(np.maximum(root + lo, 0.0) ** 2, p50)
    p90 = np.maximum((root + hi) ** 2, p50)
    return p10, p50, p90


def regime_changed(selection: Selection, actual: Float64Array, forecast: Float64Array) -> bool:
    """Whether the days since the selection say the site changed: over at least 3 days, the
    mean absolute error per ISP is more than twice the held-out one, or the daily energy is
    off by more than half in one direction (a collapse or a doubling)."""
    known = ~np.isnan(actual)
    if actual.shape[0] < LEVEL_DAYS or not known.any():
        return False
    err = np.where(known, forecast - actual, 0.0)
    mae = float(np.abs(err).sum() / known.sum())
    load = float(np.where(known, actual, 0.0).sum())
    bias = abs(float(err.sum())) / max(load, float(np.where(known, forecast, 0.0).sum()), 1e-9)
    return mae > 2.0 * selection.mean_abs_error_w or bias > 0.5
