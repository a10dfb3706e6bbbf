"""The ISP calendar: Period + TimeZone + ISP-Duration <-> UTC intervals, and Start/Duration runs.

A Period is one local calendar day in the market time zone. Its ISPs are numbered from 1 at
local midnight; their count follows the day's real length, so at PT15M a day has 96 ISPs, 92 on
the spring-forward day and 100 on the fall-back day (UFTP 3.1.0, message validation, "ISPs
out of bounds"). Everything returned here is UTC; local time exists only to find where a day starts.

Runs are the wire form of ISP lists: ``(start, duration, value)`` covering ISPs
``start .. start + duration - 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from uftp import reasons

V = TypeVar("V")


class CalendarError(ValueError):
    """The calendar cannot be built: unknown time zone, or ISPs that do not fit the day."""


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown IANA time zone {name!r}") from None


def _check_isp_minutes(isp_minutes: int) -> timedelta:
    if isp_minutes <= 0 or (24 * 60) % isp_minutes:
        raise CalendarError(f"ISP duration of {isp_minutes} min does not divide a day")
    return timedelta(minutes=isp_minutes)


def day_bounds(period: date, tz: str) -> tuple[datetime, datetime]:
    """UTC start and end of the local day `period`.

    Local midnight is built with fold=0: where midnight does not exist (a DST jump at 00:00) this
    lands on the transition instant, where it exists twice it takes the first; both are where
    the local day really begins.
    """
    z = zone(tz)
    start = datetime.combine(period, time(0), tzinfo=z).astimezone(UTC)
    end = datetime.combine(period + timedelta(days=1), time(0), tzinfo=z).astimezone(UTC)
    return start, end


@lru_cache(maxsize=1024)
def isp_count(period: date, tz: str, isp_minutes: int) -> int:
    """Number of ISPs in the day: 96/92/100 at PT15M in Europe/Amsterdam."""
    step = _check_isp_minutes(isp_minutes)
    start, end = day_bounds(period, tz)
    length = end - start
    if length % step:
        raise CalendarError(
            f"{period} in {tz} lasts {length}, not a whole number of {isp_minutes}-minute ISPs"
        )
    return length // step


def isps_of_day(period: date, tz: str, isp_minutes: int) -> list[tuple[int, datetime, datetime]]:
    """``(index, start_utc, end_utc)`` for every ISP of the day, index 1-based."""
    step = _check_isp_minutes(isp_minutes)
    start, _ = day_bounds(period, tz)
    return [
        (i + 1, start + i * step, start + (i + 1) * step)
        for i in range(isp_count(period, tz, isp_minutes))
    ]


def isp_interval(period: date, tz: str, isp_minutes: int, index: int) -> tuple[datetime, datetime]:
    """UTC start and end of ISP `index` (1-based) of the day."""
    count = isp_count(period, tz, isp_minutes)
    if not 1 <= index <= count:
        raise CalendarError(f"ISP {index} is outside 1..{count} of {period} in {tz}")
    step = timedelta(minutes=isp_minutes)
    start, _ = day_bounds(period, tz)
    return start + (index - 1) * step, start + index * step


def isp_of(instant_utc: datetime, tz: str, isp_minutes: int) -> tuple[date, int]:
    """The (Period, ISP index) that contains an instant."""
    if instant_utc.tzinfo is None:
        raise CalendarError(f"instant {instant_utc} has no time zone; UTC-aware datetimes only")
    step = _check_isp_minutes(isp_minutes)
    period = instant_utc.astimezone(zone(tz)).date()
    start, end = day_bounds(period, tz)
    # Where local midnight repeats or is skipped, the wall-clock date and the ISP day can differ
    # by one around the transition.
    if instant_utc < start:
        period -= timedelta(days=1)
        start, end = day_bounds(period, tz)
    elif instant_utc >= end:
        period += timedelta(days=1)
        start, end = day_bounds(period, tz)
    return period, (instant_utc - start) // step + 1


def today(tz: str, now_utc: datetime) -> date:
    """The market's current Period."""
    return now_utc.astimezone(zone(tz)).date()


def same_calendar(period: date, tz_a: str, tz_b: str, isp_minutes: int) -> bool:
    """Whether two zones give the day identical UTC ISPs (the "TimeZone rejected" criterion:
    a different name is fine, a different UTC offset is not)."""
    if tz_a == tz_b:
        return True
    return day_bounds(period, tz_a) == day_bounds(period, tz_b) and isp_count(
        period, tz_a, isp_minutes
    ) == isp_count(period, tz_b, isp_minutes)


# --- Start/Duration runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run(Generic[V]):
    start: int
    duration: int
    value: V

    @property
    def end(self) -> int:
        """Last ISP index covered (inclusive)."""
        return self.start + self.duration - 1

    def indices(self) -> range:
        return range(self.start, self.start + self.duration)


def expand_runs(runs: Iterable[tuple[int, int, V]]) -> dict[int, V]:
    """``{index: value}`` from runs; raises CalendarError on overlap or a non-positive run."""
    values: dict[int, V] = {}
    for start, duration, value in runs:
        if duration < 1 or start < 1:
            raise CalendarError(f"run Start={start} Duration={duration} is not a valid ISP range")
        for index in range(start, start + duration):
            if index in values:
                raise CalendarError(f"ISP {index} appears in more than one run")
            values[index] = value
    return values


def compress_runs(values: Mapping[int, V] | Sequence[V], *, first: int = 1) -> list[Run[V]]:
    """Merge consecutive ISPs with equal values into runs.

    A sequence is numbered from `first`; a mapping may have gaps, which break runs.
    """
    items = (
        sorted(values.items())
        if isinstance(values, Mapping)
        else list(enumerate(values, start=first))
    )
    runs: list[Run[V]] = []
    for index, value in items:
        last = runs[-1] if runs else None
        if last is not None and last.end + 1 == index and last.value == value:
            runs[-1] = Run(last.start, last.duration + 1, value)
        else:
            runs.append(Run(index, 1, value))
    return runs


def coverage_problems(spans: Iterable[tuple[int, int]], count: int) -> list[str]:
    """Rejection reasons for ISP elements ``(start, duration)`` in a day of `count` ISPs.

    "ISPs out of bounds": no element at all, a Start below 1, a Duration below 1, or an element
    that runs past the last ISP of the day. "ISP conflict": an ISP covered twice.
    """
    problems: list[str] = []
    inside: list[tuple[int, int]] = []
    for start, duration in spans:
        if start < 1 or duration < 1 or start + duration - 1 > count:
            problems.append(
                f"{reasons.ISPS_OUT_OF_BOUNDS}: Start={start} Duration={duration} is outside "
                f"ISPs 1..{count} of the Period"
            )
        else:
            inside.append((start, start + duration - 1))
    if not inside and not problems:
        problems.append(f"{reasons.ISPS_OUT_OF_BOUNDS}: the message has no ISPs")
    # Sorted by start, two elements overlap exactly when one starts before the previous ends.
    inside.sort()
    conflicts: set[int] = set()
    reach = 0
    for first, last in inside:
        if first <= reach:
            conflicts.update(range(first, min(last, reach) + 1))
        reach = max(reach, last)
    if conflicts:
        listed = ", ".join(str(i) for i in sorted(conflicts)[:10])
        problems.append(f"{reasons.ISP_CONFLICT}: ISP(s) {listed} defined more than once")
    return problems


def lacking_isps(spans: Iterable[tuple[int, int]], count: int) -> list[int]:
    """ISP indices of the day that no element covers (D-Prognosis "Lacking ISPs")."""
    covered: set[int] = set()
    for start, duration in spans:
        covered.update(range(max(start, 1), min(start + duration, count + 1)))
    return [i for i in range(1, count + 1) if i not in covered]


def spans_end(
    period: date, tz: str, isp_minutes: int, spans: Iterable[tuple[int, int]]
) -> datetime:
    """UTC end of the last ISP the spans cover (for "ExpirationDateTime out of bounds")."""
    last = max(start + duration - 1 for start, duration in spans)
    start_of_day, _ = day_bounds(period, tz)
    return start_of_day + last * timedelta(minutes=isp_minutes)
