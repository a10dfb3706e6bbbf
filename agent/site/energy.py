"""Energy per ISP from a charger's energy register: the measurement behind settlement.

Chargers report a cumulative energy register (Wh) at irregular instants. The energy between two
readings is spread evenly over the time between them and split at ISP boundaries, so every Wh
the register counted lands in exactly one ISP and the per-ISP sums add up to the register's
advance. A register that goes backwards (meter replaced, a 2.0.1 charger reporting per
transaction) starts a new baseline instead of producing negative energy.

Pure logic; the site model feeds it and flushes the totals to the store in batches.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


def isp_start(instant: datetime, isp_seconds: int) -> datetime:
    """The start of the ISP containing `instant` on the UTC-aligned grid."""
    ts = int(instant.timestamp())
    return datetime.fromtimestamp(ts - ts % isp_seconds, UTC)


def split_energy(
    start: datetime,
    end: datetime,
    energy_wh: float,
    isp_seconds: int,
    power_at_start_w: float | None = None,
    power_at_end_w: float | None = None,
) -> list[tuple[datetime, float]]:
    """Split `energy_wh` drawn over [start, end) into (ISP start, Wh) per ISP touched.

    Without power readings the energy is spread evenly. With the power reported at both ends,
    the first ISP's part is weighted by the power at the start and the last ISP's by the power
    at the end: chargers change power at ISP boundaries (that is where their profile periods
    begin), so a reading interval that straddles a boundary would otherwise smear a cap into
    the ISP before it. Either way the parts add up to `energy_wh` exactly.
    """
    if end < start:
        raise ValueError(f"interval ends before it starts: {start} .. {end}")
    if energy_wh < 0:
        raise ValueError(f"negative energy {energy_wh} Wh")
    total = (end - start).total_seconds()
    if total == 0:
        return [(isp_start(start, isp_seconds), energy_wh)] if energy_wh else []
    segments: list[tuple[datetime, float]] = []
    cursor = start
    while cursor < end:
        bucket = isp_start(cursor, isp_seconds)
        bucket_end = min(end, bucket + timedelta(seconds=isp_seconds))
        segments.append((bucket, (bucket_end - cursor).total_seconds()))
        cursor = bucket_end
    weights = [seconds for _, seconds in segments]
    if (
        len(segments) > 1
        and power_at_start_w is not None
        and power_at_end_w is not None
        and power_at_start_w >= 0
        and power_at_end_w >= 0
    ):
        middle = (power_at_start_w + power_at_end_w) / 2
        powered = [seconds * middle for _, seconds in segments]
        powered[0] = segments[0][1] * power_at_start_w
        powered[-1] = segments[-1][1] * power_at_end_w
        # Below a milliwatt the readings say nothing about where the energy went (and a
        # denormal weight would overflow the scale below).
        if sum(powered) > 1e-3:
            weights = powered
    scale = energy_wh / sum(weights)
    return [(bucket, weight * scale) for (bucket, _), weight in zip(segments, weights, strict=True)]


@dataclass(frozen=True)
class Reading:
    at: datetime
    register_wh: float
    power_w: float | None = None


class EnergyAccumulator:
    """Per-(meter, ISP) energy from register readings, drained in batches for the store."""

    def __init__(self, isp_seconds: int) -> None:
        self.isp_seconds = isp_seconds
        self._last: dict[str, Reading] = {}
        self._pending: defaultdict[tuple[str, datetime], float] = defaultdict(float)
        self.resets = 0

    def add(
        self, meter: str, at: datetime, register_wh: float, power_w: float | None = None
    ) -> None:
        """Record a register reading of `meter` (a charger, an EVSE) at `at`, with the power
        the meter reported at that moment where it did."""
        if at.tzinfo is None:
            raise ValueError("readings need timezone-aware instants")
        last = self._last.get(meter)
        if last is not None and at < last.at:
            return  # a late, out-of-order reading: the interval is already accounted for
        self._last[meter] = Reading(at, register_wh, power_w)
        if last is None:
            return
        delta = register_wh - last.register_wh
        if delta < 0:
            self.resets += 1
            return
        parts = split_energy(last.at, at, delta, self.isp_seconds, last.power_w, power_w)
        for bucket, wh in parts:
            self._pending[(meter, bucket)] += wh

    def restore(self, meter: str, at: datetime, register_wh: float) -> None:
        """Start from a baseline saved before a restart, so the energy counted while the agent
        was down is not lost: the next reading's advance is spread over the gap."""
        last = self._last.get(meter)
        if last is None or last.at < at:
            self._last[meter] = Reading(at, register_wh)

    def baselines(self) -> list[tuple[str, datetime, float]]:
        return [(m, r.at, r.register_wh) for m, r in self._last.items()]

    def forget(self, meter: str) -> None:
        """Drop the baseline (the meter went offline); the next reading starts a new one."""
        self._last.pop(meter, None)

    def give_back(self, drained: dict[tuple[str, datetime], float]) -> None:
        """Return totals taken by `drain` whose write failed, to go out with the next batch."""
        for key, wh in drained.items():
            self._pending[key] += wh

    def pending(self) -> dict[tuple[str, datetime], float]:
        """Totals counted since the last `drain` (a copy; nothing is taken)."""
        return dict(self._pending)

    def last_reading_at(self, meter: str) -> datetime | None:
        """When `meter` last reported: its energy is accounted up to that moment."""
        last = self._last.get(meter)
        return None if last is None else last.at

    def drain(self) -> dict[tuple[str, datetime], float]:
        pending = dict(self._pending)
        self._pending.clear()
        return pending
