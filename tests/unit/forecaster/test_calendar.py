"""Local-time seasonality on a UTC grid: DST days, repeated hours, holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest

from forecaster.calendar import (
    SATURDAY,
    SUNDAY_OR_HOLIDAY,
    WEEKDAY,
    CalendarError,
    SiteCalendar,
    epoch_seconds,
    history_layout,
)

AMS = SiteCalendar.of("Europe/Amsterdam")


@pytest.mark.parametrize(
    ("day", "isps"),
    [(date(2024, 3, 31), 92), (date(2024, 6, 1), 96), (date(2024, 10, 27), 100)],
)
def test_a_local_day_has_92_96_or_100_isps(day: date, isps: int) -> None:
    starts = AMS.day_isps(day)
    assert starts.size == isps
    assert datetime.fromtimestamp(int(starts[0]), UTC).astimezone(AMS.zone).hour == 0
    assert np.all(np.diff(starts) == 900)


def test_spring_forward_skips_the_02_00_slots() -> None:
    _, slot = AMS.local_day_and_slot(AMS.day_isps(date(2024, 3, 31)))
    assert 8 not in slot
    assert 11 not in slot
    assert slot[8] == 12


def test_fall_back_repeats_the_02_00_slots_in_the_layout() -> None:
    starts = AMS.day_isps(date(2024, 10, 27))
    layout = history_layout(AMS, int(starts[0]), starts.size)
    assert layout.days == 1
    assert layout.index[0, 8, 0] == 8
    assert layout.index[0, 8, 1] == 12
    assert (layout.index[0, :, 1] >= 0).sum() == 4
    assert layout.whole_day[0]


def test_a_cut_first_or_last_day_is_not_whole() -> None:
    start = int(AMS.local_midnight(date(2024, 6, 3)).timestamp()) + 10 * 900
    layout = history_layout(AMS, start, 3 * 96)
    assert layout.days == 4
    assert list(layout.whole_day) == [False, True, True, False]


def test_day_types_and_configured_holidays() -> None:
    cal = SiteCalendar.of("Europe/Amsterdam", holidays=[date(2024, 12, 25)])
    ords = np.array([date(2024, 12, d).toordinal() for d in (20, 21, 22, 25)], dtype=np.int64)
    assert list(cal.day_types(ords)) == [WEEKDAY, SATURDAY, SUNDAY_OR_HOLIDAY, SUNDAY_OR_HOLIDAY]


def test_bad_calendar_inputs_are_named() -> None:
    with pytest.raises(CalendarError, match="Mars/Olympus"):
        SiteCalendar.of("Mars/Olympus")
    with pytest.raises(CalendarError, match="7 min"):
        SiteCalendar.of("UTC", 7)
    with pytest.raises(CalendarError, match="ISP boundary"):
        history_layout(AMS, 60, 10)
    with pytest.raises(CalendarError, match="no time zone"):
        epoch_seconds([datetime(2024, 1, 1)])


def test_public_holidays_come_from_the_holidays_package() -> None:
    from forecaster.calendar import public_holidays

    days = public_holidays("US", "CA", [2019])
    assert date(2019, 11, 29) in days  # the day after Thanksgiving, a California holiday
    assert date(2019, 7, 4) in days
    assert date(2019, 11, 29) not in public_holidays("US", None, [2019])
    with pytest.raises(CalendarError):
        public_holidays("XX", None, [2019])
