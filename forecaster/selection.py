"""Per-site structure selection: each site's forecast is chosen by rolling-origin evaluation
on that site's own history, with the simple baselines among the candidates.

Why: a structure tuned on one site (Mon-Fri pooled, one recency, square roots) lost to a
4-week same-weekday mean on another workplace site. Sites differ in which weekday differs,
how fast they change and how noisy they are, so the structure is a per-site choice, made
from what the site did, not from what one garage did.

The candidates and the day table they read are in `forecaster.candidates`; the P10/P90
bands fitted to the chosen forecast's held-out residuals in `forecaster.calibration`.

The two baselines (seasonal naive D-7 and the 4-week same-weekday mean, both on the plain
calendar weekday as the backtest scores them) are candidates too. Selection scores every
candidate on the last `EVAL_DAYS` days before the origin (each forecast only from days
before it), recency-weighted, and keeps the best, or a combination of the best-ranked ones (weights
chosen on the same NMAE, or a plain mean of many) when that scores better on the same
days; so on those held-out days the choice is
never worse than the best baseline. P10/P90 come from the chosen forecast's residuals on
those days in square-root space, per local hour band (split conformal), recalibrated so
that their joint coverage on the held-out days is 80 %.

No I/O: the agent and the backtest feed arrays in. Selection is pure numpy; the chosen
structure's forecast runs in a numba kernel (`forecaster.kernels.selection`, imported only
when first used, so a caller of the numpy path alone never loads numba and LLVM), with the
numpy path kept beside it (`kernel=False`) as the reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from forecaster.calendar import Float64Array, Int64Array
from forecaster.calibration import (
    BAND_HOURS,
    SPREAD_FLOOR,
    _bands,
    _scale,
    _spread,
    zero_share,
)
from forecaster.candidates import (
    _ESTIMATORS,
    BASELINES,
    CANDIDATES,
    LEVEL_CLIP,
    LEVEL_DAYS,
    LEVEL_WEIGHT,
    MAX_HISTORY_DAYS,
    MIN_GROUP_DAYS,
    PARALLEL_MIN_SERIES,
    SHRINK_DAYS,
    TRIM,
    BoolArray,
    Candidate,
    DayTable,
    SelectionError,
    _Context,
    _context,
    _forecast,
    candidate_forecast,
    day_table,
    paired_estimates,
)
from forecaster.offdays import off_days

__all__ = [
    "BAND_DAYS",
    "BAND_HALF_LIFE_DAYS",
    "BASELINES",
    "CANDIDATES",
    "EVAL_DAYS",
    "EVAL_HALF_LIFE_DAYS",
    "LEVEL_CLIP",
    "LEVEL_DAYS",
    "LEVEL_WEIGHT",
    "MAX_HISTORY_DAYS",
    "MIN_EVAL_DAYS",
    "MIN_GROUP_DAYS",
    "PARALLEL_MIN_SERIES",
    "SHRINK_DAYS",
    "TRIM",
    "_ESTIMATORS",
    "Candidate",
    "DayTable",
    "Selection",
    "SelectionError",
    "candidate_forecast",
    "day_table",
    "forecast_days",
    "forecast_many",
    "regime_changed",
    "select",
    "zero_probability",
]

EVAL_DAYS = 56
"""Held-out days scored per selection (8 weeks: every weekday 8 times). Ranking 182
structures on 4 weeks chose by luck as much as by fit: structures 1 % apart on 28 days
swap places from one week to the next."""
MIN_EVAL_DAYS = 7
EVAL_HALF_LIFE_DAYS = 42.0
"""Held-out days are weighted by recency, so a site that changed is judged more on its new
self; a half-life of 6 weeks keeps most of the 8 weeks' evidence (on the 2020 collapse a
half-life of 4 weeks scored 0.6 points lower, and 6 weeks 0.08 lower on Caltech 2019: see
docs/forecasting.md)."""
BAND_DAYS = 28
BAND_HALF_LIFE_DAYS = 14.0
"""The P10/P90 bands are fitted on the newest `BAND_DAYS` held-out days only, weighted by a
shorter half-life than the choice: the choice needs many days to rank structures a point
apart, but a band must follow the site's current spread (after a collapse the old days'
residuals widened it for weeks: pinball loss 1.20 kW on the 2020 backtest, 0.84 with these
bands)."""
COMBINE_MAX = 3
WEIGHT_STEPS = 10
"""Convex weights of the best `COMBINE_MAX` candidates are tried in steps of 1/10."""
POOL_SIZES = (5, 8, 12, 20)
"""Equal-weight means of this many best candidates are tried as well."""

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


def _combinations(
    ranked: Sequence[str], scores: dict[str, float]
) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
    """The combinations of the best-ranked candidates that selection scores against the
    best one, as (members, weights summing to 1).

    Why these: the backtest scores the P50 by NMAE, an absolute error, so the weights are
    chosen on that loss rather than fixed by the members' inverse error (kept among the
    choices): the inverse-error mean of the best 2 and 3, every convex weighting of the
    best 3 in steps of 1/`WEIGHT_STEPS`, and the plain mean of the best 5 to 20. Ranking
    182 structures on a few weeks of held-out days favours whichever was luckiest there; a mean of
    many near-equal ones averages that luck out, and the held-out days decide whether the
    site is one where that helps."""
    out: list[tuple[tuple[str, ...], tuple[float, ...]]] = []
    for k in range(2, min(COMBINE_MAX, len(ranked)) + 1):
        members = tuple(ranked[:k])
        inv = np.array([1.0 / max(scores[m], 1e-9) for m in members])
        out.append((members, tuple(float(v) for v in inv / inv.sum())))
    if len(ranked) >= COMBINE_MAX:
        top = ranked[:COMBINE_MAX]
        for a in range(WEIGHT_STEPS + 1):
            for b in range(WEIGHT_STEPS + 1 - a):
                steps = (a, b, WEIGHT_STEPS - a - b)
                kept = [(m, n / WEIGHT_STEPS) for m, n in zip(top, steps, strict=True) if n]
                if len(kept) > 1:
                    out.append((tuple(m for m, _ in kept), tuple(w for _, w in kept)))
    out.extend(
        (tuple(ranked[:k]), tuple(1.0 / k for _ in range(k)))
        for k in POOL_SIZES
        if k <= len(ranked)
    )
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
    ctx = _learned_context(table, table.ordinals[eval_idx], table.holiday[eval_idx])
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
    for members, weights in _combinations(ranked, scores):
        f = _combined([forecasts[m] for m in members], weights)
        s = nmae(f)
        if s < best_score:
            best_members, best_weights, best_score, best_f = members, weights, s, f
    # The bands from the newest BAND_DAYS of the held-out days only.
    recent = slice(max(0, n_eval - BAND_DAYS), n_eval)
    spread = _spread(ctx)[0][recent]
    floor = SPREAD_FLOOR * float(np.mean(spread)) + 1e-9
    lo, hi, per_band = _bands(
        best_f[recent],
        _scale(spread, best_f[recent], floor),
        actual[recent],
        0.5 ** ((age[recent] - 1) / BAND_HALF_LIFE_DAYS),
        slots,
        band_hours,
        zero_share(ctx)[0][recent],
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


def forecast_days(
    selection: Selection,
    table: DayTable,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
    *,
    kernel: bool = True,
) -> tuple[Float64Array, Float64Array, Float64Array]:
    """P10, P50, P90 (T, P) in W for the target days with the chosen structure, each target
    day from the table's days before it. `kernel` False: the vectorised numpy path (the
    reference the kernel is tested against; selection scores candidates with it).
    `target_holiday`: the calendar's word on each target day; whether the site keeps it is
    learned from the table (`forecaster.offdays`)."""
    ctx = _learned_context(
        table, np.asarray(target_ordinals), np.asarray(target_holiday), kernel=kernel
    )
    p10, p50, p90 = _quantiles(selection, ctx)
    return p10[0], p50[0], p90[0]


def zero_probability(
    table: DayTable, target_ordinals: Int64Array, target_holiday: BoolArray
) -> Float64Array:
    """(T, P) probability that each slot of the target days carries exactly zero load, from
    the table's days before each (see `forecaster.calibration.zero_share`): what coverage of
    the P10-P90 band means where the outcome is zero (`forecaster.metrics.covered`)."""
    ctx = _learned_context(table, np.asarray(target_ordinals), np.asarray(target_holiday))
    return np.asarray(zero_share(ctx)[0], dtype=np.float64)


def _learned_context(
    table: DayTable, target_ordinals: Int64Array, target_holiday: BoolArray, *, kernel: bool = False
) -> _Context:
    """The candidates' context with the off days the site's own history shows, rather than
    the calendar's, for the history and the target days alike."""
    history, ahead = off_days(table, target_ordinals, target_holiday)
    return _context(
        table.values[np.newaxis],
        table.ordinals,
        history,
        np.asarray(target_ordinals, dtype=np.int64),
        ahead,
        kernel=kernel,
    )


SERIES_PER_BLOCK = 32
"""Series per vectorised block in `forecast_many`'s numpy path: the weighted quantiles hold
(series, days ahead, slots, history days) floats, ~10 MB per block for a week ahead. The
kernel needs no such temporaries and takes all series in one call."""


def forecast_many(
    selection: Selection,
    values: Float64Array,
    ordinals: Int64Array,
    holiday: BoolArray,
    target_ordinals: Int64Array,
    target_holiday: BoolArray,
    *,
    kernel: bool = True,
) -> tuple[Float64Array, Float64Array, Float64Array]:
    """`forecast_days` for S series that share one structure and one calendar at once:
    `values` (S, D, P) over the local days `ordinals`; returns P10, P50, P90 (S, T, P) W.
    The same numbers as one `forecast_days` per series: one kernel call, or with `kernel`
    False one vectorised numpy pass per block of `SERIES_PER_BLOCK` series."""
    if values.ndim != 3 or values.shape[1] != ordinals.size:
        raise SelectionError(f"values {values.shape} do not match {ordinals.size} days")
    parts = []
    block_size = max(1, values.shape[0]) if kernel else SERIES_PER_BLOCK
    for first in range(0, values.shape[0], block_size):
        block = values[first : first + block_size]
        ctx = _context(block, ordinals, holiday, target_ordinals, target_holiday, kernel=kernel)
        parts.append(_quantiles(selection, ctx))
    p10, p50, p90 = (np.concatenate([part[q] for part in parts]) for q in range(3))
    return p10, p50, p90


def _quantiles(
    selection: Selection, ctx: _Context
) -> tuple[Float64Array, Float64Array, Float64Array]:
    members = [CANDIDATES[m] for m in selection.members]
    if ctx.kernel:
        ctx.paired = paired_estimates(members)
    p50 = _combined([_forecast(ctx, c) for c in members], selection.weights)
    band_of = np.arange(ctx.values.shape[2]) // selection.slots_per_band
    root = np.sqrt(p50)
    scale = _scale(_spread(ctx), p50, selection.spread_floor)
    lo = np.asarray(selection.band_lo)[band_of] * scale
    hi = np.asarray(selection.band_hi)[band_of] * scale
    p10 = np.minimum(np.maximum(root + lo, 0.0) ** 2, p50)
    p90 = np.maximum((root + hi) ** 2, p50)
    return p10, p50, p90


MATERIAL_W = 100.0
"""Errors and loads below this mean per ISP are noise for `regime_changed`: a site that drew
(almost) nothing on its held-out days has a held-out error near 0 W, and twice nothing or
"off by half" of nothing would re-select at every round. 100 W is well below one EV."""


def regime_changed(selection: Selection, actual: Float64Array, forecast: Float64Array) -> bool:
    """Whether the days since the selection say the site changed: over at least 3 days, the
    mean absolute error per ISP is more than twice the held-out one, or the daily energy is
    off by more than half in one direction (a collapse or a doubling). Neither counts while
    the error, or both the load and the forecast, stay below `MATERIAL_W` per ISP."""
    known = ~np.isnan(actual)
    if actual.shape[0] < LEVEL_DAYS or not known.any():
        return False
    count = float(known.sum())
    err = np.where(known, forecast - actual, 0.0)
    mae = float(np.abs(err).sum() / count)
    load = float(np.where(known, actual, 0.0).sum())
    level = max(load, float(np.where(known, forecast, 0.0).sum()))
    bias = abs(float(err.sum())) / max(level, 1e-9)
    worse = mae > 2.0 * max(selection.mean_abs_error_w, MATERIAL_W)
    shifted = level / count > MATERIAL_W and bias > 0.5
    return worse or shifted
