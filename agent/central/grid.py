"""The fleet's ISP grid as the central aggregator's pure logic uses it.

Everything central is on the UTC ISP grid of the bus protocol (`agent.fleet.protocol`): an ISP
is named by its UTC start, 15 minutes long. The market's time zone and ISP numbering exist only
where a UFTP message is read or written (`request_elements`, the settlement check).
"""

from __future__ import annotations

from datetime import datetime, timedelta

ISP = timedelta(seconds=900)


def check_isp(start: datetime) -> datetime:
    """`start` itself; a naive, non-UTC or off-grid start is a caller's bug, not data."""
    if start.tzinfo is None or start.utcoffset() != timedelta(0):
        raise ValueError(f"ISP start {start!r} must be a UTC-aware datetime")
    if int(start.timestamp()) % int(ISP.total_seconds()) or start.microsecond:
        raise ValueError(f"ISP start {start.isoformat()} is not on the 15-minute grid")
    return start


def position(series_start: datetime, length: int, isp: datetime) -> int | None:
    """Index of ISP `isp` in a series of `length` ISPs from `series_start`; None outside."""
    offset = isp - series_start
    if offset % ISP:
        return None
    index = offset // ISP
    return index if 0 <= index < length else None
