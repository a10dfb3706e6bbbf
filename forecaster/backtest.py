"""The day-ahead backtest on session files (FORECASTING.md §3), ours against two baselines.

Protocol: site power reconstructed from the sessions with the ASAP rule on the UTC 15-minute
grid; each test day D is forecast at 00:00 local time from the previous 56 local days (all of
D-1 known), over every ISP of D (92/96/100 on DST days), forecasts clipped at 0. Baselines in
the same run: seasonal naive (same weekday last week) and the mean of the same weekday over 4
weeks, whose P10/P90 are the empirical quantiles of those 4 weeks (a point forecast has no
band; seasonal naive is scored as a degenerate distribution, P10 = P50 = P90).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np

from forecaster.calendar import SiteCalendar, history_layout
from forecaster.forecast import ForecastSettings, PowerHistory, QuantileForecast, fit_profiles
from forecaster.intraday import KnownSessions, SessionCalibration, forecast_intraday
from forecaster.metrics import Scores, score
from forecaster.sessions import (
    ASAP_POWER_KW,
    SessionRecords,
    SkipCounts,
    read_sessions,
    reconstruct_power,
    select,
)

METHODS: dict[str, ForecastSettings] = {
    "profile": ForecastSettings(),
    # Ablations: each drops one part of the default so the backtest shows what it earns.
    "profile-watts": ForecastSettings(sqrt_space=False),
    "profile-no-level": ForecastSettings(level_weight=0.0),
    "profile-no-smooth": ForecastSettings(smooth_slots=0),
    "profile-no-recency": ForecastSettings(alpha=0.0),
}
DEFAULT_METHOD = "profile"
HISTORY_DAYS = 56
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
    sessions, skipped = read_sessions(config.session_files)
    calendar = SiteCalendar.of(config.timezone, 15, config.holidays)
    isp = calendar.isp_seconds
    first_ordinal, _ = calendar.local_day_and_slot(sessions.arrival[:1].copy())
    last_ordinal, _ = calendar.local_day_and_slot(np.array([int(sessions.departure.max())]))
    data_first = date.fromordinal(int(first_ordinal[0]))
    data_last = date.fromordinal(int(last_ordinal[0]))
    grid_start = int(calendar.local_midnight(data_first).timestamp())
    grid_end = int(calendar.local_midnight(data_last + timedelta(days=1)).timestamp())
    length = (grid_end - grid_start) // isp
    power = reconstruct_power(sessions, grid_start, isp, length, config.power_kw)

    earliest = data_first + timedelta(days=HISTORY_DAYS)
    start = config.start or earliest
    end = config.end or data_last
    if start < earliest:
        raise BacktestError(
            f"--start {start} leaves less than {HISTORY_DAYS} days of history "
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
        _, slots = calendar.local_day_and_slot(targets)
        d = day.toordinal() - layout.first_ordinal
        weeks = by_day[[d - 7 * w for w in range(1, 5)]][:, slots]  # (4, H)
        naive.append(np.repeat(weeks[:1], 3, axis=0))
        mean4.append(
            np.stack(
                [
                    np.quantile(weeks, 0.1, axis=0),
                    weeks.mean(axis=0),
                    np.quantile(weeks, 0.9, axis=0),
                ]
            )
        )
        actual.append(power[positions])
        day_label.append(np.full(targets.size, day.toordinal(), dtype=np.int64))
        day += timedelta(days=1)

    y = np.concatenate(actual)
    labels = np.concatenate(day_label)

    def scored(parts: list[np.ndarray]) -> Scores:
        f = np.maximum(np.concatenate(parts, axis=1), 0.0)
        return score(y, f[0], f[1], f[2], labels)

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
    )


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
