"""The candidate forecast structures of per-site selection (`forecaster.selection`) and the
day table they read.

Everything works on a *day table*: one series as (D, P) power in W per local day and clock
slot (NaN where unknown), with each day's ordinal and off-day flag. A candidate forecasts a
target day from the days strictly before it (age >= 1 day), within `MAX_HISTORY_DAYS`:

* grouping: the same weekday (off days with Sundays), Mon-Fri + Saturday + Sunday/off day,
  or the weekday's own estimate shrunk towards its group's by n / (n + `SHRINK_DAYS`);
  a group with fewer than `MIN_GROUP_DAYS` days falls back to the wider group, then to all;
* recency: exponential weights by age (half-lives in days) or a plain window of 2-8 weeks;
* estimate per slot: weighted mean, weighted median or 20 % trimmed mean, of the day
  smoothed over +-1 ISP, in square-root space (count-like load) or in watts;
* level correction on/off: the last 3 group days' energy against the weighted mean energy.

The two baselines (seasonal naive D-7 and the 4-week same-weekday mean, both on the plain
calendar weekday as the backtest scores them) are candidates too.

Pure numpy; the per-slot estimates of a chosen structure run in a numba kernel
(`forecaster.kernels.selection`, imported only when first used), with the vectorised numpy
path kept beside it as the reference it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt

from forecaster.calendar import Float64Array, Int64Array, SiteCalendar, history_layout

MAX_HISTORY_DAYS = 84
"""A candidate reads at most this many days back from its target day. Twelve weeks: the
half-life of 28 days keeps a quarter of its weight beyond 56 days, and the Mon-Fri pool of
a slow site is its least noisy estimate when it is long (on the backtests 84 days scored
0.24 points lower than 56 on Caltech 2019, lower on four more sites, and at most 0.07 higher
on the other two; see docs/forecasting.md)."""
MIN_GROUP_DAYS = 2
SHRINK_DAYS = 3.0
LEVEL_DAYS = 3
LEVEL_WEIGHT = 0.5
LEVEL_CLIP = 2.0
TRIM = 0.2
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
    local dates (``date.toordinal``), holiday (D,) bool: what the site's calendar says, which
    `forecaster.offdays` checks against the site's own days. `calendar_holidays`: the
    calendar's holidays as ordinals, also those after the table (a working day between a
    holiday and a weekend is known to be one in advance)."""

    values: Float64Array
    ordinals: Int64Array
    holiday: BoolArray
    calendar_holidays: frozenset[int] = frozenset()

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
        return DayTable(
            self.values[keep], self.ordinals[keep], self.holiday[keep], self.calendar_holidays
        )


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
        frozenset(d.toordinal() for d in calendar.holidays),
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
    kernel: bool = False
    """Per-slot estimates from `forecaster.kernels.selection` (the forecast of a chosen
    structure) rather than the vectorised numpy path (selection, and the reference)."""
    spaces: dict[tuple[bool, int], tuple[Float64Array, BoolArray]] = field(default_factory=dict)
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
    paired: frozenset[tuple[str, str, int, int]] = frozenset()
    """(grouping, recency, span, smooth) whose weighted median and trimmed mean are both
    wanted: the kernel takes them from one sort of the days (`forecaster.kernels.selection`
    MEDIAN_AND_TRIMMED)."""

    @property
    def raw(self) -> Float64Array:
        """The values as the kernel takes them: C-contiguous float64."""
        return np.ascontiguousarray(self.values, dtype=np.float64)

    def values_in(self, use_sqrt: bool, smooth: int) -> tuple[Float64Array, BoolArray]:
        """(values, known), each (S, D, P), in the candidate's space."""
        key = (use_sqrt, smooth)
        if key not in self.spaces:
            x = _smooth(self.values, smooth)
            if use_sqrt:
                x = np.sqrt(np.maximum(x, 0.0))
            self.spaces[key] = (x, ~np.isnan(x))
        return self.spaces[key]

    def space(
        self, use_sqrt: bool, smooth: int
    ) -> tuple[Float64Array, BoolArray, Int64Array, Float64Array]:
        """(values, known, sort order along days, sorted values), each (S, D, P), in the
        candidate's space."""
        key = (use_sqrt, smooth)
        if key not in self.prepared:
            x, known = self.values_in(use_sqrt, smooth)
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
    *,
    kernel: bool = False,
) -> _Context:
    """`values` (S, D, P): S series over the same local days."""
    target_ordinals = np.asarray(target_ordinals, dtype=np.int64)
    # Days from the last target on are never read (age >= 1); cutting them off here means
    # they are not even in the arrays, so nothing after the origin can touch a forecast.
    if target_ordinals.size:
        last = int(np.max(target_ordinals))
        if ordinals.size < 2 or bool((np.diff(ordinals) > 0).all()):
            # Ascending days: the ones kept are a prefix, a view rather than a copy.
            n = int(np.searchsorted(ordinals, last))
            values, ordinals, holiday = values[:, :n], ordinals[:n], holiday[:n]
        else:
            keep = ordinals < last
            values, ordinals, holiday = values[:, keep], ordinals[keep], holiday[keep]
    missing = np.isnan(values)
    complete = ~missing.any(axis=2)
    return _Context(
        values=values,
        ordinals=ordinals,
        holiday=holiday,
        target_ordinals=target_ordinals,
        target_holiday=np.asarray(target_holiday, dtype=bool),
        age=target_ordinals[:, np.newaxis] - ordinals,
        has_data=np.asarray(~missing.all(axis=2), dtype=bool),
        # Complete days have no NaN: their plain sum is the nansum.
        energy=np.where(complete, values.sum(axis=2), np.nan),
        kernel=kernel,
    )


def _table_context(
    table: DayTable, target_ordinals: Int64Array, target_holiday: BoolArray, *, kernel: bool = False
) -> _Context:
    return _context(
        table.values[np.newaxis],
        table.ordinals,
        table.holiday,
        target_ordinals,
        target_holiday,
        kernel=kernel,
    )


def _estimate(ctx: _Context, grouping: str, c: Candidate) -> tuple[Float64Array, Float64Array]:
    """(S, T, P) estimate in the candidate's space and the (S, T, P) sum of weights behind it.

    Cached per (weights, estimator, space): candidates that differ only in the level
    correction, and the shrinkage's two parts, share it."""
    key = (grouping, c.recency, c.span_days, c.estimator, c.sqrt, c.smooth)
    if key in ctx.estimates:
        return ctx.estimates[key]
    w = ctx.group_weights(grouping, c.recency, c.span_days)
    if ctx.kernel:
        _kernel_estimates(ctx, w, key)
        return ctx.estimates[key]
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


def _kernel_estimates(
    ctx: _Context, w: Float64Array, key: tuple[str, str, int, str, bool, int]
) -> None:
    """`_estimate`'s numbers from the numba kernel, which needs no (S, T, P, D)
    temporaries. A weighted median or trimmed mean is computed in watts and in square roots
    at once (one sort serves both), as members of a combination often differ only there."""
    from forecaster.kernels import selection as selection_kernel

    grouping, recency, span, estimator, use_sqrt, smooth = key
    both = estimator != "mean"
    estimators = [estimator]
    if both and (grouping, recency, span, smooth) in ctx.paired:
        estimators = ["median", "trimmed"]
    # Sorted by watts: ties there are ties in square roots too (not the other way round
    # for values below zero).
    spaces = (
        [selection_kernel.WATTS, selection_kernel.SQRT]
        if both
        else [selection_kernel.SQRT if use_sqrt else selection_kernel.WATTS]
    )
    code = selection_kernel.MEDIAN_AND_TRIMMED if len(estimators) > 1 else _ESTIMATORS[estimator]
    value, mass = _weighted_estimates(
        ctx.raw, smooth, np.array(spaces, dtype=np.int64), w, code, TRIM
    )
    for e, name in enumerate(estimators):
        for k, space in enumerate(spaces):
            ctx.estimates[
                (grouping, recency, span, name, space == selection_kernel.SQRT, smooth)
            ] = (value[e * len(spaces) + k], mass)


PARALLEL_MIN_SERIES = 64
"""From this many series the kernel spreads them over threads; a site's few run serially."""


def _weighted_estimates(
    values: Float64Array,
    smooth: int,
    spaces: Int64Array,
    w: Float64Array,
    estimator: int,
    trim: float,
) -> tuple[Float64Array, Float64Array]:
    from forecaster.kernels import selection as selection_kernel

    kernel = (
        selection_kernel.weighted_estimates_parallel
        if values.shape[0] >= PARALLEL_MIN_SERIES
        else selection_kernel.weighted_estimates
    )
    value, mass = kernel(values, smooth, spaces, w, estimator, trim)
    return np.asarray(value, dtype=np.float64), np.asarray(mass, dtype=np.float64)


_ESTIMATORS = {"mean": 0, "median": 1, "trimmed": 2}
"""The kernel's estimator codes (`forecaster.kernels.selection`)."""


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


def paired_estimates(candidates: list[Candidate]) -> frozenset[tuple[str, str, int, int]]:
    """The (grouping, recency, span, smooth) for which `candidates` want both a weighted
    median and a trimmed mean (`_Context.paired`)."""
    wanted: dict[tuple[str, str, int, int], set[str]] = {}
    for c in candidates:
        groupings = ("weekday", "daytype") if c.grouping == "shrink" else (c.grouping,)
        for g in groupings:
            wanted.setdefault((g, c.recency, c.span_days, c.smooth), set()).add(c.estimator)
    return frozenset(k for k, v in wanted.items() if {"median", "trimmed"} <= v)


def _forecast(ctx: _Context, c: Candidate) -> Float64Array:
    """(S, T, P) P50 in W, >= 0, 0 where nothing is known."""
    if c.grouping == "shrink":
        w_own = ctx.group_weights("weekday", c.recency, c.span_days)
        own, m_own = _estimate(ctx, "weekday", c)
        pool, _ = _estimate(ctx, "daytype", c)
        # Effective number of own days behind each slot's estimate.
        known = ctx.values_in(c.sqrt, c.smooth)[1].astype(np.float64)
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
    *,
    kernel: bool = False,
) -> Float64Array:
    """(T, P) P50 in W of one candidate for the target days, each from the days before it
    (`kernel`: through the numba kernel, as a chosen structure's forecast is)."""
    out = _forecast(
        _table_context(table, target_ordinals, target_holiday, kernel=kernel), candidate
    )
    return np.asarray(out[0], dtype=np.float64)
