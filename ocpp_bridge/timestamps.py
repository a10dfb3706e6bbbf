"""OCPP timestamps at the edge: UTC-aware datetimes inside, RFC 3339 strings on the wire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime


class TimestampError(ValueError):
    """A timestamp from a charger cannot be read."""


def format_timestamp(moment: datetime) -> str:
    """UTC with at most millisecond precision and a ``Z``.

    CitrineOS (Ajv) rejects more than three fractional digits, and Python's `isoformat()`
    writes six; EVerest accepts both. Naive datetimes are a programming error here.
    """
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: flexbridge uses UTC-aware datetimes")
    utc = moment.astimezone(UTC)
    if utc.microsecond:
        return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return utc.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """A charger's timestamp as an aware UTC datetime.

    Chargers in the field send offsets, ``Z``, and sometimes no zone at all; the last is read
    as UTC (OCPP 1.6 §3.4 and 2.0.1 Part 2 §2.1.4 require UTC), never as local time.
    """
    if not isinstance(text, str):
        raise TimestampError(f"timestamp must be a string, got {text!r}")
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise TimestampError(f"not an RFC 3339 timestamp: {text!r}") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


async def real_sleep(seconds: float) -> None:
    """The system clock's sleep, the default partner of `utc_now`."""
    await asyncio.sleep(max(0.0, seconds))
