"""Charging profiles and the composite schedule (pure: no clock, no I/O; moments are
arguments).

The station keeps the profiles it accepts and computes its composite schedule as OCPP
describes it (1.6 §3.13, 2.0.1 K01/K08): per purpose the valid profile with the highest stack
level, validity from validFrom/validTo, schedule start and duration (Absolute, Recurring,
Relative), EVSE limit = min(station max, TxProfile or else TxDefault), and the station max
shared by all EVSEs. That is what the fail-safe tests assert on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp_bridge.simulator.common import parse

MAX_PURPOSES = frozenset({"ChargePointMaxProfile", "ChargingStationMaxProfile"})
TX_PURPOSE = "TxProfile"
TX_DEFAULT_PURPOSE = "TxDefaultProfile"
VOLTS = 230.0
# What a charger with no profile at all reports (EVerest: CompositeScheduleDefaultLimitAmps).
DEFAULT_LIMIT_A = 48.0
# IEC 61851-1: an EV does not charge on less than 6 A per phase; below that it pauses.
MIN_CURRENT_A = 6.0
RECURRENCE_S = {"Daily": 86_400, "Weekly": 7 * 86_400}
# How far ahead the station looks for the next change of its limits.
_HORIZON = timedelta(days=2)


class ProfileRefused(ValueError):
    """A SetChargingProfile the station refuses; `reason` is the 2.0.1 reasonCode."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class StoredProfile:
    """One installed charging profile, as the station evaluates it."""

    profile_id: int
    evse_id: int
    stack_level: int
    purpose: str
    valid_from: datetime | None
    valid_to: datetime | None
    start: datetime | None  # startSchedule; None for Relative profiles
    unit: str
    periods: list[tuple[int, float, int]]  # (startPeriod s, limit, numberPhases)
    transaction_id: str | None = None
    kind: str = "Absolute"
    recurrency: str | None = None
    duration_s: int | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)  # as received

    def valid_at(self, moment: datetime) -> bool:
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return not (self.valid_to is not None and moment >= self.valid_to)

    def schedule_start(self, moment: datetime, relative_start: datetime | None) -> datetime | None:
        """Where the schedule's startPeriod 0 lies for `moment` (1.6 §7.8, 2.0.1 K01)."""
        if self.kind == "Relative":
            return relative_start
        if self.start is None or moment < self.start:
            return None
        if self.kind == "Recurring" and self.recurrency in RECURRENCE_S:
            period = RECURRENCE_S[self.recurrency]
            cycles = int((moment - self.start).total_seconds() // period)
            return self.start + timedelta(seconds=cycles * period)
        return self.start

    def limit_a_at(
        self,
        moment: datetime,
        relative_start: datetime | None = None,
        volts: float = VOLTS,
    ) -> float | None:
        """The profile's limit in A per phase at `moment`, None where it says nothing.

        A W limit is total power over the period's phases (1.6 §7.13, 2.0.1 K01): A = W /
        (nominal V x numberPhases). Past startSchedule + duration the profile is silent and
        lower stack levels rule (1.6 §3.13.2).
        """
        if not self.valid_at(moment):
            return None
        start = self.schedule_start(moment, relative_start)
        if start is None or moment < start:
            return None
        offset = (moment - start).total_seconds()
        if self.duration_s is not None and offset >= self.duration_s:
            return None
        current: tuple[int, float, int] | None = None
        for period in self.periods:
            if period[0] <= offset:
                current = period
        if current is None:
            return None
        _, limit, phases = current
        return limit if self.unit == "A" else limit / (volts * phases)

    def change_points(
        self, after: datetime, until: datetime, relative_starts: Iterable[datetime]
    ) -> set[datetime]:
        """Moments in (after, until] where this profile's say may change."""
        starts: list[datetime] = []
        if self.kind == "Relative":
            starts = list(relative_starts)
        elif self.start is not None:
            if self.kind == "Recurring" and self.recurrency in RECURRENCE_S:
                period = timedelta(seconds=RECURRENCE_S[self.recurrency])
                first = self.schedule_start(max(after, self.start), None) or self.start
                moment = first
                while moment <= until:
                    starts.append(moment)
                    moment += period
            else:
                starts = [self.start]
        points: set[datetime] = set()
        for bound in (self.valid_from, self.valid_to):
            if bound is not None:
                points.add(bound)
        for start in starts:
            points.update(start + timedelta(seconds=p[0]) for p in self.periods)
            if self.duration_s is not None:
                points.add(start + timedelta(seconds=self.duration_s))
        return {p for p in points if after < p <= until}


def stored_profile(
    profile: dict[str, Any], schedule: dict[str, Any], profile_id: int, evse_id: int
) -> StoredProfile:
    """A received profile (snake_case, as the library hands it over) as the store keeps it."""
    transaction_id = profile.get("transaction_id")
    start_text = schedule.get("start_schedule")
    return StoredProfile(
        profile_id=int(profile_id),
        evse_id=int(evse_id),
        stack_level=int(profile["stack_level"]),
        purpose=profile["charging_profile_purpose"],
        valid_from=parse(profile["valid_from"]) if profile.get("valid_from") else None,
        valid_to=parse(profile["valid_to"]) if profile.get("valid_to") else None,
        start=parse(start_text) if start_text else None,
        unit=schedule["charging_rate_unit"],
        periods=[
            (int(p["start_period"]), float(p["limit"]), int(p.get("number_phases") or 3))
            for p in schedule["charging_schedule_period"]
        ],
        transaction_id=None if transaction_id is None else str(transaction_id),
        kind=profile.get("charging_profile_kind", "Absolute"),
        recurrency=profile.get("recurrency_kind"),
        duration_s=None if schedule.get("duration") is None else int(schedule["duration"]),
        payload=profile,
    )


@dataclass(frozen=True)
class ActiveTransaction:
    transaction_id: str
    started_at: datetime


@dataclass(frozen=True)
class StoreLimits:
    """What the station advertises and enforces (1.6 configuration keys, 2.0.1 variables)."""

    max_stack_level: int = 5
    max_periods: int = 24
    max_installed: int = 20
    units: frozenset[str] = frozenset({"A"})


class ProfileStore:
    """The station's installed profiles, its transactions, and the rules that combine them.

    Pure: no clock, no I/O; moments are arguments. ``history`` keeps every received profile
    payload (also refused ones) in arrival order for tests.
    """

    def __init__(
        self,
        evse_ids: Iterable[int] = (1,),
        default_limit_a: float = DEFAULT_LIMIT_A,
        volts: float = VOLTS,
        phases: int = 3,
        limits: StoreLimits | None = None,
        strict_2_0_1: bool = False,
    ) -> None:
        self.evse_ids = tuple(sorted(set(evse_ids)))
        if not self.evse_ids or self.evse_ids[0] < 1:
            raise ValueError(f"EVSE ids must be >= 1, got {self.evse_ids}")
        self.default_limit_a = default_limit_a
        self.volts = volts
        self.phases = phases
        self.limits = limits or StoreLimits()
        # 2.0.1 refuses what 1.6 silently replaces (K01.FR.06/53, EVerest's checks).
        self.strict_2_0_1 = strict_2_0_1
        self.profiles: list[StoredProfile] = []
        self.history: list[dict[str, Any]] = []
        self.transactions: dict[int, ActiveTransaction] = {}

    # --- transactions -------------------------------------------------------------------------

    def transaction_started(self, evse_id: int, transaction_id: str, at: datetime) -> None:
        self.transactions[evse_id] = ActiveTransaction(str(transaction_id), at)

    def transaction_ended(self, evse_id: int) -> None:
        """TxProfiles live as long as their transaction (1.6 §3.13.1, 2.0.1 K01.FR.?)."""
        ended = self.transactions.pop(evse_id, None)
        if ended is not None:
            self.profiles = [
                p
                for p in self.profiles
                if not (p.purpose == TX_PURPOSE and p.transaction_id == ended.transaction_id)
            ]

    # --- installing ---------------------------------------------------------------------------

    def check(self, profile: StoredProfile) -> None:
        """Raise ProfileRefused for a profile this station must not accept."""
        p = profile
        if p.evse_id != 0 and p.evse_id not in self.evse_ids:
            raise ProfileRefused("EvseDoesNotExist", f"EVSE {p.evse_id}")
        if not 0 <= p.stack_level <= self.limits.max_stack_level:
            raise ProfileRefused(
                "InvalidStackLevel", f"{p.stack_level} > {self.limits.max_stack_level}"
            )
        if p.unit not in self.limits.units:
            raise ProfileRefused("InvalidSchedule", f"rate unit {p.unit} not supported")
        if not p.periods or len(p.periods) > self.limits.max_periods:
            raise ProfileRefused("InvalidSchedule", f"{len(p.periods)} periods")
        if any(limit < 0 for _, limit, _ in p.periods):
            raise ProfileRefused("InvalidSchedule", "negative limit")
        if any(not 1 <= phases <= 3 for _, _, phases in p.periods):
            raise ProfileRefused("InvalidSchedule", "numberPhases outside 1..3")
        offsets = [o for o, _, _ in p.periods]
        if offsets[0] != 0 or offsets != sorted(set(offsets)):
            # K01.FR.31 (first startPeriod 0) and K01.FR.35 (increasing).
            raise ProfileRefused("InvalidSchedule", f"startPeriods {offsets}")
        if p.kind in ("Absolute", "Recurring") and p.start is None:
            raise ProfileRefused(
                "ChargingProfileMissingRequiredStartSchedule", f"{p.kind} profile"
            )  # K01.FR.40, EVerest in both versions
        if p.kind == "Recurring" and p.recurrency not in RECURRENCE_S:
            raise ProfileRefused("InvalidSchedule", "Recurring without recurrencyKind")
        if p.kind == "Relative" and p.start is not None and self.strict_2_0_1:
            raise ProfileRefused("ChargingProfileExtraneousStartSchedule", "K01.FR.41")
        if p.purpose in MAX_PURPOSES:
            if p.evse_id != 0:
                raise ProfileRefused("InvalidEvseId", f"{p.purpose} on EVSE {p.evse_id}")
            if p.kind == "Relative":
                raise ProfileRefused("InvalidProfileKind", f"{p.purpose} cannot be Relative")
        if p.purpose == TX_PURPOSE:
            if p.evse_id == 0:
                raise ProfileRefused("InvalidEvseId", "TxProfile on EVSE 0")
            active = self.transactions.get(p.evse_id)
            if active is None:
                raise ProfileRefused(
                    "TxProfileEvseHasNoActiveTransaction", f"EVSE {p.evse_id} has none"
                )
            if p.transaction_id is not None and p.transaction_id != active.transaction_id:
                raise ProfileRefused(
                    "TxProfileTransactionNotOnEvse",
                    f"{p.transaction_id} is not {active.transaction_id}",
                )
            if p.transaction_id is None and self.strict_2_0_1:
                raise ProfileRefused("TxProfileMissingTransactionId", "K01.FR.03")
        if self.strict_2_0_1:
            for other in self.profiles:
                if other.profile_id == p.profile_id:
                    continue  # K01.FR.05: same id replaces
                if (
                    other.purpose == p.purpose
                    and other.stack_level == p.stack_level
                    and _overlap(other, p)
                ):
                    if other.evse_id == p.evse_id and (
                        p.purpose != TX_PURPOSE or other.transaction_id == p.transaction_id
                    ):
                        raise ProfileRefused(
                            "DuplicateProfileValidityPeriod", f"profile {other.profile_id}"
                        )  # K01.FR.06
                    if p.purpose == TX_DEFAULT_PURPOSE and 0 in (other.evse_id, p.evse_id):
                        raise ProfileRefused(
                            "DuplicateTxDefaultProfileFound", f"profile {other.profile_id}"
                        )  # K01.FR.52 as EVerest enforces it
        replaced = sum(1 for o in self.profiles if self._replaces(p, o))
        if len(self.profiles) - replaced + 1 > self.limits.max_installed:
            raise ProfileRefused("MaxProfilesInstalled", f"{self.limits.max_installed}")

    @staticmethod
    def _replaces(new: StoredProfile, old: StoredProfile) -> bool:
        # Same id, or (1.6 §3.13.2) same stack level + purpose on the same connector.
        return old.profile_id == new.profile_id or (
            old.stack_level == new.stack_level
            and old.purpose == new.purpose
            and old.evse_id == new.evse_id
            and (new.purpose != TX_PURPOSE or old.transaction_id == new.transaction_id)
        )

    def install(self, profile: StoredProfile) -> None:
        self.profiles = [p for p in self.profiles if not self._replaces(profile, p)]
        self.profiles.append(profile)

    def clear(
        self,
        profile_id: int | None = None,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> bool:
        """1.6 ClearChargingProfile / 2.0.1 K10: by id, or by the criteria given (all if none).

        External constraints are never the CSMS's to clear (2.0.1 K10.FR.?; K01.FR.22).
        """

        def matches(p: StoredProfile) -> bool:
            if p.purpose == "ChargingStationExternalConstraints":
                return False
            if profile_id is not None:
                return p.profile_id == profile_id
            return (
                (evse_id is None or p.evse_id == evse_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )

        before = len(self.profiles)
        self.profiles = [p for p in self.profiles if not matches(p)]
        return len(self.profiles) != before

    # --- evaluating ---------------------------------------------------------------------------

    def _relative_start(self, evse_id: int, moment: datetime) -> datetime:
        active = self.transactions.get(evse_id)
        # EVerest: without a transaction a Relative schedule starts at the moment asked.
        return active.started_at if active is not None else moment

    def _winner(
        self,
        purposes: frozenset[str],
        evse_id: int,
        moment: datetime,
        relative_start: datetime,
    ) -> float | None:
        """Within a purpose the highest stack level with something to say at `moment` wins; at
        equal levels the EVSE's own profile beats the one for all EVSEs."""
        best: tuple[int, int] | None = None
        limit: float | None = None
        scope = {0, evse_id} if evse_id else {0}
        active = self.transactions.get(evse_id)
        for p in self.profiles:
            if p.purpose not in purposes or p.evse_id not in scope:
                continue
            if p.purpose == TX_PURPOSE and (
                active is None
                or (p.transaction_id is not None and p.transaction_id != active.transaction_id)
            ):
                continue
            value = p.limit_a_at(moment, relative_start, self.volts)
            if value is None:
                continue
            key = (p.stack_level, p.evse_id)
            if best is None or key > best:
                best, limit = key, value
        return limit

    def station_max_a_at(self, moment: datetime) -> float | None:
        """The station-wide maximum (shared by all EVSEs), None when no profile sets one."""
        return self._winner(MAX_PURPOSES, 0, moment, moment)

    def evse_limit_a_at(self, moment: datetime, evse_id: int) -> float:
        """min(station max, TxProfile or else TxDefault or else the default) for one EVSE."""
        start = self._relative_start(evse_id, moment)
        limit = self._winner(frozenset({TX_PURPOSE}), evse_id, moment, start)
        if limit is None:
            limit = self._winner(frozenset({TX_DEFAULT_PURPOSE}), evse_id, moment, start)
        if limit is None:
            limit = self.default_limit_a
        station = self.station_max_a_at(moment)
        return limit if station is None else min(limit, station)

    def limit_a_at(self, moment: datetime, evse_id: int = 0) -> float:
        """Per-phase A the station allows at `moment`: one EVSE, or (0) the whole station,
        i.e. min(station max, sum of what its EVSEs may draw)."""
        if evse_id:
            return self.evse_limit_a_at(moment, evse_id)
        total = sum(self.evse_limit_a_at(moment, e) for e in self.evse_ids)
        station = self.station_max_a_at(moment)
        return total if station is None else min(total, station)

    def change_points(self, after: datetime, until: datetime) -> list[datetime]:
        starts = [t.started_at for t in self.transactions.values()]
        points: set[datetime] = set()
        for p in self.profiles:
            points |= p.change_points(after, until, starts)
        return sorted(points)

    def next_change(self, after: datetime) -> datetime | None:
        points = self.change_points(after, after + _HORIZON)
        return points[0] if points else None

    def composite(
        self, start: datetime, duration_s: int, evse_id: int = 0
    ) -> list[tuple[int, float]]:
        """GetCompositeSchedule (1.6 §5.7, 2.0.1 K08) in A per phase: (startPeriod, limit)."""
        end = start + timedelta(seconds=duration_s)
        moments = [start, *(m for m in self.change_points(start, end) if m < end)]
        periods: list[tuple[int, float]] = []
        for moment in moments:
            limit = round(self.limit_a_at(moment, evse_id), 1)
            if not periods or periods[-1][1] != limit:
                periods.append((int((moment - start).total_seconds()), limit))
        return periods


def _overlap(a: StoredProfile, b: StoredProfile) -> bool:
    lo = max(a.valid_from or datetime.min.replace(tzinfo=UTC), b.valid_from or _MIN)
    hi = min(a.valid_to or _MAX, b.valid_to or _MAX)
    return lo < hi


_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)
