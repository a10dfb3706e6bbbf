"""Day-ahead load forecast per ISP for many series at once, with P10/P50/P90.

Input is what the agent has: power in W on a regular UTC ISP grid, one row per series (charger
group, congestion point, site), NaN for ISPs without data. Output is P10/P50/P90 in W at the
requested UTC ISP starts (the 92/96/100 ISPs of a market day, the rest of today, a week),
never NaN and never negative. The method is in `forecaster.kernels.profile`; why it was
chosen over the alternatives is in docs/forecasting.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np
import numpy.typing as npt

from forecaster.calendar import (
    CalendarError,
    Float64Array,
    Int64Array,
    SiteCalendar,
    epoch_seconds,
    history_layout,
    to_utc,
)

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
PARALLEL_MIN_SERIES = 64
"""From this many series per call the threaded kernel pays for its thread start-up; a single
site stays on the serial one (measured in `python -m bench forecast`)."""
# Standard-normal scores of QUANTILE_LEVELS: the band is normal in square-root space.
_Z = np.array([-1.2815515655446004, 0.0, 1.2815515655446004])


class ForecastInputError(ValueError):
    """History or targets the forecaster cannot use; the message names the offending value."""


class EmptyHistoryError(ForecastInputError):
    """Some series have no usable ISP at all, so there is nothing to forecast from."""

    def __init__(self, series: Sequence[int]) -> None:
        self.series = list(series)
        shown = ", ".join(str(s) for s in self.series[:10])
        more = f" and {len(self.series) - 10} more" if len(self.series) > 10 else ""
        super().__init__(f"empty history (no data in any ISP) for series {shown}{more}")


@dataclass(frozen=True)
class ForecastSettings:
    """Method settings. The defaults are generic (not fitted to one site); docs/forecasting.md
    shows what each one earns on the Caltech backtest."""

    alpha: float = 0.1
    """Recency weight per same-type day: the newest counts 1, each older (1 - alpha) as much."""
    smooth_slots: int = 1
    """Radius of the moving mean over neighbouring ISPs before the profile mean."""
    min_type_days: int = 3
    """Fewer days of a type than this pools it with others (new sites)."""
    level_days: int = 3
    level_weight: float = 0.5
    level_clip: float = 2.0
    history_days: int = 56
    """Only this many local days before the first target are used (8 weeks)."""
    sqrt_space: bool = True
    """Moments of sqrt(power) (default) or of power in W (the plain EW profile)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ForecastInputError(f"alpha {self.alpha} must lie in [0, 1)")
        if self.smooth_slots < 0:
            raise ForecastInputError(f"smooth_slots {self.smooth_slots} must be >= 0")
        if self.min_type_days < 1 or self.level_days < 1 or self.history_days < 1:
            raise ForecastInputError("min_type_days, level_days and history_days must be >= 1")
        if not 0.0 <= self.level_weight <= 1.0:
            raise ForecastInputError(f"level_weight {self.level_weight} must lie in [0, 1]")
        if self.level_clip < 1.0:
            raise ForecastInputError(f"level_clip {self.level_clip} must be >= 1")


@dataclass(frozen=True)
class PowerHistory:
    """Power in W of S series on a regular UTC ISP grid: ``values[s, t]`` is the mean power of
    series s in the ISP starting at ``start + t * isp_minutes``; NaN where unknown."""

    start: datetime
    isp_minutes: int
    values: Float64Array

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ForecastInputError(f"history start {self.start!r} must be UTC-aware")
        values = np.ascontiguousarray(self.values, dtype=np.float64)
        if values.ndim != 2:
            raise ForecastInputError(f"history values must be (series, ISPs), got {values.shape}")
        bad = np.isinf(values) | (values < 0)
        if bad.any():
            s, t = (int(i) for i in np.argwhere(bad)[0])
            raise ForecastInputError(
                f"history value {float(values[s, t])} W at series {s}, ISP {t} "
                f"({to_utc(self.start_epoch + t * self.isp_minutes * 60).isoformat()}) "
                "is not a power draw (must be finite and >= 0, NaN for unknown)"
            )
        object.__setattr__(self, "values", values)

    @property
    def start_epoch(self) -> int:
        return int(self.start.timestamp())

    @property
    def series(self) -> int:
        return int(self.values.shape[0])

    @property
    def length(self) -> int:
        return int(self.values.shape[1])

    @property
    def end_epoch(self) -> int:
        """Epoch seconds just after the last ISP."""
        return self.start_epoch + self.length * self.isp_minutes * 60


@dataclass(frozen=True)
class QuantileForecast:
    """P10/P50/P90 in W, each (S, H), at the UTC ISP starts ``targets`` (H,) epoch seconds."""

    targets: Int64Array
    p10: Float64Array
    p50: Float64Array
    p90: Float64Array
    days_pooled: npt.NDArray[np.int64]
    """(S, 3) days behind each day type's profile (weekday, Saturday, Sunday/holiday)."""


@dataclass(frozen=True)
class LoadProfiles:
    """Fitted profiles: reusable for several target sets from one history."""

    calendar: SiteCalendar
    profile: Float64Array  # (S, 3, 3, P)
    level: Float64Array  # (S, 3)
    days_pooled: npt.NDArray[np.int64]  # (S, 3)

    def forecast(
        self, targets: Sequence[datetime] | npt.NDArray[np.datetime64] | Int64Array
    ) -> QuantileForecast:
        from forecaster.kernels.profile import assemble_forecast, assemble_forecast_parallel

        epoch = _target_epochs(targets, self.calendar)
        ordinal, slot = self.calendar.local_day_and_slot(epoch)
        day_type = self.calendar.day_types(ordinal)
        many = self.profile.shape[0] >= PARALLEL_MIN_SERIES
        assemble = assemble_forecast_parallel if many else assemble_forecast
        out = assemble(self.profile, self.level, day_type, slot)
        return QuantileForecast(
            targets=epoch, p10=out[0], p50=out[1], p90=out[2], days_pooled=self.days_pooled
        )


def _target_epochs(
    targets: Sequence[datetime] | npt.NDArray[np.datetime64] | Int64Array, calendar: SiteCalendar
) -> Int64Array:
    if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.integer):
        epoch = np.ascontiguousarray(targets, dtype=np.int64)
    else:
        try:
            epoch = epoch_seconds(cast("Sequence[datetime] | npt.NDArray[np.datetime64]", targets))
        except CalendarError as exc:
            raise ForecastInputError(str(exc)) from exc
    if epoch.ndim != 1 or epoch.size == 0:
        raise ForecastInputError("targets must be a non-empty list of ISP start instants")
    off = epoch % calendar.isp_seconds
    if off.any():
        bad = int(epoch[np.flatnonzero(off)[0]])
        raise ForecastInputError(
            f"target {to_utc(bad).isoformat()} is not an ISP start "
            f"({calendar.isp_minutes}-minute boundary)"
        )
    return epoch


def fit_profiles(
    history: PowerHistory,
    calendar: SiteCalendar,
    settings: ForecastSettings | None = None,
    *,
    until_epoch: int | None = None,
) -> LoadProfiles:
    """Fit the day-type profiles from the last ``history_days`` local days before `until_epoch`
    (default: the end of the history). Raises EmptyHistoryError naming series without data."""
    from forecaster.kernels.profile import sqrt_profiles, sqrt_profiles_parallel

    settings = settings or ForecastSettings()
    if history.isp_minutes != calendar.isp_minutes:
        raise ForecastInputError(
            f"history ISP {history.isp_minutes} min differs from the calendar's "
            f"{calendar.isp_minutes} min"
        )
    if history.length == 0:
        raise EmptyHistoryError(list(range(history.series)))
    isp_s = calendar.isp_seconds
    end = history.end_epoch if until_epoch is None else min(until_epoch, history.end_epoch)
    # The window: whole local days back from `end`, so every day type keeps its own days.
    first_wanted = end - settings.history_days * 86_400 - 2 * 3_600
    first_index = max(0, (first_wanted - history.start_epoch) // isp_s)
    last_index = (end - history.start_epoch) // isp_s
    if last_index <= first_index:
        raise EmptyHistoryError(list(range(history.series)))
    start = history.start_epoch + first_index * isp_s
    layout = history_layout(calendar, start, last_index - first_index)
    # Keep exactly `history_days` whole days (plus today's part when `end` is not a local
    # midnight); the 2-hour margin above only makes sure DST shifts cannot cut a day short.
    _, end_slot = calendar.local_day_and_slot(np.array([end], dtype=np.int64))
    keep_days = min(layout.days, settings.history_days + (1 if end_slot[0] else 0))
    # Positions into the whole history: the kernel reads the caller's array in place.
    window_index = layout.index[-keep_days:]
    index = np.ascontiguousarray(np.where(window_index >= 0, window_index + first_index, -1))
    day_type = np.ascontiguousarray(layout.day_type[-keep_days:])
    whole_day = np.ascontiguousarray(layout.whole_day[-keep_days:])
    kernel = sqrt_profiles_parallel if history.series >= PARALLEL_MIN_SERIES else sqrt_profiles
    profile, level, pooled = kernel(
        history.values,
        index,
        day_type,
        whole_day,
        settings.alpha,
        _Z,
        settings.smooth_slots,
        settings.min_type_days,
        settings.level_days,
        settings.level_weight,
        settings.level_clip,
        settings.sqrt_space,
    )
    empty = np.flatnonzero(pooled.max(axis=1) == 0)
    if empty.size:
        raise EmptyHistoryError([int(s) for s in empty])
    return LoadProfiles(calendar, profile, level, pooled)


def forecast_load(
    history: PowerHistory,
    targets: Sequence[datetime] | npt.NDArray[np.datetime64] | Int64Array,
    calendar: SiteCalendar,
    settings: ForecastSettings | None = None,
) -> QuantileForecast:
    """P10/P50/P90 per series at `targets` from `history` (all of it is taken as known)."""
    return fit_profiles(history, calendar, settings).forecast(targets)
