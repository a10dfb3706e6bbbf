"""The forecast rounds an agent runs in a worker process (`forecaster.worker`).

Pure functions of arrays and plain values that import nothing outside `forecaster`: the worker
unpickles them by name, so what it loads is numpy, numba and the kernels, and none of the
agent's own modules (which would double its start-up time and memory for nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from forecaster.calendar import SiteCalendar
from forecaster.forecast import (
    EmptyHistoryError,
    ForecastSettings,
    PowerHistory,
    QuantileForecast,
    fit_profiles,
)
from forecaster.intraday import KnownSessions, SessionCalibration, forecast_intraday
from forecaster.selection import (
    DayTable,
    Selection,
    SelectionError,
    day_table,
    forecast_days,
    regime_changed,
    select,
)

BandLists = tuple[list[float], list[float], list[float], int]
"""P10, P50, P90 in W at the targets, and the days of history behind them."""


def reselect_reason(selection: Selection | None, table: DayTable) -> str | None:
    """Why the structure must be chosen again now, or None: none yet, the ISP length
    changed, the days since it was chosen show a regime change in its residuals (an agent
    that was down for days), or a whole day newer than those it was chosen on is in.

    Every day, because the choice ranks structures that differ by a point or less: a day's
    new evidence changes it, and on the backtests choosing daily scored lower than weekly on
    every site (docs/forecasting.md). It costs a fraction of a second per congestion point."""
    if selection is None:
        return "first"
    bands = math.ceil(table.values.shape[1] / selection.slots_per_band)
    if bands != len(selection.band_lo):
        return "ISP length changed"
    since = table.ordinals >= selection.origin_ordinal
    if since.sum() >= 3:
        ordinals = table.ordinals[since][-3:]
        holiday = table.holiday[since][-3:]
        p50 = forecast_days(selection, table, ordinals, holiday)[1]
        if regime_changed(selection, table.values[since][-3:], p50):
            return "regime change"
    if since.any():
        return "daily"
    return None


@dataclass(frozen=True)
class DayAhead:
    """A day-ahead round: bands of the series that have (or now got) a structure, the
    structures chosen in this round with the reason, and why the others have none yet."""

    bands: dict[str, BandLists]
    chosen: dict[str, tuple[Selection, str]]
    waiting: dict[str, str]


def day_ahead(
    names: list[str],
    history: PowerHistory,
    calendar: SiteCalendar,
    until: datetime,
    targets: list[datetime],
    stored: dict[str, Selection],
    history_days: int,
) -> DayAhead:
    """Day-ahead bands per named series (a row of `history` each) from its stored structure,
    chosen again (`forecaster.selection`) when `reselect_reason` says so."""
    until_epoch = int(until.timestamp())
    epochs = np.array([int(t.timestamp()) for t in targets], dtype=np.int64)
    ordinal, slot = calendar.local_day_and_slot(epochs)
    days = np.unique(ordinal)
    holiday = np.array([date.fromordinal(int(o)) in calendar.holidays for o in days])
    row = np.searchsorted(days, ordinal)
    bands: dict[str, BandLists] = {}
    chosen: dict[str, tuple[Selection, str]] = {}
    waiting: dict[str, str] = {}
    for s, name in enumerate(names):
        table = day_table(history.values[s], history.start_epoch, calendar, until_epoch)
        selection = stored.get(name)
        reason = reselect_reason(selection, table)
        if reason is not None:
            try:
                selection = select(table)
                chosen[name] = (selection, reason)
            except SelectionError as exc:
                waiting[name] = str(exc)
        if selection is None:
            continue
        p10, p50, p90 = forecast_days(selection, table, days, holiday)
        bands[name] = (
            [float(v) for v in p10[row, slot]],
            [float(v) for v in p50[row, slot]],
            [float(v) for v in p90[row, slot]],
            min(int((~np.isnan(table.values).all(axis=1)).sum()), history_days),
        )
    return DayAhead(bands, chosen, waiting)


def profile_forecast(
    history: PowerHistory,
    origin: datetime | None,
    targets: list[datetime],
    calendar: SiteCalendar,
    known: KnownSessions | None,
    samples: SessionCalibration | None,
    settings: ForecastSettings,
) -> QuantileForecast | list[int]:
    """The day-type profile forecast, intraday from `origin` with the `known` sessions when
    there is a calibration. Series without any history come back as their indices instead
    (EmptyHistoryError's own pickling would lose them)."""
    try:
        if origin is not None and known is not None and samples is not None:
            return forecast_intraday(history, origin, targets, calendar, known, samples, settings)
        return fit_profiles(history, calendar, settings).forecast(targets)
    except EmptyHistoryError as exc:
        return exc.series
