"""The operator's CSMS's own charging profiles on a relayed charger, and the limit they set.

In local-controller mode the CSMS keeps managing its chargers' profiles: its SetChargingProfile
and ClearChargingProfile pass through flexbridge to the charger. `CsmsProfiles` keeps, per
charger, what the charger accepted of them (the relay feeds it the CALL once the charger's
answer says Accepted) and turns them into what flexbridge plans with: the lowest power the
CSMS's profiles allow the station, or one EVSE, over an interval (`limit_w`, in W).

The limit follows the composite rules of 1.6 §3.13 and 2.0.1 K08 for the CSMS's profiles
alone: per purpose, connector/EVSE and instant, the highest stack level with something to say
wins; an EVSE is limited by its TxProfile, else its own TxDefault, else the station-wide
TxDefault; the station by its station maximum and by the sum over its EVSEs. Where the timing
of a profile cannot be placed here (Relative profiles, which count from a transaction's start,
and Absolute or Recurring ones without a start), its lowest period is taken for its whole
validity: the limit may come out lower than the charger's, never higher.

Pure: no I/O, no clock; times are arguments. `to_json`/`from_json` keep it across restarts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ocpp_bridge.capabilities import Purpose, RateUnit
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.profiles import ElectricalData, limit_to_watts
from ocpp_bridge.timestamps import TimestampError, parse_timestamp

_PURPOSES = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,
    "ChargingStationMaxProfile": Purpose.STATION_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}
_RECURRENCE = {"Daily": timedelta(days=1), "Weekly": timedelta(days=7)}
_INF = math.inf


@dataclass(frozen=True, slots=True)
class _Schedule:
    unit: RateUnit
    # (offset from the schedule's start in s, limit in the unit, number of phases or None)
    periods: tuple[tuple[int, float, int | None], ...]
    start: datetime | None
    duration_s: int | None


@dataclass(frozen=True, slots=True)
class _Profile:
    evse_id: int
    profile_id: int
    stack_level: int
    purpose: Purpose
    kind: str  # Absolute, Recurring, Relative
    recurrence: timedelta | None
    valid_from: datetime | None
    valid_to: datetime | None
    transaction_id: str | None
    schedules: tuple[_Schedule, ...]
    raw: dict[str, Any]  # the profile as the CSMS sent it (kept across restarts)

    def placed(self) -> bool:
        """Its periods can be put on the clock (else: its lowest one counts throughout)."""
        return self.kind != "Relative" and all(s.start is not None for s in self.schedules)

    def valid_at(self, moment: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= moment) and (
            self.valid_to is None or moment < self.valid_to
        )

    def limit_at(self, moment: datetime, electrical: ElectricalData) -> float | None:
        """Its limit in W at `moment`; None: it has nothing to say then."""
        if not self.valid_at(moment):
            return None
        if not self.placed():
            return min(_lowest(s, electrical) for s in self.schedules)
        found: list[float] = []
        for schedule in self.schedules:
            assert schedule.start is not None
            offset = (moment - schedule.start).total_seconds()
            if offset < 0:
                continue
            if self.recurrence is not None:
                offset %= self.recurrence.total_seconds()
            if schedule.duration_s is not None and offset >= schedule.duration_s:
                continue
            period = None
            for entry in schedule.periods:
                if entry[0] <= offset:
                    period = entry
            if period is not None:
                found.append(_watts(schedule.unit, period, electrical))
        # Several schedules (2.0.1, the EV picks one): the lowest, whichever is picked.
        return min(found) if found else None

    def changes(self, start: datetime, end: datetime) -> Iterable[datetime]:
        """Instants within (start, end) where its limit may change."""
        for moment in (self.valid_from, self.valid_to):
            if moment is not None:
                yield moment
        if not self.placed():
            return
        for schedule in self.schedules:
            assert schedule.start is not None
            edges = [p[0] for p in schedule.periods]
            if schedule.duration_s is not None:
                edges.append(schedule.duration_s)
            origins = [schedule.start]
            if self.recurrence is not None:
                origin = schedule.start + max(0, (start - schedule.start) // self.recurrence) * (
                    self.recurrence
                )
                origins = []
                while origin < end:
                    origins.append(origin)
                    origin += self.recurrence
            for origin in origins:
                for edge in edges:
                    yield origin + timedelta(seconds=edge)


def _watts(unit: RateUnit, period: tuple[int, float, int | None], e: ElectricalData) -> float:
    return limit_to_watts(period[1], unit, e, period[2])


def _lowest(schedule: _Schedule, electrical: ElectricalData) -> float:
    return min(_watts(schedule.unit, p, electrical) for p in schedule.periods)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except TimestampError:
        return None


def _schedule(data: dict[str, Any]) -> _Schedule:
    periods = tuple(
        (
            int(p["startPeriod"]),
            float(p["limit"]),
            int(p["numberPhases"]) if p.get("numberPhases") is not None else None,
        )
        for p in data["chargingSchedulePeriod"]
    )
    if not periods:
        raise ValueError("a charging schedule without periods")
    duration = data.get("duration")
    return _Schedule(
        RateUnit(data["chargingRateUnit"]),
        tuple(sorted(periods)),
        _time(data.get("startSchedule")),
        None if duration is None else int(duration),
    )


def _parse(version: ProtocolVersion, evse_id: int, profile: dict[str, Any]) -> _Profile:
    schedules: tuple[_Schedule, ...]
    if version is ProtocolVersion.OCPP16:
        profile_id = int(profile["chargingProfileId"])
        schedules = (_schedule(profile["chargingSchedule"]),)
    else:
        profile_id = int(profile["id"])
        schedules = tuple(_schedule(s) for s in profile["chargingSchedule"])
    kind = str(profile["chargingProfileKind"])
    recurrence = _RECURRENCE.get(profile.get("recurrencyKind", "")) if kind == "Recurring" else None
    transaction_id = profile.get("transactionId")
    return _Profile(
        evse_id=evse_id,
        profile_id=profile_id,
        stack_level=int(profile["stackLevel"]),
        purpose=_PURPOSES[profile["chargingProfilePurpose"]],
        kind=kind,
        recurrence=recurrence,
        valid_from=_time(profile.get("validFrom")),
        valid_to=_time(profile.get("validTo")),
        transaction_id=None if transaction_id is None else str(transaction_id),
        schedules=schedules,
        raw=profile,
    )


class CsmsProfiles:
    """The CSMS's profiles one charger holds (see the module docstring)."""

    def __init__(self, version: ProtocolVersion) -> None:
        self.version = version
        self._profiles: list[_Profile] = []

    def __len__(self) -> int:
        return len(self._profiles)

    def __bool__(self) -> bool:
        return bool(self._profiles)

    # --- what the charger accepted ---------------------------------------------------------------

    def set(self, payload: dict[str, Any]) -> None:
        """A SetChargingProfile request the charger accepted."""
        if self.version is ProtocolVersion.OCPP16:
            evse_id, raw = int(payload["connectorId"]), payload["csChargingProfiles"]
        else:
            evse_id, raw = int(payload["evseId"]), payload["chargingProfile"]
        self._add(_parse(self.version, evse_id, raw))

    def _add(self, profile: _Profile) -> None:
        def replaced(old: _Profile) -> bool:
            # The same id replaces (1.6 §3.13.2, K01.FR.05); in 1.6 also the same stack level
            # and purpose on the same connector.
            return old.profile_id == profile.profile_id or (
                self.version is ProtocolVersion.OCPP16
                and old.evse_id == profile.evse_id
                and old.purpose is profile.purpose
                and old.stack_level == profile.stack_level
            )

        self._profiles = [p for p in self._profiles if not replaced(p)] + [profile]

    def clear(self, payload: dict[str, Any]) -> None:
        """A ClearChargingProfile request the charger accepted."""
        if self.version is ProtocolVersion.OCPP16:
            profile_id = payload.get("id")
            criteria = payload
            evse_id = payload.get("connectorId")
        else:
            profile_id = payload.get("chargingProfileId")
            criteria = payload.get("chargingProfileCriteria") or {}
            evse_id = criteria.get("evseId")
        purpose = criteria.get("chargingProfilePurpose")
        level = criteria.get("stackLevel")

        def cleared(p: _Profile) -> bool:
            if profile_id is not None:
                return bool(p.profile_id == profile_id)
            return (
                (evse_id is None or p.evse_id == evse_id)
                and (purpose is None or p.purpose is _PURPOSES.get(purpose))
                and (level is None or p.stack_level == level)
            )

        self._profiles = [p for p in self._profiles if not cleared(p)]

    def transaction_ended(self, transaction_id: str) -> None:
        """A TxProfile ends with its transaction (1.6 §3.13.1, K01.FR.05)."""
        self._profiles = [
            p
            for p in self._profiles
            if not (p.purpose is Purpose.TX and p.transaction_id == transaction_id)
        ]

    # --- the limit ---------------------------------------------------------------------------

    def limit_w(
        self,
        start: datetime,
        end: datetime,
        electrical: ElectricalData,
        *,
        evse_id: int = 0,
        evses: int = 1,
    ) -> float | None:
        """The lowest power (W) the CSMS's profiles allow in [start, end): the whole station
        (`evse_id` 0, with `evses` EVSEs) or one EVSE; None when they set no limit then."""
        if not self._profiles:
            return None
        instants = {start}
        for profile in self._profiles:
            instants.update(m for m in profile.changes(start, end) if start < m < end)
        lowest = min(self._at(m, electrical, evse_id, max(1, evses)) for m in instants)
        return None if lowest == _INF else lowest

    def _top(
        self, moment: datetime, electrical: ElectricalData, purpose: Purpose, evse_id: int
    ) -> float:
        """The highest stack level of `purpose` on `evse_id` that says something now."""
        found: tuple[int, float] | None = None
        for p in self._profiles:
            if p.purpose is not purpose or p.evse_id != evse_id:
                continue
            value = p.limit_at(moment, electrical)
            if value is not None and (found is None or p.stack_level > found[0]):
                found = (p.stack_level, value)
        return _INF if found is None else found[1]

    def _evse(self, moment: datetime, electrical: ElectricalData, evse_id: int) -> float:
        tx = self._top(moment, electrical, Purpose.TX, evse_id)
        if tx != _INF:
            return tx
        own = self._top(moment, electrical, Purpose.TX_DEFAULT, evse_id)
        if own != _INF:
            return own
        return self._top(moment, electrical, Purpose.TX_DEFAULT, 0)

    def _at(self, moment: datetime, electrical: ElectricalData, evse_id: int, evses: int) -> float:
        station = self._top(moment, electrical, Purpose.STATION_MAX, 0)
        if evse_id:
            return min(station, self._evse(moment, electrical, evse_id))
        ids = set(range(1, evses + 1)) | {p.evse_id for p in self._profiles if p.evse_id}
        return min(station, sum(self._evse(moment, electrical, e) for e in sorted(ids)))

    # --- across restarts ---------------------------------------------------------------------

    def to_json(self) -> list[list[Any]]:
        return [[p.evse_id, p.raw] for p in self._profiles]

    def restore(self, saved: list[list[Any]]) -> None:
        for evse_id, raw in saved:
            self._add(_parse(self.version, int(evse_id), dict(raw)))
