"""Off days learned from the site's own days: the calendar names the days in question
(holidays, bridge days), the site's history says whether it keeps them."""

from __future__ import annotations

from datetime import date

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forecaster.candidates import DayTable
from forecaster.offdays import bridge_day, off_days

SLOTS = 24
FIRST = date(2023, 1, 2).toordinal()  # a Monday


def site(days: int, closed: set[int], seed: int = 0) -> DayTable:
    """A workplace: busy Monday to Friday, nearly empty at weekends and on `closed` days."""
    rng = np.random.default_rng(seed)
    ordinals = FIRST + np.arange(days, dtype=np.int64)
    weekday = (ordinals - 1) % 7
    busy = (weekday < 5) & ~np.isin(ordinals, list(closed))
    shape = np.exp(-0.5 * ((np.arange(SLOTS) - 10) / 3.0) ** 2)
    rate = np.where(busy, 6.0, 0.3)
    values = rng.poisson(rate[:, None] * shape[None, :]) * 7000.0
    return DayTable(values.astype(np.float64), ordinals, np.zeros(days, dtype=bool))


def with_calendar(table: DayTable, holidays: set[int]) -> DayTable:
    flags = np.isin(table.ordinals, list(holidays))
    return DayTable(table.values, table.ordinals, flags, frozenset(holidays))


def test_a_bridge_day_is_a_short_run_of_working_days_between_days_off() -> None:
    thursday = date(2019, 7, 4).toordinal()
    assert bridge_day(thursday + 1, {thursday})  # Friday after a Thursday holiday
    assert not bridge_day(thursday - 1, {thursday})  # Mon-Wed: a run of three
    christmas = date(2019, 12, 25).toordinal()  # a Wednesday; New Year's Day too
    holidays = {christmas, date(2020, 1, 1).toordinal()}
    for day in (23, 24, 26, 27, 30, 31):
        assert bridge_day(date(2019, 12, day).toordinal(), holidays)
    assert not bridge_day(date(2019, 12, 20).toordinal(), holidays)
    assert not bridge_day(christmas, holidays)


def test_a_holiday_the_site_worked_a_year_ago_is_forecast_as_a_working_day() -> None:
    worked = FIRST + 7 * 8  # a Monday the site worked
    kept = FIRST + 7 * 12 + 2  # a Wednesday it closed
    worked_again, kept_again = worked + 364, kept + 364
    holidays = {worked, kept, worked_again, kept_again}
    table = with_calendar(site(worked_again, {kept}), holidays)
    history, ahead = off_days(table, np.array([worked_again, kept_again]), np.array([True, True]))
    assert not history[worked - FIRST]
    assert history[kept - FIRST]
    # The same holiday a year before decides, over the majority of the other holidays.
    assert list(ahead) == [False, True]


def test_bridge_days_follow_what_the_site_did_on_the_earlier_ones() -> None:
    holiday = FIRST + 7 * 6 + 3  # a Thursday
    bridge = holiday + 1
    later = FIRST + 7 * 20 + 3
    holidays = {holiday, later}
    for closed, expected in (({holiday, bridge}, True), ({holiday}, False)):
        table = with_calendar(site(later, closed), holidays)
        _, ahead = off_days(table, np.array([later, later + 1]), np.array([True, False]))
        assert list(ahead) == [True, expected]


def test_without_evidence_the_calendar_decides() -> None:
    target = FIRST + 7 * 6 + 3  # a Thursday holiday, and the Friday after it
    table = site(target - FIRST, set())
    _, ahead = off_days(table, np.array([target, target + 1]), np.array([True, False]))
    assert list(ahead) == [True, False]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), cut=st.integers(20, 60))
def test_a_day_is_never_judged_on_what_came_after_it(seed: int, cut: int) -> None:
    rng = np.random.default_rng(seed)
    holidays = {int(o) for o in FIRST + np.flatnonzero(rng.random(80) < 0.08)}
    table = with_calendar(site(80, set(rng.choice(sorted(holidays) or [0], 2))), holidays)
    origin = int(table.ordinals[cut])
    # One target: a second one would read the first as its own history, as candidates do.
    targets = np.array([origin])
    flags = np.isin(targets, list(holidays))
    changed = table.values.copy()
    changed[cut:] = rng.uniform(0, 50_000, changed[cut:].shape)
    other = DayTable(changed, table.ordinals, table.holiday, table.calendar_holidays)
    a = off_days(table.before(origin), targets, flags)
    b = off_days(other, targets, flags)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0][:cut])


def test_the_forecast_of_a_holiday_follows_what_the_site_did_on_its_holidays() -> None:
    from forecaster.selection import forecast_days, select

    # Mondays 6 and 9 weeks in are holidays; the target is a Monday holiday 12 weeks in.
    holidays = {FIRST + 7 * 6, FIRST + 7 * 9, FIRST + 7 * 12}
    target = np.array([FIRST + 7 * 12])
    for closed, off in ((set(), False), (holidays, True)):
        values = site(7 * 12, closed, seed=3)
        table = with_calendar(values, holidays)
        plain = with_calendar(values, holidays - {int(target[0])})
        chosen = select(table)
        as_holiday = forecast_days(chosen, table, target, np.array([True]), kernel=False)[1]
        as_monday = forecast_days(chosen, plain, target, np.array([False]), kernel=False)[1]
        assert np.array_equal(as_holiday, as_monday) is not off
        if off:
            assert as_holiday.sum() < 0.5 * as_monday.sum()
