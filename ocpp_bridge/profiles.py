"""Charging profiles: a schedule in watts -> the exact SetChargingProfile payload, 1.6 or 2.0.1.

Pure: no I/O, no clock (``now`` is an argument). The property tests in
tests/unit/ocpp_bridge/test_profiles.py check that every payload validates against the
version's JSON schema and honours the charger's capabilities.

Rules encoded here, each from a spec clause or a peer that enforces it:
- W is total power, A is per phase (1.6 §7.13, 2.0.1 K): A = W / (nominal V × phases).
- Limits are whole numbers: 1.6 requires multiples of 0.1 and CitrineOS' 2.0.1 schemas add
  ``multipleOf: 0.1`` too, so we floor to integers (never rounding up above the request).
- A limit is 0 or at least the charger's minimum current (IEC 61851: EVs stop below ~6 A),
  never negative and never above the charger's maximum: nothing we send is "unlimited".
- Absolute profiles carry ``startSchedule`` (EVerest, K01.FR.40), first ``startPeriod`` is 0
  (K01.FR.31) and periods increase (K01.FR.35); at most the charger's period count.
- Timestamps have at most millisecond precision (CitrineOS) and are UTC.
- Station max profiles go on connector/EVSE 0 and are never Relative (K01.FR.38); TxProfile
  needs an EVSE > 0 and the transaction id (K01.FR.03/16).
- 2.0.1 schedule ids are unique per charger (CitrineOS' UNIQUE(schedule id, station)): the
  caller hands in a fresh one for every payload.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ocpp_bridge.capabilities import ChargerCapabilities, Purpose, RateUnit
from ocpp_bridge.events import PowerPeriod, ProtocolVersion
from ocpp_bridge.timestamps import format_timestamp

# Stack levels: the safe layer owns the lowest; station-wide dynamic limits sit above it and
# per-EVSE dynamic limits above those, so a TxDefault on EVSE 0 and one on EVSE n never share a
# level (EVerest: DuplicateTxDefaultProfileFound).
SAFE_STACK_LEVEL = 0
STATION_DYNAMIC_STACK_LEVEL = 1
EVSE_DYNAMIC_STACK_LEVEL = 2

# Fixed profile ids per layer, so a refresh replaces rather than adds (1.6 §3.13.2, K01.FR.05)
# and never collides with itself (EVerest: DuplicateProfileValidityPeriod).
SAFE_PROFILE_ID = 100
DYNAMIC_PROFILE_ID_BASE = 200  # + EVSE id
# A station-wide dynamic limit that must fall back to TxProfiles is split over the active
# transactions, one profile per EVSE with its own id (never one of the per-EVSE layer's).
STATION_SPLIT_PROFILE_ID_BASE = 300  # + EVSE id
# EVSE ids an id base leaves room for (base + EVSE id stays below the next base).
MAX_EVSE_ID = 99


class ProfileError(ValueError):
    """The requested profile cannot be built for this charger (the message says why)."""


@dataclass(frozen=True, slots=True)
class ProfileLayout:
    """Where our profiles sit on a charger: their stack levels and ids.

    A charger shared with another CSMS (local-controller mode) holds that CSMS's profiles too:
    the same id replaces a profile (1.6 §3.13.2, 2.0.1 K01.FR.05), and the same stack level and
    purpose replaces (1.6) or is refused (2.0.1 K01.FR.06). The layout keeps ours apart.
    """

    safe_stack_level: int = SAFE_STACK_LEVEL
    station_dynamic_stack_level: int = STATION_DYNAMIC_STACK_LEVEL
    evse_dynamic_stack_level: int = EVSE_DYNAMIC_STACK_LEVEL
    safe_profile_id: int = SAFE_PROFILE_ID
    dynamic_profile_id_base: int = DYNAMIC_PROFILE_ID_BASE
    station_split_profile_id_base: int = STATION_SPLIT_PROFILE_ID_BASE

    def __post_init__(self) -> None:
        if not (
            0
            <= self.safe_stack_level
            < self.station_dynamic_stack_level
            < self.evse_dynamic_stack_level
        ):
            raise ProfileError(
                "stack levels must rise: safe < station-wide dynamic < per-EVSE dynamic"
            )
        ranges = sorted(
            [
                (self.safe_profile_id, self.safe_profile_id),
                (self.dynamic_profile_id_base, self.dynamic_profile_id_base + MAX_EVSE_ID),
                (
                    self.station_split_profile_id_base,
                    self.station_split_profile_id_base + MAX_EVSE_ID,
                ),
            ]
        )
        if ranges[0][0] < 1 or ranges[-1][1] >= 2**31:
            raise ProfileError("profile ids must lie within 1..2^31-1")
        for (_, end), (start, _) in itertools.pairwise(ranges):
            if start <= end:
                raise ProfileError(
                    "the safe profile id and the two id ranges (base..base+"
                    f"{MAX_EVSE_ID}) must not overlap"
                )

    def profile_ids(self) -> frozenset[int]:
        """Every profile id this layout may install."""
        evses = range(MAX_EVSE_ID + 1)
        return frozenset(
            [self.safe_profile_id]
            + [self.dynamic_profile_id_base + e for e in evses]
            + [self.station_split_profile_id_base + e for e in evses]
        )

    def clear_may_remove_ours(self, version: ProtocolVersion, payload: dict[str, Any]) -> bool:
        """Whether another CSMS's ClearChargingProfile (`payload`) can have removed one of
        our profiles, the safe layer included: by naming one of our ids, or by criteria that
        do not keep to another stack level. Its purpose and EVSE are not trusted to spare
        ours: the safe layer's purpose depends on what the charger accepted (a fallback)."""
        if version is ProtocolVersion.OCPP16:
            profile_id = payload.get("id")
            level = payload.get("stackLevel")
        else:
            profile_id = payload.get("chargingProfileId")
            level = (payload.get("chargingProfileCriteria") or {}).get("stackLevel")
        if profile_id is not None:
            return profile_id in self.profile_ids()
        if level is not None:
            return level in (
                self.safe_stack_level,
                self.station_dynamic_stack_level,
                self.evse_dynamic_stack_level,
            )
        return True


DEFAULT_LAYOUT = ProfileLayout()

# A schedule we start "now" starts this much earlier, so a charger whose clock runs behind
# ours applies it at once instead of falling back to lower layers for the difference.
CLOCK_SKEW_MARGIN = timedelta(seconds=60)
# The safe profile starts in the past (Absolute needs startSchedule; a future start would leave
# the charger unconstrained until then, 1.6 §3.13.2).
SAFE_START_OFFSET = timedelta(days=1)

_PURPOSE_NAMES = {
    ProtocolVersion.OCPP16: {
        Purpose.STATION_MAX: "ChargePointMaxProfile",
        Purpose.TX_DEFAULT: "TxDefaultProfile",
        Purpose.TX: "TxProfile",
    },
    ProtocolVersion.OCPP201: {
        Purpose.STATION_MAX: "ChargingStationMaxProfile",
        Purpose.TX_DEFAULT: "TxDefaultProfile",
        Purpose.TX: "TxProfile",
    },
}


class Layer(StrEnum):
    SAFE = "safe"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True)
class ElectricalData:
    """What OCPP does not report: the charger's wiring. Needed to turn W into A."""

    phases: int = 3
    nominal_voltage_v: float = 230.0
    min_current_a: float = 6.0
    max_current_a: float = 16.0

    def __post_init__(self) -> None:
        if self.phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, got {self.phases}")
        if not self.nominal_voltage_v > 0:
            raise ValueError(f"nominal voltage must be positive, got {self.nominal_voltage_v}")
        if not 0 <= self.min_current_a <= self.max_current_a:
            raise ValueError(
                f"need 0 <= min current ({self.min_current_a}) <= max ({self.max_current_a})"
            )

    @property
    def watts_per_amp(self) -> float:
        return self.nominal_voltage_v * self.phases

    @property
    def max_power_w(self) -> float:
        return self.max_current_a * self.watts_per_amp


@dataclass(frozen=True, slots=True)
class ProfileTarget:
    """Where a profile goes: layer, purpose and EVSE (0 = whole charger)."""

    layer: Layer
    purpose: Purpose
    evse_id: int = 0
    transaction_id: str | None = None  # TxProfile only

    def __post_init__(self) -> None:
        if self.evse_id < 0:
            raise ProfileError(f"EVSE id must be >= 0, got {self.evse_id}")
        if self.purpose is Purpose.STATION_MAX and self.evse_id != 0:
            raise ProfileError("a station max profile goes on EVSE/connector 0 only")
        if self.purpose is Purpose.TX and (self.evse_id == 0 or not self.transaction_id):
            raise ProfileError("a TxProfile needs an EVSE > 0 and its active transaction id")
        if self.layer is Layer.SAFE and self.purpose is Purpose.TX:
            raise ProfileError("the safe layer cannot be a TxProfile: it ends with the session")


@dataclass(frozen=True, slots=True)
class BuiltProfile:
    """A payload ready to send, and what it means in our terms."""

    action: str  # "SetChargingProfile"
    payload: dict[str, Any]
    profile_id: int
    stack_level: int
    unit: RateUnit
    valid_to: datetime | None
    # (start, limit in the charger's unit) as sent.
    limits: tuple[tuple[datetime, int], ...]


def purpose_name(version: ProtocolVersion, purpose: Purpose) -> str:
    return _PURPOSE_NAMES[version][purpose]


def stack_level_for(
    target: ProfileTarget, caps: ChargerCapabilities, layout: ProfileLayout = DEFAULT_LAYOUT
) -> int:
    if target.layer is Layer.SAFE:
        return layout.safe_stack_level
    wanted = (
        layout.evse_dynamic_stack_level if target.evse_id else layout.station_dynamic_stack_level
    )
    level = min(wanted, caps.max_stack_level)
    if level <= layout.safe_stack_level:
        raise ProfileError(
            f"the charger allows stack level {caps.max_stack_level} at most; a dynamic limit "
            "needs a level above the safe layer's"
        )
    return level


def profile_id_for(target: ProfileTarget, layout: ProfileLayout = DEFAULT_LAYOUT) -> int:
    if target.layer is Layer.SAFE:
        return layout.safe_profile_id
    return layout.dynamic_profile_id_base + target.evse_id


def limit_in_unit(limit_w: float, unit: RateUnit, electrical: ElectricalData) -> int:
    """A power limit in the charger's unit: whole number, 0 or within [min, max] current."""
    if math.isnan(limit_w):
        raise ProfileError("a limit of NaN W is not a limit")
    limit_w = max(0.0, limit_w)
    # 1e-6 absorbs float noise (11040 W / 690 V = 15.999999...) without ever rounding up by a
    # unit that matters.
    if unit is RateUnit.AMPS:
        top = math.floor(electrical.max_current_a + 1e-9)
        value = math.floor(min(limit_w / electrical.watts_per_amp, top) + 1e-6)
        floor_value = math.ceil(electrical.min_current_a - 1e-9)
    else:
        top = math.floor(electrical.max_power_w + 1e-9)
        value = math.floor(min(limit_w, top) + 1e-6)
        floor_value = math.ceil(electrical.min_current_a * electrical.watts_per_amp - 1e-6)
    value = min(value, top)
    return 0 if value < floor_value else value


def _truncate_to_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def plan_periods(
    periods: Sequence[PowerPeriod],
    now: datetime,
    valid_to: datetime,
    max_periods: int,
    unit: RateUnit,
    electrical: ElectricalData,
    fill_limit_w: float,
    tail_s: float = 0.0,
) -> tuple[datetime, list[tuple[int, int]], datetime]:
    """(startSchedule, [(startPeriod s, limit)], validTo) for a dynamic schedule.

    - Periods that ended before `now` are dropped; the current one starts at offset 0.
    - Before a schedule that starts in the future, `fill_limit_w` (the safe limit) applies.
    - Offsets are whole seconds, rounded so that no moment gets a higher limit than asked.
    - Equal neighbours merge; beyond `max_periods` the profile ends (validTo) where the first
      dropped period starts, so the last kept limit never outlives its period: the safe layer
      rules until the caller refreshes with the next chunk.
    - The last `tail_s` seconds before validTo allow at most `fill_limit_w`: the profile ends
      on a level the safe layer would also allow, so a charger whose refresh never comes (the
      agent died) goes on charging at that level instead of at whatever the plan held last.
      A refresh replaces the profile before its tail begins. (Needs two periods: a charger
      that takes one only keeps its single period.)
    """
    if not periods:
        raise ProfileError("a schedule needs at least one period")
    if valid_to <= now:
        raise ProfileError(f"validTo {format_timestamp(valid_to)} is not in the future")
    for earlier, later in itertools.pairwise(periods):
        if later.start <= earlier.start:
            raise ProfileError(
                f"periods must start in increasing order: {format_timestamp(later.start)} "
                f"after {format_timestamp(earlier.start)}"
            )
    start = _truncate_to_second(now) - CLOCK_SKEW_MARGIN
    current = [p for p in periods if p.start < valid_to]
    if not current:
        raise ProfileError("every period starts after validTo")
    # Drop periods superseded before now.
    first = 0
    for i, period in enumerate(current):
        if period.start <= now:
            first = i
    current = current[first:]
    raw: list[tuple[int, int]] = []
    if current[0].start > now:
        raw.append((0, limit_in_unit(fill_limit_w, unit, electrical)))
    for period in current:
        limit = limit_in_unit(period.limit_w, unit, electrical)
        if period.start <= now:
            offset = 0
        else:
            # startPeriod is whole seconds. A rise starts no earlier than asked (ceil), a drop
            # no later (floor), so rounding never lets more through than the schedule does.
            seconds = (period.start - start).total_seconds()
            rising = not raw or limit > raw[-1][1]
            offset = math.ceil(seconds) if rising else math.floor(seconds)
        if raw and offset <= raw[-1][0]:
            # Two changes within one second: the later one rules from that second on (a rise
            # was rounded up to it, a drop only takes effect earlier).
            raw[-1] = (raw[-1][0], limit)
        else:
            raw.append((offset, limit))
    merged: list[tuple[int, int]] = []
    for offset, limit in raw:
        if merged and merged[-1][1] == limit:
            continue
        merged.append((offset, limit))
    tail_limit = limit_in_unit(fill_limit_w, unit, electrical)
    # One period is kept free for the tail whenever the charger takes two or more.
    room = max_periods - 1 if tail_s > 0 and max_periods >= 2 else max_periods
    if len(merged) > room:
        cut = start + timedelta(seconds=merged[room][0])
        # Whole-second offsets can put the cut a fraction of a second before now.
        valid_to = min(valid_to, max(cut, now + timedelta(seconds=1)))
        merged = merged[:room]
    if room == max_periods or merged[-1][1] <= tail_limit:
        return start, merged, valid_to
    # A drop starts no later than asked (floor), like every other drop.
    tail = math.floor((valid_to - timedelta(seconds=tail_s) - start).total_seconds())
    if tail > merged[-1][0]:
        return start, [*merged, (tail, tail_limit)], valid_to
    merged[-1] = (merged[-1][0], tail_limit)
    if len(merged) > 1 and merged[-2][1] == tail_limit:
        merged.pop()
    return start, merged, valid_to


def _period_json(version: ProtocolVersion, offset: int, limit: int, phases: int) -> dict[str, Any]:
    del version  # same shape in both versions
    return {"startPeriod": offset, "limit": limit, "numberPhases": phases}


def _assemble(
    version: ProtocolVersion,
    target: ProfileTarget,
    stack_level: int,
    profile_id: int,
    schedule_id: int,
    unit: RateUnit,
    start_schedule: datetime,
    offsets: list[tuple[int, int]],
    phases: int,
    valid_from: datetime | None,
    valid_to: datetime | None,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "startSchedule": format_timestamp(start_schedule),
        "chargingRateUnit": unit.value,
        "chargingSchedulePeriod": [_period_json(version, o, lim, phases) for o, lim in offsets],
    }
    profile: dict[str, Any] = {
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose_name(version, target.purpose),
        "chargingProfileKind": "Absolute",
    }
    if valid_from is not None:
        profile["validFrom"] = format_timestamp(valid_from)
    if valid_to is not None:
        profile["validTo"] = format_timestamp(valid_to)
    if version is ProtocolVersion.OCPP16:
        profile = {"chargingProfileId": profile_id, **profile}
        if target.purpose is Purpose.TX:
            assert target.transaction_id is not None
            try:
                profile["transactionId"] = int(target.transaction_id)
            except ValueError as exc:
                raise ProfileError(
                    f"1.6 transaction ids are integers, got {target.transaction_id!r}"
                ) from exc
        profile["chargingSchedule"] = schedule
        return {"connectorId": target.evse_id, "csChargingProfiles": profile}
    profile = {"id": profile_id, **profile}
    if target.purpose is Purpose.TX:
        profile["transactionId"] = target.transaction_id
    profile["chargingSchedule"] = [{"id": schedule_id, **schedule}]
    return {"evseId": target.evse_id, "chargingProfile": profile}


def _check_unit(caps: ChargerCapabilities, unit: RateUnit | None) -> RateUnit:
    chosen = unit or caps.preferred_unit
    if chosen not in caps.rate_units:
        raise ProfileError(f"the charger does not take limits in {chosen.value}")
    return chosen


def build_safe_profile(
    version: ProtocolVersion,
    target: ProfileTarget,
    caps: ChargerCapabilities,
    electrical: ElectricalData,
    limit_w: float,
    now: datetime,
    schedule_id: int,
    unit: RateUnit | None = None,
    layout: ProfileLayout = DEFAULT_LAYOUT,
) -> BuiltProfile:
    """The static safe profile: one period, no validTo, startSchedule a day in the past."""
    if target.layer is not Layer.SAFE:
        raise ProfileError("build_safe_profile builds the safe layer only")
    chosen = _check_unit(caps, unit)
    start = _truncate_to_second(now) - SAFE_START_OFFSET
    limit = limit_in_unit(limit_w, chosen, electrical)
    payload = _assemble(
        version,
        target,
        layout.safe_stack_level,
        layout.safe_profile_id,
        schedule_id,
        chosen,
        start,
        [(0, limit)],
        electrical.phases,
        valid_from=None,
        valid_to=None,
    )
    return BuiltProfile(
        "SetChargingProfile",
        payload,
        layout.safe_profile_id,
        layout.safe_stack_level,
        chosen,
        None,
        ((start, limit),),
    )


def build_dynamic_profile(
    version: ProtocolVersion,
    target: ProfileTarget,
    caps: ChargerCapabilities,
    electrical: ElectricalData,
    periods: Sequence[PowerPeriod],
    now: datetime,
    valid_to: datetime,
    schedule_id: int,
    fill_limit_w: float,
    unit: RateUnit | None = None,
    profile_id: int | None = None,
    tail_s: float = 0.0,
    layout: ProfileLayout = DEFAULT_LAYOUT,
) -> BuiltProfile:
    """A dynamic-layer profile for `periods`, ending at `valid_to` (or earlier, see plan).

    `profile_id` overrides the layer's fixed id (used for a station limit split over
    TxProfiles, the layout's `station_split_profile_id_base`).
    """
    if target.layer is not Layer.DYNAMIC:
        raise ProfileError("build_dynamic_profile builds the dynamic layer only")
    chosen = _check_unit(caps, unit)
    level = stack_level_for(target, caps, layout)
    start, offsets, effective_valid_to = plan_periods(
        periods, now, valid_to, caps.max_periods, chosen, electrical, fill_limit_w, tail_s
    )
    profile_id = profile_id if profile_id is not None else profile_id_for(target, layout)
    payload = _assemble(
        version,
        target,
        level,
        profile_id,
        schedule_id,
        chosen,
        start,
        offsets,
        electrical.phases,
        valid_from=start,
        valid_to=effective_valid_to,
    )
    return BuiltProfile(
        "SetChargingProfile",
        payload,
        profile_id,
        level,
        chosen,
        effective_valid_to,
        tuple((start + timedelta(seconds=o), lim) for o, lim in offsets),
    )


def limit_to_watts(
    limit: float, unit: RateUnit, electrical: ElectricalData, phases: int | None
) -> float:
    """A limit read back from a charger (composite schedule) in W."""
    if unit is RateUnit.WATTS:
        return float(limit)
    used_phases = phases if phases in (1, 2, 3) else electrical.phases
    return float(limit) * electrical.nominal_voltage_v * used_phases
