"""Which calendar days a site treats as off days, learned from the site's own days.

A public calendar is not a site's calendar: a campus may stay open on a federal holiday, a
garage may empty on the working days squeezed between a holiday and a weekend. So the
calendar only names the days in question, in two classes:

* holidays: the calendar's dates (public holidays and the site's own closures);
* bridge days: a run of at most `BRIDGE_MAX_DAYS` Monday-to-Friday working days between two
  days off (a holiday and a weekend, or two holidays).

Each past day of a class is *observed* as off or working by its energy against the site's
ordinary days around it: off when it is below the midpoint of the median of the last
`REFERENCE_DAYS` ordinary working days and that of the last `REFERENCE_DAYS` Sundays (both
within `REFERENCE_WINDOW_DAYS` before it), and only where those two differ by at least
`CONTRAST`: a site without a quiet Sunday says nothing about its holidays. A day to forecast
is predicted from the observed days before it: the same holiday a year before (a holiday of
the calendar 358-372 days earlier) if the site saw it, else the majority of the class's
observed days; with neither, or a tie, the calendar's word (holidays off, bridge days
working). In the history, a class day is what it was observed to be (its prediction if the
observation was not decisive).

No look-ahead: a day's observation reads only that day and the days before it; a day's
prediction only the observations before it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from forecaster.calendar import Int64Array
from forecaster.candidates import DayTable

BoolArray = npt.NDArray[np.bool_]

BRIDGE_MAX_DAYS = 2
REFERENCE_DAYS = 4
REFERENCE_WINDOW_DAYS = 28
CONTRAST = 2.0
"""Ordinary working days must carry at least this multiple of the Sundays' energy before a
day can be told off from working."""
YEAR_DAYS = (358, 372)
"""The same holiday a year before: 52 weeks +- a week, so that movable feasts match too."""

HOLIDAY = 1
BRIDGE = 2


def _weekday(ordinal: int) -> int:
    return (ordinal - 1) % 7


def bridge_day(ordinal: int, holidays: frozenset[int] | set[int]) -> bool:
    """Whether `ordinal` is a working day in a run of at most `BRIDGE_MAX_DAYS` of them."""

    def working(o: int) -> bool:
        return _weekday(o) < 5 and o not in holidays

    if not working(ordinal):
        return False
    run = 1
    for step in (-1, 1):
        o = ordinal + step
        while working(o) and run <= BRIDGE_MAX_DAYS:
            run += 1
            o += step
    return run <= BRIDGE_MAX_DAYS


def _classes(ordinals: Int64Array, holidays: frozenset[int] | set[int]) -> Int64Array:
    out = np.zeros(ordinals.size, dtype=np.int64)
    for i, o in enumerate(ordinals.tolist()):
        if o in holidays:
            out[i] = HOLIDAY
        elif bridge_day(o, holidays):
            out[i] = BRIDGE
    return out


def _observed(table: DayTable, classes: Int64Array) -> npt.NDArray[np.int8]:
    """Per table day: 1 observed off, 0 observed working, -1 not a class day or undecided."""
    values = table.values
    complete: BoolArray = np.asarray(~np.isnan(values).any(axis=1), dtype=bool)
    energy = np.where(complete, np.where(np.isnan(values), 0.0, values).sum(axis=1), 0.0)
    weekday = (table.ordinals - 1) % 7
    ordinary = complete & (weekday < 5) & (classes == 0)
    sunday = complete & (weekday == 6) & (classes == 0)
    out = np.full(table.days, -1, dtype=np.int8)
    for i in np.flatnonzero((classes > 0) & complete):
        lo = max(0, i - REFERENCE_WINDOW_DAYS)
        work = energy[lo:i][ordinary[lo:i]][-REFERENCE_DAYS:]
        rest = energy[lo:i][sunday[lo:i]][-REFERENCE_DAYS:]
        if work.size < 2 or rest.size < 2:
            continue
        w, s = float(np.median(work)), float(np.median(rest))
        if w <= 0 or w < CONTRAST * s:
            continue
        out[i] = 1 if energy[i] < 0.5 * (w + s) else 0
    return out


def _predict(
    ordinal: int,
    kind: int,
    ordinals: Int64Array,
    classes: Int64Array,
    observed: npt.NDArray[np.int8],
) -> bool:
    before = (ordinals < ordinal) & (observed >= 0) & (classes == kind)
    if kind == HOLIDAY:
        age = ordinal - ordinals
        last_year = np.flatnonzero(before & (age >= YEAR_DAYS[0]) & (age <= YEAR_DAYS[1]))
        if last_year.size:
            return bool(observed[last_year[-1]] == 1)
    off = int((observed[before] == 1).sum())
    working = int((observed[before] == 0).sum())
    if off != working:
        return off > working
    return kind == HOLIDAY


def off_days(
    table: DayTable, target_ordinals: Int64Array, target_holiday: BoolArray
) -> tuple[BoolArray, BoolArray]:
    """(history (D,), targets (T,)) flags: True where the day counts as an off day (grouped
    with Sundays). `target_holiday`: the calendar's word on each target day."""
    targets = np.asarray(target_ordinals, dtype=np.int64)
    holidays = set(table.calendar_holidays)
    holidays.update(int(o) for o in table.ordinals[np.asarray(table.holiday, dtype=bool)])
    holidays.update(int(o) for o in targets[np.asarray(target_holiday, dtype=bool)])
    classes = _classes(table.ordinals, holidays)
    observed = _observed(table, classes)
    history = np.zeros(table.days, dtype=bool)
    for i in np.flatnonzero(classes > 0):
        if observed[i] >= 0:
            history[i] = observed[i] == 1
        else:
            history[i] = _predict(
                int(table.ordinals[i]), int(classes[i]), table.ordinals, classes, observed
            )
    target_classes = _classes(targets, holidays)
    ahead = np.zeros(targets.size, dtype=bool)
    for t in np.flatnonzero(target_classes > 0):
        ahead[t] = _predict(
            int(targets[t]), int(target_classes[t]), table.ordinals, classes, observed
        )
    return history, ahead
