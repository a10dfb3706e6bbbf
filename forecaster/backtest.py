"""The day-ahead backtest on session files or a synthetic site, ours against two baselines.

Protocol: site power reconstructed from the sessions with the ASAP rule on the UTC 15-minute
grid; each test day D is forecast at 00:00 local time from the days before it (all of D-1
known), over every ISP of D (92/96/100 on DST days), forecasts clipped at 0. Ours (method
`selected`) is the structure chosen from the site's own days before D by
`forecaster.selection`, chosen at the first test day, again every 7 days and after a regime
change; `profile` and its ablations are the fixed day-type profile over the previous 56
days. Baselines in the same run: seasonal naive (same weekday last week) and the mean of the
same weekday over 4 weeks, whose P10/P90 are the empirical quantiles of those 4 weeks (a
point forecast has no band; seasonal naive is scored as a degenerate distribution,
P10 = P50 = P90).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np

from forecaster.calendar import SiteCalendar, history_layout, public_holidays
from forecaster.forecast import ForecastSettings, PowerHistory, QuantileForecast, fit_profiles
from forecaster.intraday import KnownSessions, SessionCalibration, forecast_intraday
from forecaster.metrics import Scores, score
from forecaster.rounds import reselect_reason
from forecaster.selection import (
    DayTable,
    Selection,
    SelectionError,
    day_table,
    forecast_days,
    zero_probability,
)
from forecaster.selection import select as select_structure
from forecaster.sessions import (
    ASAP_POWER_KW,
    SessionRecords,
    SkipCounts,
    read_sessions,
    reconstruct_power,
    select,
)
from forecaster.synthetic import generate

SELECTED = "selected"
"""Per-site structure selection (`forecaster.selection`), re-selected every day as the agent
does (`forecaster.rounds`); the other methods are the fixed day-type profile and its
ablations."""
METHODS: dict[str, ForecastSettings] = {
    SELECTED: ForecastSettings(),
    "profile": ForecastSettings(),
    # Ablations: each drops one part of the default so the backtest shows what it earns.
    "profile-watts": ForecastSettings(sqrt_space=False),
    "profile-no-level": ForecastSettings(level_weight=0.0),
    "profile-no-smooth": ForecastSettings(smooth_slots=0),
    "profile-no-recency": ForecastSettings(alpha=0.0),
}
DEFAULT_METHOD = SELECTED
HISTORY_DAYS = 56
MIN_HISTORY_DAYS = 28
"""The earliest test day: four weeks of data, what the 4-week baseline needs."""
DEFAULT_TIMEZONE = "America/Los_Angeles"
"""ACN sites are in California; the files carry offsets but not the zone, so DST days need it."""


class BacktestError(ValueError):
    """A backtest that cannot run as asked (dates outside the data, unknown method)."""


@dataclass(frozen=True)
class BacktestConfig:
    session_files: Sequence[Path]
    start: date | None = None
    end: date | None = None
    method: str = DEFAULT_METHOD
    power_kw: float = ASAP_POWER_KW
    timezone: str = DEFAULT_TIMEZONE
    holidays: frozenset[date] = field(default_factory=frozenset)
    origin: time | None = None
    """None: day-ahead at 00:00. A local time: intraday from then to the end of each day,
    with the sessions plugged in at that moment."""
    holidays_country: str | None = None
    holidays_subdivision: str | None = None
    """Public holidays from the `holidays` package, added to `holidays`."""
    synthetic: str | None = None
    """A `forecaster.synthetic` site instead of session files."""
    synthetic_first: date = date(2024, 1, 1)
    synthetic_days: int = 140
    seed: int = 0


@dataclass(frozen=True)
class BacktestResult:
    method: str
    origin: str
    sessions: int
    skipped: SkipCounts
    first_day: date
    last_day: date
    test_days: int
    isps: int
    mean_load_kw: float
    scores: dict[str, Scores]
    selections: list[Selection] = field(default_factory=list)
    """Every selection the run made, oldest first (method `selected` only)."""
    regime_changes: int = 0

    def figures(self) -> Iterator[tuple[str, float | int | str]]:
        """``name: value`` figures, method by method, in the order the CLI prints them."""
        yield "method", self.method
        yield "origin", self.origin
        yield "reconstruction", "asap"
        yield "sessions", self.sessions
        for reason, count in sorted(self.skipped.counts.items()):
            yield f"skipped_{reason}", count
        yield "first_test_day", self.first_day.isoformat()
        yield "last_test_day", self.last_day.isoformat()
        yield "test_days", self.test_days
        yield "test_isps", self.isps
        yield "mean_load_kw", self.mean_load_kw
        for name, scores in self.scores.items():
            for f in fields(scores):
                yield f"{name}_{f.name}", float(getattr(scores, f.name))
        if self.selections:
            yield "selections", len(self.selections)
            yield "reselections_after_regime_change", self.regime_changes
            chosen = Counter(s.structure for s in self.selections)
            structure, times = chosen.most_common(1)[0]
            yield "most_chosen_structure", f"{structure} ({times} of {len(self.selections)})"
            last = self.selections[-1]
            yield "last_selection_origin", date.fromordinal(last.origin_ordinal).isoformat()
            yield "last_selection_structure", last.structure
            yield "last_selection_heldout_days", last.eval_days
            yield "last_selection_heldout_nmae_pct", last.heldout_nmae_pct
            for name, value in last.baseline_nmae_pct.items():
                yield f"last_selection_heldout_{name}_nmae_pct", value
            wins = sum(
                s.heldout_nmae_pct <= min(s.baseline_nmae_pct.values()) for s in self.selections
            )
            yield (
                "selections_not_worse_than_best_baseline_heldout",
                f"{wins} of {len(self.selections)}",
            )


def format_figure(name: str, value: float | int | str) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{name}: {text}"


def parse_holidays(items: Iterable[str], source: str = "--holidays") -> frozenset[date]:
    """ISO dates, comma or whitespace separated; '#' starts a comment (for files)."""
    days: set[date] = set()
    for number, raw in enumerate(items, start=1):
        text = raw.split("#", 1)[0]
        for token in text.replace(",", " ").split():
            try:
                days.add(date.fromisoformat(token))
            except ValueError:
                raise BacktestError(
                    f"{source}:{number}: holiday {token!r} is not an ISO date (YYYY-MM-DD)"
                ) from None
    return frozenset(days)


def _local_day_matrix(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(D, P) mean per local day and slot, slots without an ISP interpolated within the day."""
    first = np.where(index[:, :, 0] >= 0, values[np.maximum(index[:, :, 0], 0)], np.nan)
    second = np.where(index[:, :, 1] >= 0, values[np.maximum(index[:, :, 1], 0)], np.nan)
    day = np.where(np.isnan(second), first, (first + second) / 2.0)
    slots = np.arange(day.shape[1])
    for d in range(day.shape[0]):
        missing = np.isnan(day[d])
        if missing.any() and not missing.all():
            day[d, missing] = np.interp(slots[missing], slots[~missing], day[d, ~missing])
    return day


def run_backtest(config: BacktestConfig) -> BacktestResult:
    if config.method not in METHODS:
        raise BacktestError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    settings = replace(METHODS[config.method], history_days=HISTORY_DAYS)
    if config.synthetic is not None:
        first_year = config.synthetic_first.year
        last_year = (config.synthetic_first + timedelta(days=config.synthetic_days)).year
    else:
        sessions, skipped = read_sessions(config.session_files)
        first_year = datetime.fromtimestamp(int(sessions.arrival.min()), UTC).year
        last_year = datetime.fromtimestamp(int(sessions.departure.max()), UTC).year
    holidays = set(config.holidays)
    if config.holidays_country:
        holidays |= public_holidays(
            config.holidays_country,
            config.holidays_subdivision,
            range(first_year - 1, last_year + 2),
        )
    calendar = SiteCalendar.of(config.timezone, 15, holidays)
    if config.synthetic is not None:
        try:
            sessions = generate(
                config.synthetic,
                config.synthetic_first,
                config.synthetic_days,
                calendar,
                seed=config.seed,
                power_kw=config.power_kw,
            )
        except ValueError as exc:
            raise BacktestError(str(exc)) from None
        skipped = SkipCounts()
    isp = calendar.isp_seconds
    first_ordinal, _ = calendar.local_day_and_slot(sessions.arrival[:1].copy())
    last_ordinal, _ = calendar.local_day_and_slot(np.array([int(sessions.departure.max())]))
    data_first = date.fromordinal(int(first_ordinal[0]))
    data_last = date.fromordinal(int(last_ordinal[0]))
    if config.synthetic is not None:
        # Sessions of the last day may run past it; the site's period ends with that day.
        data_last = min(
            data_last, config.synthetic_first + timedelta(days=config.synthetic_days - 1)
        )
    grid_start = int(calendar.local_midnight(data_first).timestamp())
    grid_end = int(calendar.local_midnight(data_last + timedelta(days=1)).timestamp())
    length = (grid_end - grid_start) // isp
    power = reconstruct_power(sessions, grid_start, isp, length, config.power_kw)

    earliest = data_first + timedelta(days=MIN_HISTORY_DAYS)
    start = config.start or earliest
    end = config.end or data_last
    if start < earliest:
        raise BacktestError(
            f"--start {start} leaves less than {MIN_HISTORY_DAYS} days of history "
            f"(the sessions begin on {data_first}; earliest start {earliest})"
        )
    if end > data_last or end < start:
        raise BacktestError(
            f"--end {end} must lie between --start {start} and the last data day {data_last}"
        )

    layout = history_layout(calendar, grid_start, length)
    by_day = _local_day_matrix(power, layout.index)
    history = PowerHistory(
        calendar.local_midnight(data_first), calendar.isp_minutes, power[np.newaxis, :]
    )
    actual: list[np.ndarray] = []
    day_label: list[np.ndarray] = []
    ours: list[np.ndarray] = []
    naive: list[np.ndarray] = []
    mean4: list[np.ndarray] = []
    raw_input: list[np.ndarray] = []
    profile_only: list[np.ndarray] = []
    power_w = config.power_kw * 1000.0
    # Intraday keeps the day-type profile under the sessions (selection is day-ahead).
    selected = config.method == SELECTED and config.origin is None
    table = day_table(power, grid_start, calendar, grid_end) if selected else None
    picker = _Reselection(table) if table is not None else None
    day = start
    while day <= end:
        targets = calendar.day_isps(day)
        if config.origin is not None:
            local = datetime.combine(day, config.origin, tzinfo=calendar.zone)
            origin = int(local.timestamp()) // isp * isp
            targets = targets[targets >= origin]
        else:
            origin = int(targets[0])
        positions = (targets - grid_start) // isp
        _, slots = calendar.local_day_and_slot(targets)
        if picker is not None and config.origin is None:
            ours.append(picker.forecast(day)[:, slots])
            day_label.append(np.full(targets.size, day.toordinal(), dtype=np.int64))
            actual.append(power[positions])
            _baselines(by_day, day.toordinal() - layout.first_ordinal, slots, naive, mean4)
            day += timedelta(days=1)
            continue
        profiles = fit_profiles(history, calendar, settings, until_epoch=origin)
        forecast = profiles.forecast(targets)
        if config.origin is None:
            ours.append(np.stack([forecast.p10[0], forecast.p50[0], forecast.p90[0]]))
        else:
            profile_only.append(np.stack([forecast.p10[0], forecast.p50[0], forecast.p90[0]]))
            for calibrated, bucket in ((True, ours), (False, raw_input)):
                f = _intraday(
                    history, sessions, calendar, settings, origin, targets, power_w, calibrated
                )
                bucket.append(np.stack([f.p10[0], f.p50[0], f.p90[0]]))
        _baselines(by_day, day.toordinal() - layout.first_ordinal, slots, naive, mean4)
        actual.append(power[positions])
        day_label.append(np.full(targets.size, day.toordinal(), dtype=np.int64))
        day += timedelta(days=1)

    y = np.concatenate(actual)
    labels = np.concatenate(day_label)

    def scored(parts: list[np.ndarray]) -> Scores:
        # A fourth row, where a method gives one, is its probability of zero load.
        f = np.maximum(np.concatenate(parts, axis=1), 0.0)
        return score(y, f[0], f[1], f[2], labels, f[3] if f.shape[0] > 3 else None)

    scores = {"ours": scored(ours)}
    if config.origin is not None:
        scores["ours_raw_driver_input"] = scored(raw_input)
        scores["ours_without_sessions"] = scored(profile_only)
    scores["seasonal_naive"] = scored(naive)
    scores["weekday_mean_4w"] = scored(mean4)
    return BacktestResult(
        method=config.method,
        origin="day-ahead 00:00" if config.origin is None else config.origin.isoformat("minutes"),
        sessions=sessions.count,
        skipped=skipped,
        first_day=start,
        last_day=end,
        test_days=(end - start).days + 1,
        isps=int(y.size),
        mean_load_kw=float(y.mean() / 1000.0),
        scores=scores,
        selections=picker.selections if picker is not None else [],
        regime_changes=picker.regime_changes if picker is not None else 0,
    )


def _baselines(
    by_day: np.ndarray, d: int, slots: np.ndarray, naive: list[np.ndarray], mean4: list[np.ndarray]
) -> None:
    """P10, P50, P90 and the probability of zero load of both baselines: seasonal naive a
    point forecast (certain of its value), the 4-week mean the empirical distribution of
    its 4 days."""
    weeks = by_day[[d - 7 * w for w in range(1, 5)]][:, slots]  # (4, H)
    naive.append(np.concatenate([np.repeat(weeks[:1], 3, axis=0), weeks[:1] == 0]))
    mean4.append(
        np.stack(
            [
                np.quantile(weeks, 0.1, axis=0),
                weeks.mean(axis=0),
                np.quantile(weeks, 0.9, axis=0),
                (weeks == 0).mean(axis=0),
            ]
        )
    )


class _Reselection:
    """The agent's schedule in a backtest (`forecaster.rounds.reselect_reason`): select at
    the first test day and again each day after. Each selection sees only the days before
    its test day."""

    def __init__(self, table: DayTable) -> None:
        self.table = table
        self.selections: list[Selection] = []
        self.regime_changes = 0

    def forecast(self, day: date) -> np.ndarray:
        """(4, P) P10/P50/P90 and the probability of zero load for local `day`, from the days
        before it only."""
        ordinal = day.toordinal()
        known = self.table.before(ordinal)
        current = self.selections[-1] if self.selections else None
        reason = reselect_reason(current, known)
        if reason is not None:
            try:
                current = select_structure(known)
            except SelectionError as exc:
                raise BacktestError(f"selection for {day}: {exc}") from exc
            self.selections.append(current)
            self.regime_changes += reason == "regime change"
        assert current is not None
        i = ordinal - int(self.table.ordinals[0])
        p10, p50, p90 = forecast_days(
            current, known, np.array([ordinal]), self.table.holiday[i : i + 1]
        )
        p_zero = zero_probability(known, np.array([ordinal]), self.table.holiday[i : i + 1])
        return np.stack([p10[0], p50[0], p90[0], p_zero[0]])


def _intraday(
    history: PowerHistory,
    sessions: SessionRecords,
    calendar: SiteCalendar,
    settings: ForecastSettings,
    origin: int,
    targets: np.ndarray,
    power_w: float,
    calibrated: bool,
) -> QuantileForecast:
    """Intraday forecast with the sessions plugged in at `origin`, calibrated on the sessions
    that finished in the history window before it."""
    window = origin - HISTORY_DAYS * 86_400
    done = select(sessions, (sessions.departure <= origin) & (sessions.arrival >= window))
    calibration = SessionCalibration.fit(
        calendar,
        done.arrival,
        done.departure,
        done.delivered_wh,
        done.requested_wh,
        done.stated_departure,
        power_w,
        raw_driver_input=not calibrated,
    )
    live = select(sessions, (sessions.arrival < origin) & (sessions.departure > origin))
    # Energy delivered so far under the same ASAP rule as the truth.
    stay = (live.departure - live.arrival).astype(np.float64)
    rate = np.maximum(power_w, live.delivered_wh * 3600.0 / stay)
    so_far = np.minimum(live.delivered_wh, rate * (origin - live.arrival) / 3600.0)
    needed = np.maximum(live.requested_wh - so_far, 0.0)  # NaN stays NaN: no request
    known = KnownSessions(
        series=np.zeros(live.count, dtype=np.int64),
        arrival=live.arrival,
        expected_departure=live.stated_departure,
        needed_wh=needed,
        delivered_wh=so_far,
        pmax_w=rate,
        # Observable at the origin: whether the car still draws power.
        power_now_w=np.where(so_far < live.delivered_wh, rate, 0.0),
    )
    return forecast_intraday(
        history,
        datetime.fromtimestamp(origin, tz=UTC),
        targets,
        calendar,
        known,
        calibration,
        settings,
    )
