"""The market's ISP calendar as the agent uses it (UFTP edge: local periods, 1-based ISPs).

Inside the agent an ISP is its UTC start instant; the market's Period (a local date) and ISP
index (1-based, 92/96/100 per day at PT15M) exist only where a UFTP message is built or read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from uftp import calendar


@dataclass(frozen=True)
class Isp:
    index: int
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Market:
    time_zone: str
    isp_minutes: int

    @property
    def isp(self) -> timedelta:
        return timedelta(minutes=self.isp_minutes)

    def isps(self, period: date) -> list[Isp]:
        return [
            Isp(i, s, e)
            for i, s, e in calendar.isps_of_day(period, self.time_zone, self.isp_minutes)
        ]

    def count(self, period: date) -> int:
        return calendar.isp_count(period, self.time_zone, self.isp_minutes)

    def bounds(self, period: date) -> tuple[datetime, datetime]:
        return calendar.day_bounds(period, self.time_zone)

    def locate(self, instant: datetime) -> tuple[date, int]:
        """(Period, ISP index) containing the instant."""
        return calendar.isp_of(instant, self.time_zone, self.isp_minutes)

    def today(self, now: datetime) -> date:
        return calendar.today(self.time_zone, now)

    def start_of(self, period: date, index: int) -> datetime:
        return calendar.isp_interval(period, self.time_zone, self.isp_minutes, index)[0]

    def local(self, period: date, clock_time: str) -> datetime:
        """The UTC instant of a local wall-clock time "HH:MM" on a day."""
        hours, minutes = (int(x) for x in clock_time.split(":"))
        start, _ = self.bounds(period)
        local = start.astimezone(calendar.zone(self.time_zone))
        wall = local.replace(hour=hours, minute=minutes)
        return wall.astimezone(start.tzinfo)
