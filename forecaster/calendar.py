"""Local-time seasonality over a UTC ISP grid: local days, clock slots, day types, holidays.

The agent works in UTC instants; the load follows the site's wall clock (people arrive at 08:00
local, winter or summer). So every UTC ISP is mapped to a local day and a local clock slot
(minutes since local midnight // ISP minutes). On a spring-forward day the slots of the skipped
hour simply do not occur (92 ISPs at PT15M); on a fall-back day two UTC ISPs share each slot of
the repeated hour (100 ISPs) and both get that slot's forecast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

WEEKDAY = 0
SATURDAY = 1
SUNDAY_OR_HOLIDAY = 2
DAY_TYPES = 3
"""Day types pooled by the profile: Mon–Fri together (5× the samples of one weekday, the best
pooling on the Caltech backtest, docs/forecasting.md), Saturday, and Sunday with holidays."""

SECONDS_PER_DAY = 86_400

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class CalendarError(ValueError):
    """A time zone, ISP length or instant the forecaster cannot use."""


def epoch_seconds(instants: Sequence[datetime] | npt.NDArray[np.datetime64]) -> Int64Array:
    """UTC epoch seconds of aware datetimes or a ``datetime64`` array (taken as UTC)."""
    if isinstance(instants, np.ndarray):
        if not np.issubdtype(instants.dtype, np.datetime64):
            raise CalendarError(f"expected datetime64 instants, got dtype {instants.dtype}")
        return np.ascontiguousarray(instants.astype("datetime64[s]").astype(np.int64))
    out = np.empty(len(instants), dtype=np.int64)
    for i, instant in enumerate(instants):
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise CalendarError(f"instant {instant!r} has no time zone; give UTC-aware datetimes")
        out[i] = int(instant.timestamp())
    return out


def to_utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


@dataclass(frozen=True)
class SiteCalendar:
    """The site's IANA time zone, ISP length and holidays (local dates treated like Sundays)."""

    timezone: str
    isp_minutes: int = 15
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CalendarError(f"unknown IANA time zone {self.timezone!r}") from exc
        if self.isp_minutes <= 0 or 1440 % self.isp_minutes:
            raise CalendarError(f"ISP length {self.isp_minutes} min does not divide a day")
        object.__setattr__(self, "holidays", frozenset(self.holidays))

    @classmethod
    def of(
        cls, timezone: str, isp_minutes: int = 15, holidays: Iterable[date] = ()
    ) -> SiteCalendar:
        return cls(timezone, isp_minutes, frozenset(holidays))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def slots_per_day(self) -> int:
        return 1440 // self.isp_minutes

    @property
    def isp_seconds(self) -> int:
        return self.isp_minutes * 60

    def utc_offsets(self, epoch: Int64Array) -> Int64Array:
        """UTC offset in seconds at each instant.

        Offsets are evaluated at UTC day edges and per instant only on days whose edges
        differ, which finds every DST change at the cost of ~one zoneinfo call per day. (Two
        changes that cancel within one UTC day do not occur in the tz database.)
        """
        if epoch.size == 0:
            return np.zeros(0, dtype=np.int64)
        zone = ZoneInfo(self.timezone)

        def offset(t: int) -> int:
            delta = to_utc(t).astimezone(zone).utcoffset()
            return int(delta.total_seconds()) if delta is not None else 0

        first = int(epoch.min()) // SECONDS_PER_DAY * SECONDS_PER_DAY
        last = int(epoch.max()) // SECONDS_PER_DAY * SECONDS_PER_DAY + SECONDS_PER_DAY
        edges = np.arange(first, last + 1, SECONDS_PER_DAY, dtype=np.int64)
        edge_offsets = np.array([offset(int(e)) for e in edges], dtype=np.int64)
        day = (epoch - first) // SECONDS_PER_DAY
        result = edge_offsets[day]
        for d in np.flatnonzero(edge_offsets[:-1] != edge_offsets[1:]):
            mask = day == d
            result[mask] = [offset(int(t)) for t in epoch[mask]]
        return result

    def local_day_and_slot(self, epoch: Int64Array) -> tuple[Int64Array, Int64Array]:
        """Local date as a proleptic ordinal (``date.toordinal``) and local clock slot."""
        local = epoch + self.utc_offsets(epoch)
        # 1970-01-01 is ordinal 719163.
        ordinal = local // SECONDS_PER_DAY + 719_163
        slot = (local % SECONDS_PER_DAY) // self.isp_seconds
        return ordinal.astype(np.int64), slot.astype(np.int64)

    def day_types(self, ordinals: Int64Array) -> Int64Array:
        out = np.empty(ordinals.size, dtype=np.int64)
        for i, o in enumerate(ordinals.tolist()):
            day = date.fromordinal(o)
            wd = day.weekday()
            if day in self.holidays or wd == 6:
                out[i] = SUNDAY_OR_HOLIDAY
            elif wd == 5:
                out[i] = SATURDAY
            else:
                out[i] = WEEKDAY
        return out

    def local_midnight(self, day: date) -> datetime:
        """The UTC instant of 00:00 local on `day` (00:00 exists in every tz-database zone
        that shifts at night; where it does not, the first instant after the gap)."""
        zone = ZoneInfo(self.timezone)
        naive = datetime(day.year, day.month, day.day)
        local = naive.replace(tzinfo=zone)
        utc = local.astimezone(UTC)
        # A non-existent local time maps forward; normalise through a round trip.
        if utc.astimezone(zone).replace(tzinfo=None) != naive:
            utc = (naive + timedelta(hours=1)).replace(tzinfo=zone).astimezone(UTC)
        return utc

    def day_isps(self, day: date) -> Int64Array:
        """UTC epoch seconds of every ISP start of local `day`: 92, 96 or 100 at PT15M."""
        start = int(self.local_midnight(day).timestamp())
        end = int(self.local_midnight(day + timedelta(days=1)).timestamp())
        return np.arange(start, end, self.isp_seconds, dtype=np.int64)


@dataclass(frozen=True)
class HistoryLayout:
    """Where each (local day, slot) of a history window sits on its UTC grid.

    ``index[d, k, j]`` is the grid position of slot ``k`` of local day ``d`` (``j`` = 0, and
    ``j`` = 1 for the second pass of a repeated fall-back hour), or -1 where the slot has no
    ISP (skipped spring-forward hour, or outside the grid).
    """

    first_ordinal: int
    index: Int64Array  # (D, P, 2)
    day_type: Int64Array  # (D,)
    whole_day: npt.NDArray[np.bool_]  # (D,) False where the grid cuts the day

    @property
    def days(self) -> int:
        return int(self.index.shape[0])


def history_layout(calendar: SiteCalendar, start_epoch: int, length: int) -> HistoryLayout:
    if start_epoch % calendar.isp_seconds:
        raise CalendarError(
            f"history start {to_utc(start_epoch).isoformat()} is not on a "
            f"{calendar.isp_minutes}-minute ISP boundary"
        )
    if length <= 0:
        raise CalendarError("history is empty: no ISPs")
    epoch = start_epoch + calendar.isp_seconds * np.arange(length, dtype=np.int64)
    ordinal, slot = calendar.local_day_and_slot(epoch)
    first = int(ordinal[0])
    days = int(ordinal[-1]) - first + 1
    slots = calendar.slots_per_day
    position = (ordinal - first) * slots + slot
    _, first_seen = np.unique(position, return_index=True)
    again = np.ones(length, dtype=bool)
    again[first_seen] = False
    flat = np.full((days * slots, 2), -1, dtype=np.int64)
    flat[position[first_seen], 0] = first_seen
    flat[position[again], 1] = np.flatnonzero(again)
    index = flat.reshape(days, slots, 2)
    ordinals = np.arange(first, first + days, dtype=np.int64)
    # Only the first and last day can be cut: when the grid does not start at a local midnight
    # or does not end at one.
    whole = np.ones(days, dtype=bool)
    if slot[0] != 0:
        whole[0] = False
    _, end_slot = calendar.local_day_and_slot(
        np.array([start_epoch + length * calendar.isp_seconds], dtype=np.int64)
    )
    if end_slot[0] != 0:
        whole[-1] = False
    return HistoryLayout(first, index, calendar.day_types(ordinals), whole)


def public_holidays(country: str, subdivision: str | None, years: Iterable[int]) -> frozenset[date]:
    """Public holidays of `country` (ISO 3166-1 alpha-2) and `subdivision` (its ISO 3166-2
    code without the country, e.g. "CA") from the `holidays` package, for `years`.

    A maintained calendar rather than hand-typed dates: observed-day rules and state
    holidays change, and a site's forecast should not depend on someone retyping them."""
    import holidays

    try:
        found = holidays.country_holidays(country, subdiv=subdivision, years=list(years))
    except NotImplementedError as exc:
        raise CalendarError(str(exc)) from None
    return frozenset(found.keys())
