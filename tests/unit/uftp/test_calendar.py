"""The ISP calendar: local days in UTC, 92/96/100 ISPs at PT15M, Start/Duration runs."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uftp import calendar, reasons

AMS = "Europe/Amsterdam"


@pytest.mark.parametrize(
    ("period", "minutes", "count"),
    [
        (date(2030, 1, 15), 15, 96),
        (date(2030, 3, 31), 15, 92),  # spring forward: 23 hours
        (date(2030, 10, 27), 15, 100),  # fall back: 25 hours
        (date(2030, 1, 15), 60, 24),
        (date(2030, 3, 31), 30, 46),
        (date(2030, 10, 27), 5, 300),
    ],
)
def test_isps_per_day(period: date, minutes: int, count: int) -> None:
    assert calendar.isp_count(period, AMS, minutes) == count
    isps = calendar.isps_of_day(period, AMS, minutes)
    assert [i for i, _, _ in isps] == list(range(1, count + 1))


def test_first_isp_starts_at_local_midnight_in_utc() -> None:
    index, start, end = calendar.isps_of_day(date(2030, 7, 1), AMS, 15)[0]
    assert (index, start, end) == (
        1,
        datetime(2030, 6, 30, 22, 0, tzinfo=UTC),
        datetime(2030, 6, 30, 22, 15, tzinfo=UTC),
    )


def test_isps_after_the_dst_jump_shift_in_local_time() -> None:
    # On 2030-03-31 02:00 local does not exist: ISP 9 (02:00 on a normal day) starts at 03:00.
    start, _ = calendar.isp_interval(date(2030, 3, 31), AMS, 15, 9)
    assert start == datetime(2030, 3, 31, 1, 0, tzinfo=UTC)
    with pytest.raises(calendar.CalendarError, match=r"outside 1\.\.92"):
        calendar.isp_interval(date(2030, 3, 31), AMS, 15, 93)


def test_midnight_dst_transition() -> None:
    # America/Santiago jumped at midnight on 2024-09-08: the day starts at 01:00 local.
    start, end = calendar.day_bounds(date(2024, 9, 8), "America/Santiago")
    assert start == datetime(2024, 9, 8, 4, 0, tzinfo=UTC)
    assert calendar.isp_count(date(2024, 9, 8), "America/Santiago", 15) == 92
    assert end - start == timedelta(hours=23)


def test_isp_of_an_instant() -> None:
    # Fall-back day: 01:15 UTC is the second 02:15 on the wall clock, but 3 h 15 min after
    # local midnight (22:00 UTC the day before), so ISP 14 of 100.
    assert calendar.isp_of(datetime(2030, 10, 27, 1, 15, tzinfo=UTC), AMS, 15) == (
        date(2030, 10, 27),
        14,
    )
    assert calendar.isp_of(datetime(2030, 1, 14, 23, 0, tzinfo=UTC), AMS, 15) == (
        date(2030, 1, 15),
        1,
    )
    with pytest.raises(calendar.CalendarError, match="UTC-aware"):
        calendar.isp_of(datetime(2030, 1, 15, 9, 0), AMS, 15)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from([AMS, "Europe/London", "America/New_York", "Australia/Sydney"]),
    st.sampled_from([5, 15, 30, 60]),
)
def test_isp_of_is_the_inverse_of_isps_of_day(instant: datetime, tz: str, minutes: int) -> None:
    period, index = calendar.isp_of(instant, tz, minutes)
    _, start, end = calendar.isps_of_day(period, tz, minutes)[index - 1]
    assert start <= instant < end


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2060, 1, 1)))
def test_consecutive_days_tile_time(period: date) -> None:
    last = calendar.isps_of_day(period, AMS, 15)[-1]
    first_next = calendar.isps_of_day(period + timedelta(days=1), AMS, 15)[0]
    assert last[2] == first_next[1]
    assert calendar.isp_count(period, AMS, 15) in (92, 96, 100)


def test_unknown_zone_and_odd_durations() -> None:
    with pytest.raises(calendar.CalendarError, match="unknown"):
        calendar.isp_count(date(2030, 1, 1), "Europe/Atlantis", 15)
    with pytest.raises(calendar.CalendarError, match="divide"):
        calendar.isp_count(date(2030, 1, 1), AMS, 7)
    # Lord Howe moves its clocks by 30 minutes: no whole number of hourly ISPs that day.
    with pytest.raises(calendar.CalendarError, match="whole number"):
        calendar.isp_count(date(2030, 4, 7), "Australia/Lord_Howe", 60)


def test_same_calendar_compares_utc_offsets_not_names() -> None:
    assert calendar.same_calendar(date(2030, 1, 15), "Europe/Brussels", AMS, 15)
    assert not calendar.same_calendar(date(2030, 1, 15), "Europe/London", AMS, 15)


def test_runs_expand_and_compress() -> None:
    runs = calendar.compress_runs([5, 5, 5, 7, 7, 5])
    assert [(r.start, r.duration, r.value) for r in runs] == [(1, 3, 5), (4, 2, 7), (6, 1, 5)]
    assert calendar.expand_runs((r.start, r.duration, r.value) for r in runs) == {
        1: 5,
        2: 5,
        3: 5,
        4: 7,
        5: 7,
        6: 5,
    }
    gaps = calendar.compress_runs({1: 0, 2: 0, 4: 0})
    assert [(r.start, r.duration) for r in gaps] == [(1, 2), (4, 1)]
    with pytest.raises(calendar.CalendarError, match="more than one"):
        calendar.expand_runs([(1, 4, 0), (2, 1, 0)])


@given(st.dictionaries(st.integers(1, 100), st.integers(-3, 3), max_size=60))
def test_compress_then_expand_is_identity(values: dict[int, int]) -> None:
    runs = calendar.compress_runs(values)
    assert calendar.expand_runs((r.start, r.duration, r.value) for r in runs) == values
    # Maximal: no two adjacent runs could have been merged.
    for a, b in itertools.pairwise(runs):
        assert not (a.end + 1 == b.start and a.value == b.value)


def test_coverage_problems_follow_the_spec_examples() -> None:
    # The specification's "ISP conflict": Start=1 Duration=4 and Start=2 overlap.
    assert [reasons.reason_of(p) for p in calendar.coverage_problems([(1, 4), (2, 1)], 96)] == [
        reasons.ISP_CONFLICT
    ]
    assert calendar.coverage_problems([(1, 96)], 96) == []
    for spans in ([(97, 1)], [(96, 2)], [(0, 1)], [(5, 0)], []):
        assert [reasons.reason_of(p) for p in calendar.coverage_problems(spans, 96)] == [
            reasons.ISPS_OUT_OF_BOUNDS
        ]
    # ISP 93 exists on a normal day but not on the 92-ISP spring-forward day.
    assert calendar.coverage_problems([(93, 1)], 92) != []


def test_lacking_isps_and_the_end_of_the_last_isp() -> None:
    assert calendar.lacking_isps([(1, 90), (93, 4)], 96) == [91, 92]
    assert calendar.spans_end(date(2030, 1, 15), AMS, 15, [(69, 4)]) == datetime(
        2030, 1, 15, 17, 0, tzinfo=UTC
    )
