"""Simulated charging stations (OCPP 1.6J and 2.0.1, client side, on the `ocpp` library).

What flexbridge's demo, end-to-end tests and benchmarks connect instead of real chargers. A
`SimulatedStation` has N EVSEs with one connector each, connects to a CSMS URL with security
profile 1 (HTTP Basic) or TLS, reconnects with back-off when the CSMS goes away, boots, reports
status, sends heartbeats at the interval the CSMS gave, and serves EV sessions: an EV plugs in
(`plug_in`), draws min(EV maximum, what the charging profiles allow now) with IEC 61851's
0-or-at-least-6 A rule, the station meters it and reports it (1.6 MeterValues, 2.0.1
TransactionEvent), and the EV leaves at its departure time.

The station keeps the profiles it accepts and computes its composite schedule as OCPP
describes it (1.6 §3.13, 2.0.1 K01/K08): per purpose the valid profile with the highest stack
level, validity from validFrom/validTo, schedule start and duration (Absolute, Recurring,
Relative), EVSE limit = min(station max, TxProfile or else TxDefault), and the station max
shared by all EVSEs. That is what the fail-safe tests assert on.

Independence: this module imports nothing from the rest of `ocpp_bridge`, so the tests that
run the bridge against it check the bridge against a second, separately written reading of
the specification, not against itself.

Time: every station runs on an injected clock (`now()` UTC-aware, ``async sleep(seconds)`` in
the clock's own time; default the system clock). With a scaled clock a morning of sessions
passes in a minute; network timeouts stay in real time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import signal
import ssl
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast

import websockets
from ocpp.exceptions import OCPPError
from ocpp.routing import after as _library_after
from ocpp.routing import on as _library_on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from websockets.exceptions import ConnectionClosed, InvalidHandshake

log = logging.getLogger(__name__)
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def on(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@on`` with types (the library ships none)."""
    return cast(Callable[[_Handler], _Handler], _library_on(action))


def after(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@after``: runs once the CALLRESULT is sent, so it may send CALLs."""
    return cast(Callable[[_Handler], _Handler], _library_after(action))


# The `ocpp` library logs every frame at INFO; a site of simulated stations would drown the
# demo's log. Frames stay available at DEBUG-level configuration of this logger.
_frame_log = logging.getLogger(f"{__name__}.frames")
_frame_log.setLevel(logging.WARNING)

MAX_PURPOSES = frozenset({"ChargePointMaxProfile", "ChargingStationMaxProfile"})
TX_PURPOSE = "TxProfile"
TX_DEFAULT_PURPOSE = "TxDefaultProfile"
VOLTS = 230.0
# What a charger with no profile at all reports (EVerest: CompositeScheduleDefaultLimitAmps).
DEFAULT_LIMIT_A = 48.0
# IEC 61851-1: an EV does not charge on less than 6 A per phase; below that it pauses.
MIN_CURRENT_A = 6.0
RECURRENCE_S = {"Daily": 86_400, "Weekly": 7 * 86_400}
# Energy below this counts as nothing left to charge (float noise of the integration).
_FULL_EPSILON_WH = 1e-6
# How far ahead the station looks for the next change of its limits.
_HORIZON = timedelta(days=2)


class ProtocolName(StrEnum):
    """The OCPP-J subprotocols a simulated station speaks."""

    OCPP16 = "ocpp1.6"
    OCPP201 = "ocpp2.0.1"


# --- time ------------------------------------------------------------------------------------


class SimClock(Protocol):
    """`agent.clock.Clock` by shape: stations accept the agent's clocks without importing it."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def ts(moment: datetime) -> str:
    """UTC with at most millisecond precision (CitrineOS-style validators reject more)."""
    utc = moment.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.isoformat(timespec=spec).replace("+00:00", "Z")


def parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- charging profiles (pure) ----------------------------------------------------------------


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


# --- electrical model (pure) -----------------------------------------------------------------


def share_current(demands_a: Sequence[float], cap_a: float, min_a: float) -> list[float]:
    """Split a station-wide current cap over EVSEs the way a station's load manager does.

    Each EVSE gets at most what it asks for; the cap is shared equally among those that ask
    for more (water filling); an EVSE whose share would fall below the minimum current is
    paused (0) and its share goes to the others (IEC 61851: no charging below ~6 A).
    """
    if cap_a < 0 or min_a < 0:
        raise ValueError(f"cap {cap_a} A and minimum {min_a} A must be >= 0")
    active = [i for i, d in enumerate(demands_a) if d >= min_a and d > 0]
    shares = [0.0] * len(demands_a)
    while active:
        remaining = cap_a
        pending = sorted(active, key=lambda i: demands_a[i])
        allocation: dict[int, float] = {}
        while pending:
            equal = remaining / len(pending)
            smallest = pending[0]
            if demands_a[smallest] <= equal:
                allocation[smallest] = demands_a[smallest]
                remaining -= demands_a[smallest]
                pending.pop(0)
            else:
                for i in pending:
                    allocation[i] = equal
                pending = []
        starved = [i for i in active if allocation[i] < min_a]
        if not starved:
            for i, amps in allocation.items():
                shares[i] = amps
            return shares
        # Pause the EVSE that asks least (ties: the last one) and share again.
        active.remove(min(starved, key=lambda i: (demands_a[i], -i)))
    return shares


def _raise_if_cancelling() -> None:
    """Python 3.11's asyncio.wait_for (used by the `ocpp` library for every CALL) can swallow
    a cancellation that races with the response (gh-86296); loops check for it themselves."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _finish(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again any that swallowed it."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a link that died is reported where it is noticed


def ev_current_a(ev_max_power_w: float, phases: int, volts: float) -> float:
    return ev_max_power_w / (volts * phases)


# --- protocol adapters (one per connection) --------------------------------------------------


class ProfileListener(Protocol):
    """What a station does around profile changes (integrate energy, then re-plan power), and
    for a CSMS's TriggerMessage (send the current state it asks for)."""

    def profiles_changing(self) -> None: ...

    def profiles_changed(self, installed: StoredProfile | None = None) -> None: ...

    def triggered(self, requested: str, evse_id: int | None) -> bool: ...


class _Sim:
    """State and handlers both versions share; the version classes add the payload shapes."""

    store: ProfileStore
    refuse_purposes: set[str]
    calls_received: list[str]
    clock: SimClock
    listener: ProfileListener | None
    strict: bool
    id: str
    _connection: Any
    route_map: dict[str, dict[str, Any]]
    _pending_starts: dict[str, tuple[int, datetime]]
    last_id_tag_status: str | None

    _library_class: Any  # the `ocpp` library's ChargePoint of the version

    def __init__(
        self,
        charger_id: str,
        connection: Any,
        refuse_purposes: set[str] | None = None,
        *,
        store: ProfileStore | None = None,
        clock: SimClock | None = None,
        listener: ProfileListener | None = None,
        strict: bool = True,
        response_timeout_s: float = 10.0,
    ) -> None:
        self._library_class.__init__(
            self, charger_id, connection, response_timeout=response_timeout_s, logger=_frame_log
        )
        self.store = store if store is not None else self._default_store()
        self.refuse_purposes = set(refuse_purposes or ())
        self.calls_received = []
        self.clock = clock or RealClock()
        self.listener = listener
        self.strict = strict
        self._pending_starts = {}
        self.last_id_tag_status = None
        if not strict:
            for route in self.route_map.values():
                route["_skip_schema_validation"] = True
        self._advertise(self.store.limits)

    @staticmethod
    def _default_store() -> ProfileStore:
        return ProfileStore()

    def _advertise(self, limits: StoreLimits) -> None:
        """The configuration keys (1.6) or variables (2.0.1) that tell the CSMS the limits."""

    async def call(self, payload: Any, suppress: bool = True, **kwargs: Any) -> Any:
        kwargs.setdefault("skip_schema_validation", not self.strict)
        return await super().call(payload, suppress, **kwargs)  # type: ignore[misc]

    def _now(self) -> datetime:
        return self.clock.now()

    def _install(self, profile: StoredProfile) -> None:
        self.store.check(profile)
        if self.listener is not None:
            self.listener.profiles_changing()
        self.store.install(profile)
        if self.listener is not None:
            self.listener.profiles_changed(profile)

    def _clear(self, **criteria: Any) -> bool:
        if self.listener is not None:
            self.listener.profiles_changing()
        found = self.store.clear(**criteria)
        if self.listener is not None:
            self.listener.profiles_changed()
        return found

    def _composite(self, evse_id: int, duration: int, unit: str | None) -> dict[str, Any] | None:
        if evse_id != 0 and evse_id not in self.store.evse_ids:
            return None
        now = self._now().replace(microsecond=0)
        periods = self.store.composite(now, duration, evse_id)
        wanted = unit if unit in ("A", "W") else "A"
        phases = self.store.phases
        out: list[dict[str, Any]] = []
        for offset, amps in periods:
            limit = amps if wanted == "A" else float(math.floor(amps * self.store.volts * phases))
            out.append({"startPeriod": offset, "limit": limit})
        return {
            "start": now,
            "unit": wanted,
            "periods": out,
        }

    async def route_message(self, raw_msg: str) -> None:
        """A StartTransaction.conf gives the transaction id: known before the next frame
        (e.g. the TxProfile a CSMS sends right after it) is handled, as on a real charger."""
        if self._pending_starts:
            with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
                message = json.loads(raw_msg)
                if message[0] == 3 and message[1] in self._pending_starts:
                    evse_id, started_at = self._pending_starts.pop(message[1])
                    self.store.transaction_started(
                        evse_id, str(message[2]["transactionId"]), started_at
                    )
        await super().route_message(raw_msg)  # type: ignore[misc]


class SimCharger16(_Sim, CP16):  # type: ignore[misc]
    """One OCPP 1.6J connection of a simulated charge point."""

    _library_class = CP16
    configuration: dict[str, str]

    def _advertise(self, limits: StoreLimits) -> None:
        self.configuration = {
            "ChargeProfileMaxStackLevel": str(limits.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": ",".join(
                {"A": "Current", "W": "Power"}[u] for u in sorted(limits.units)
            ),
            "ChargingScheduleMaxPeriods": str(limits.max_periods),
            "MaxChargingProfilesInstalled": str(limits.max_installed),
            "NumberOfConnectors": str(len(self.store.evse_ids)),
        }

    @on(A16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **kwargs: Any) -> Any:
        self.calls_received.append("GetConfiguration")
        wanted = key or list(self.configuration)
        known = [
            {"key": k, "readonly": True, "value": self.configuration[k]}
            for k in wanted
            if k in self.configuration
        ]
        unknown = [k for k in wanted if k not in self.configuration]
        return r16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(A16.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **kwargs: Any
    ) -> Any:
        self.calls_received.append("SetChargingProfile")
        profile = cs_charging_profiles
        self.store.history.append(profile)
        if profile["charging_profile_purpose"] in self.refuse_purposes:
            return r16.SetChargingProfile(status="NotSupported")
        stored = stored_profile(
            profile, profile["charging_schedule"], profile["charging_profile_id"], connector_id
        )
        try:
            self._install(stored)
        except ProfileRefused as refused:
            log.info("%s refused a profile: %s", self.id, refused)
            return r16.SetChargingProfile(status="Rejected")
        return r16.SetChargingProfile(status="Accepted")

    @on(A16.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("ClearChargingProfile")
        found = self._clear(
            profile_id=id,
            evse_id=connector_id,
            purpose=charging_profile_purpose,
            stack_level=stack_level,
        )
        return r16.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A16.get_composite_schedule)
    def on_get_composite_schedule(
        self,
        connector_id: int,
        duration: int,
        charging_rate_unit: str | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("GetCompositeSchedule")
        composite = self._composite(connector_id, duration, charging_rate_unit)
        if composite is None:
            return r16.GetCompositeSchedule(status="Rejected")
        return r16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=ts(composite["start"]),
            charging_schedule={
                "duration": duration,
                "startSchedule": ts(composite["start"]),
                "chargingRateUnit": composite["unit"],
                "chargingSchedulePeriod": composite["periods"],
            },
        )

    @on(A16.trigger_message)
    def on_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("TriggerMessage")
        known = requested_message in ("StatusNotification", "MeterValues", "Heartbeat")
        return r16.TriggerMessage(status="Accepted" if known else "NotImplemented")

    @after(A16.trigger_message)
    def after_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **kwargs: Any
    ) -> None:
        """The triggered message goes out after the CALLRESULT, through the station's outbox
        (1.6 F04: the requested message follows the response)."""
        if self.listener is not None:
            self.listener.triggered(requested_message, connector_id)

    # --- messages the charge point sends --------------------------------------------------

    async def boot(self, vendor: str = "Sim", model: str = "Sim16", **extra: Any) -> Any:
        return await self.call(
            c16.BootNotification(charge_point_vendor=vendor, charge_point_model=model, **extra)
        )

    async def heartbeat(self) -> Any:
        return await self.call(c16.Heartbeat())

    async def status(self, connector_id: int, status: str) -> None:
        await self.call(
            c16.StatusNotification(
                connector_id=connector_id,
                error_code="NoError",
                status=status,
                timestamp=ts(self._now()),
            )
        )

    async def authorize(self, id_tag: str) -> str:
        result = await self.call(c16.Authorize(id_tag=id_tag))
        return str(result.id_tag_info["status"]) if result is not None else "Invalid"

    async def start_transaction(
        self,
        connector_id: int,
        meter_start: int,
        id_tag: str = "TAG1",
        timestamp: datetime | None = None,
    ) -> int:
        unique_id = str(uuid.uuid4())
        started_at = timestamp or self._now()
        self._pending_starts[unique_id] = (connector_id, started_at)
        try:
            result = await self.call(
                c16.StartTransaction(
                    connector_id=connector_id,
                    id_tag=id_tag,
                    meter_start=meter_start,
                    timestamp=ts(started_at),
                ),
                suppress=False,
                unique_id=unique_id,
            )
        finally:
            self._pending_starts.pop(unique_id, None)
        transaction_id = int(result.transaction_id)
        if self.store.transactions.get(connector_id) is None:
            self.store.transaction_started(connector_id, str(transaction_id), started_at)
        self.last_id_tag_status = str(result.id_tag_info["status"])
        return transaction_id

    async def meter_values(
        self,
        connector_id: int,
        transaction_id: int | None,
        wh: float,
        w: float,
        amps: Sequence[float] = (),
        at: datetime | None = None,
    ) -> None:
        await self.call(
            c16.MeterValues(
                connector_id=connector_id,
                transaction_id=transaction_id,
                meter_value=[meter_value(ProtocolName.OCPP16, at or self._now(), wh, w, amps)],
            )
        )

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop: int,
        reason: str = "EVDisconnected",
        at: datetime | None = None,
    ) -> None:
        moment = at or self._now()
        await self.call(
            c16.StopTransaction(
                meter_stop=meter_stop,
                timestamp=ts(moment),
                transaction_id=transaction_id,
                reason=reason,
                # The EV has stopped drawing: say so rather than leave power to be derived.
                transaction_data=[
                    meter_value(ProtocolName.OCPP16, moment, meter_stop, 0.0, (), "Transaction.End")
                ],
            ),
            suppress=False,
        )
        for evse_id, active in list(self.store.transactions.items()):
            if active.transaction_id == str(transaction_id):
                self.store.transaction_ended(evse_id)


def meter_value(
    protocol: ProtocolName,
    at: datetime,
    wh: float,
    w: float | None,
    amps: Sequence[float] = (),
    context: str = "Sample.Periodic",
) -> dict[str, Any]:
    """One MeterValue: energy register, total power, current per phase in use.

    1.6 writes values as strings with a ``unit`` (§7.33 SampledValue), 2.0.1 as numbers with
    ``unitOfMeasure`` (SampledValueType); the measurands and contexts are spelled alike.
    """
    samples: list[tuple[str, float, str, str | None, int]] = [
        ("Energy.Active.Import.Register", wh, "Wh", None, 1)
    ]
    if w is not None:
        samples.append(("Power.Active.Import", w, "W", None, 1))
    for line, current in zip(("L1", "L2", "L3"), amps, strict=False):
        samples.append(("Current.Import", current, "A", line, 2))
    sampled: list[dict[str, Any]] = []
    for measurand, value, unit, phase, decimals in samples:
        item: dict[str, Any] = {"context": context, "measurand": measurand, "location": "Outlet"}
        if protocol is ProtocolName.OCPP16:
            item.update(value=f"{value:.{decimals}f}", unit=unit)
        else:
            item.update(value=round(value, decimals), unitOfMeasure={"unit": unit})
        if phase is not None:
            item["phase"] = phase
        sampled.append(item)
    return {"timestamp": ts(at), "sampledValue": sampled}


class SimCharger201(_Sim, CP201):  # type: ignore[misc]
    """One OCPP 2.0.1 connection of a simulated charging station."""

    _library_class = CP201
    variables: dict[str, str]

    @staticmethod
    def _default_store() -> ProfileStore:
        return ProfileStore(
            limits=StoreLimits(max_stack_level=4, units=frozenset({"A", "W"})), strict_2_0_1=True
        )

    def _advertise(self, limits: StoreLimits) -> None:
        self.variables = {
            "RateUnit": ",".join(sorted(limits.units)),
            "ProfileStackLevel": str(limits.max_stack_level),
            "PeriodsPerSchedule": str(limits.max_periods),
            "Entries": "0",  # the installed count, answered live
            "IgnoredProfilePurposesOffline": "",
        }

    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.calls_received.append("GetVariables")
        results = []
        for item in get_variable_data:
            name = item["variable"]["name"]
            result: dict[str, Any] = {
                "attributeStatus": "Accepted" if name in self.variables else "UnknownVariable",
                "component": {"name": item["component"]["name"]},
                "variable": {"name": name},
            }
            if name == "Entries":
                result["attributeValue"] = str(len(self.store.profiles))  # installed now
            elif name in self.variables:
                result["attributeValue"] = self.variables[name]
            results.append(result)
        return r201.GetVariables(get_variable_result=results)

    @on(A201.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **kwargs: Any
    ) -> Any:
        self.calls_received.append("SetChargingProfile")
        profile = charging_profile
        self.store.history.append(profile)
        if profile["charging_profile_purpose"] in self.refuse_purposes:
            return r201.SetChargingProfile(
                status="Rejected", status_info={"reasonCode": "UnsupportedPurpose"}
            )
        # More than one schedule needs ISO 15118 (K01.FR.34); the first one is what applies.
        stored = stored_profile(profile, profile["charging_schedule"][0], profile["id"], evse_id)
        try:
            self._install(stored)
        except ProfileRefused as refused:
            log.info("%s refused a profile: %s", self.id, refused)
            return r201.SetChargingProfile(
                status="Rejected",
                status_info={"reasonCode": refused.reason[:20], "additionalInfo": str(refused)},
            )
        return r201.SetChargingProfile(status="Accepted")

    @on(A201.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("ClearChargingProfile")
        criteria = charging_profile_criteria or {}
        found = self._clear(
            profile_id=charging_profile_id,
            evse_id=criteria.get("evse_id"),
            purpose=criteria.get("charging_profile_purpose"),
            stack_level=criteria.get("stack_level"),
        )
        return r201.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A201.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("GetCompositeSchedule")
        composite = self._composite(evse_id, duration, charging_rate_unit)
        if composite is None:
            return r201.GetCompositeSchedule(
                status="Rejected", status_info={"reasonCode": "UnknownEVSE"}
            )
        return r201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evseId": evse_id,
                "duration": duration,
                "scheduleStart": ts(composite["start"]),
                "chargingRateUnit": composite["unit"],
                "chargingSchedulePeriod": composite["periods"],
            },
        )

    def _matching_profiles(
        self, evse_id: int | None, criteria: dict[str, Any]
    ) -> list[StoredProfile]:
        ids = criteria.get("charging_profile_id")
        sources = criteria.get("charging_limit_source")
        return [
            p
            for p in self.store.profiles
            if (evse_id is None or p.evse_id == evse_id)
            and (
                criteria.get("charging_profile_purpose") is None
                or p.purpose == criteria["charging_profile_purpose"]
            )
            and (criteria.get("stack_level") is None or p.stack_level == criteria["stack_level"])
            and (not ids or p.profile_id in ids)
            and (not sources or "CSO" in sources)
        ]

    @on(A201.get_charging_profiles)
    def on_get_charging_profiles(
        self,
        request_id: int,
        charging_profile: dict[str, Any],
        evse_id: int | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("GetChargingProfiles")
        found = self._matching_profiles(evse_id, charging_profile)
        return r201.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

    @after(A201.get_charging_profiles)
    async def report_charging_profiles(
        self,
        request_id: int,
        charging_profile: dict[str, Any],
        evse_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        """K09: the profiles follow in ReportChargingProfiles CALLs, one per EVSE."""
        found = self._matching_profiles(evse_id, charging_profile)
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for p in found:
            by_evse.setdefault(p.evse_id, []).append(p.payload)
        groups = sorted(by_evse.items())
        for index, (evse, payloads) in enumerate(groups):
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                await self.call(
                    c201.ReportChargingProfiles(
                        request_id=request_id,
                        # Profiles from a CSMS are CSO-sourced as the station sees them.
                        charging_limit_source="CSO",
                        charging_profile=payloads,
                        evse_id=evse,
                        tbc=index < len(groups) - 1 or None,
                    )
                )

    # --- messages the station sends --------------------------------------------------------

    @on(A201.trigger_message)
    def on_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("TriggerMessage")
        known = requested_message in ("StatusNotification", "TransactionEvent", "Heartbeat")
        return r201.TriggerMessage(status="Accepted" if known else "NotImplemented")

    @after(A201.trigger_message)
    def after_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """As in 1.6: the requested message follows the response (2.0.1 F06)."""
        if self.listener is not None:
            self.listener.triggered(requested_message, (evse or {}).get("id"))

    async def boot(self, vendor: str = "Sim", model: str = "Sim201", **extra: Any) -> Any:
        station = {"model": model, "vendor_name": vendor, **extra}
        return await self.call(c201.BootNotification(charging_station=station, reason="PowerUp"))

    async def heartbeat(self) -> Any:
        return await self.call(c201.Heartbeat())

    async def status(self, evse_id: int, status: str) -> None:
        await self.call(
            c201.StatusNotification(
                timestamp=ts(self._now()),
                connector_status=status,
                evse_id=evse_id,
                connector_id=1,
            )
        )

    async def authorize(self, id_token: str) -> str:
        result = await self.call(
            c201.Authorize(id_token={"id_token": id_token, "type": "ISO14443"})
        )
        return str(result.id_token_info["status"]) if result is not None else "Invalid"

    async def transaction_event(
        self,
        event_type: str,
        transaction_id: str,
        seq_no: int,
        wh: float,
        evse_id: int = 1,
        *,
        trigger_reason: str | None = None,
        w: float | None = None,
        amps: Sequence[float] = (),
        charging_state: str | None = None,
        id_token: str | None = None,
        stopped_reason: str | None = None,
        offline: bool = False,
        phases_used: int | None = None,
        at: datetime | None = None,
    ) -> Any:
        moment = at or self._now()
        context = {
            "Started": "Transaction.Begin",
            "Ended": "Transaction.End",
        }.get(event_type, "Sample.Periodic")
        info: dict[str, Any] = {"transaction_id": transaction_id}
        if charging_state is not None:
            info["charging_state"] = charging_state
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        reason = trigger_reason or {
            "Started": "CablePluggedIn",
            "Updated": "MeterValuePeriodic",
            "Ended": "EVDeparted",
        }.get(event_type, "MeterValuePeriodic")
        if event_type == "Started" and self.store.transactions.get(evse_id) is None:
            self.store.transaction_started(evse_id, transaction_id, moment)
        result = await self.call(
            c201.TransactionEvent(
                event_type=event_type,
                timestamp=ts(moment),
                trigger_reason=reason,
                seq_no=seq_no,
                transaction_info=info,
                evse={"id": evse_id, "connector_id": 1},
                meter_value=[meter_value(ProtocolName.OCPP201, moment, wh, w, amps, context)],
                id_token=None if id_token is None else {"id_token": id_token, "type": "ISO14443"},
                offline=offline or None,
                number_of_phases_used=phases_used,
            )
        )
        if event_type == "Ended":
            active = self.store.transactions.get(evse_id)
            if active is not None and active.transaction_id == transaction_id:
                self.store.transaction_ended(evse_id)
        return result

    async def notify_ev_charging_needs(
        self,
        evse_id: int,
        energy_wh: float,
        departure: datetime | None,
        max_current_a: float,
        phases: int,
        volts: float,
    ) -> Any:
        """K15 (ISO 15118): the EV's requested energy and the driver's departure time."""
        needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_three_phase" if phases == 3 else "AC_single_phase",
            "ac_charging_parameters": {
                "energy_amount": round(energy_wh),
                "ev_min_current": round(MIN_CURRENT_A),
                "ev_max_current": max(round(max_current_a), round(MIN_CURRENT_A)),
                "ev_max_voltage": round(volts * 1.1),
            },
        }
        if departure is not None:
            needs["departure_time"] = ts(departure)
        return await self.call(c201.NotifyEVChargingNeeds(charging_needs=needs, evse_id=evse_id))


SimCharger = SimCharger16 | SimCharger201


def basic_auth_header(identity: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def open_connection(
    url: str,
    identity: str,
    protocol: ProtocolName,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout_s: float = 30.0,
) -> Any:
    """The websocket a station opens: ``<url>/<identity>``, one subprotocol, Basic auth
    when a password is given (security profile 1/2, A00.FR.2xx)."""
    headers = basic_auth_header(identity, password) if password is not None else None
    return await websockets.connect(
        f"{url.rstrip('/')}/{identity}",
        subprotocols=[websockets.Subprotocol(protocol.value)],
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=open_timeout_s,
    )


@contextlib.asynccontextmanager
async def running(
    sim_class: type[SimCharger16] | type[SimCharger201],
    url: str,
    identity: str,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refuse_purposes: set[str] | None = None,
    clock: SimClock | None = None,
) -> AsyncIterator[Any]:
    """One bare connection serving its socket in a task; the caller sends what it wants."""
    protocol = ProtocolName.OCPP16 if sim_class is SimCharger16 else ProtocolName.OCPP201
    ws = await open_connection(url, identity, protocol, password, ssl_context)
    sim = sim_class(identity, ws, refuse_purposes, clock=clock)
    task = asyncio.create_task(sim.start())
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await task
        await ws.close()


# --- the station -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconnectPolicy:
    """2.0.1 OCPPCommCtrlr RetryBackOff*: wait minimum x 2^attempt (at most repeat_times
    doublings) plus a random part, in the station's clock time."""

    wait_minimum_s: float = 5.0
    random_range_s: float = 5.0
    repeat_times: int = 5

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        doubling = 2.0 ** min(attempt, self.repeat_times)
        return self.wait_minimum_s * doubling + rng.uniform(0.0, self.random_range_s)


@dataclass(frozen=True)
class StationSpec:
    """A station's identity and electrical data. Currents are per phase."""

    charger_id: str
    protocol: ProtocolName = ProtocolName.OCPP16
    evse_count: int = 1
    phases: int = 3
    nominal_voltage_v: float = VOLTS
    max_current_a: float = 16.0  # per EVSE (11 kW at 3 x 230 V)
    station_max_current_a: float | None = None  # the station's supply; None = EVSEs x max
    min_current_a: float = MIN_CURRENT_A
    meter_interval_s: float = 60.0  # clock-aligned samples (ClockAlignedDataInterval style)
    vendor: str = "flexbridge"
    model: str = "SimStation"
    serial_number: str | None = None
    firmware_version: str = "sim-1"
    refuse_purposes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.evse_count < 1:
            raise ValueError(f"{self.charger_id}: evse_count must be >= 1, got {self.evse_count}")
        if self.phases not in (1, 3):
            raise ValueError(f"{self.charger_id}: phases must be 1 or 3, got {self.phases}")
        if not self.max_current_a >= self.min_current_a > 0:
            raise ValueError(
                f"{self.charger_id}: max current {self.max_current_a} A must be >= the "
                f"minimum {self.min_current_a} A > 0"
            )
        if self.meter_interval_s <= 0:
            raise ValueError(f"{self.charger_id}: meter_interval_s must be > 0")

    @property
    def max_power_w(self) -> float:
        """One EVSE's maximum power."""
        return self.max_current_a * self.nominal_voltage_v * self.phases

    @property
    def supply_current_a(self) -> float:
        return self.station_max_current_a or self.max_current_a * self.evse_count


@dataclass
class EvSession:
    """An EV on an EVSE, from plug-in to unplug."""

    evse_id: int
    id_token: str
    energy_needed_wh: float
    ev_max_power_w: float
    ev_phases: int
    departure: datetime
    plugged_at: datetime
    meter_start_wh: float
    requested_energy_wh: float | None = None
    stated_departure: datetime | None = None
    unplug_when_full: bool = False
    delivered_wh: float = 0.0
    transaction_id: str | None = None
    seq_no: int = 0
    authorized: bool = True
    full_at: datetime | None = None
    unplugged_at: datetime | None = None
    stop_reason: str | None = None
    offline_start: bool = False

    @property
    def remaining_wh(self) -> float:
        return max(0.0, self.energy_needed_wh - self.delivered_wh)

    @property
    def full(self) -> bool:
        return self.remaining_wh <= _FULL_EPSILON_WH

    def next_seq_no(self) -> int:
        value = self.seq_no
        self.seq_no += 1
        return value


@dataclass
class EvseState:
    evse_id: int
    register_wh: float = 0.0
    ev: EvSession | None = None
    power_w: float = 0.0
    current_a: float = 0.0
    state: str = "Available"  # Available, Preparing, Charging, SuspendedEVSE, SuspendedEV
    next_sample: datetime | None = None


@dataclass
class _Outgoing:
    send: Callable[[Any], Awaitable[None]]
    what: str
    transactional: bool


class SimulatedStation:
    """A charging station with N EVSEs that connects, reconnects, and charges EVs.

    ``await start()`` powers it on (returns at once; `wait_ready` waits for the boot to be
    accepted), ``await stop()`` powers it off. `plug_in` / `unplug` drive EV sessions; the
    station's own loop meters them on the injected clock.
    """

    def __init__(
        self,
        spec: StationSpec,
        url: str,
        *,
        password: str | None = None,
        clock: SimClock | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: ReconnectPolicy | None = None,
        boot_on_reconnect: bool = False,
        strict: bool = True,
        response_timeout_s: float = 30.0,
        seed: int | None = None,
        on_profile: Callable[[SimulatedStation, StoredProfile], None] | None = None,
    ) -> None:
        """`on_profile` is called for every profile the station accepts (benchmarks time
        the arrival of a dispatch with it)."""
        self.spec = spec
        self.on_profile = on_profile
        self.url = url
        self.password = password
        self.clock: SimClock = clock or RealClock()
        self.ssl_context = ssl_context
        self.reconnect = reconnect or ReconnectPolicy()
        self.boot_on_reconnect = boot_on_reconnect
        self.strict = strict
        self.response_timeout_s = response_timeout_s
        self._rng = random.Random(seed if seed is not None else spec.charger_id)
        units = frozenset({"A"}) if spec.protocol is ProtocolName.OCPP16 else frozenset("AW")
        self.store = ProfileStore(
            range(1, spec.evse_count + 1),
            default_limit_a=spec.max_current_a,
            volts=spec.nominal_voltage_v,
            phases=spec.phases,
            limits=StoreLimits(
                max_stack_level=5 if spec.protocol is ProtocolName.OCPP16 else 4,
                units=units,
            ),
            strict_2_0_1=spec.protocol is ProtocolName.OCPP201,
        )
        self.evses = {i: EvseState(i) for i in range(1, spec.evse_count + 1)}
        self.sessions: list[EvSession] = []  # finished ones, in order
        self.connections = 0  # successful websocket handshakes so far
        self.heartbeats_sent = 0
        self.heartbeat_interval_s: float | None = None
        self.charger: SimCharger16 | SimCharger201 | None = None
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._booted_once = False
        self._last_advance: datetime | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def charger_id(self) -> str:
        return self.spec.charger_id

    @property
    def online(self) -> bool:
        return self._ready.is_set()

    def _charger_class(self) -> type[SimCharger16] | type[SimCharger201]:
        return SimCharger16 if self.spec.protocol is ProtocolName.OCPP16 else SimCharger201

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError(f"station {self.charger_id} is already running")
        self._last_advance = self.clock.now()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._physics(), name=f"sim-physics:{self.charger_id}"),
            loop.create_task(self._life(), name=f"sim-link:{self.charger_id}"),
        ]

    async def stop(self) -> None:
        """Power off: the link drops, sessions freeze as they are."""
        tasks, self._tasks = self._tasks, []
        await _finish(tasks)
        self._ready.clear()

    async def wait_ready(self) -> None:
        """Until the station is connected and its boot accepted (in real time; add a timeout)."""
        await self._ready.wait()

    async def __aenter__(self) -> SimulatedStation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the link: connect, boot, serve, reconnect ----------------------------------------

    async def _life(self) -> None:
        attempt = 0
        while True:
            _raise_if_cancelling()
            try:
                ws = await open_connection(
                    self.url,
                    self.charger_id,
                    self.spec.protocol,
                    self.password,
                    self.ssl_context,
                )
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                delay = self.reconnect.delay_s(attempt, self._rng)
                if attempt == 0:
                    log.info("%s cannot connect (%s); retrying", self.charger_id, exc)
                attempt += 1
                await self.clock.sleep(delay)
                continue
            attempt = 0
            self.connections += 1
            try:
                await self._serve(ws)
            finally:
                self._ready.clear()
                self.charger = None
                # Status and authorization are about now; they are re-sent after reconnecting.
                self._outbox = deque(o for o in self._outbox if o.transactional)
                with contextlib.suppress(Exception):
                    await ws.close()
            await self.clock.sleep(self.reconnect.delay_s(0, self._rng))

    async def _serve(self, ws: Any) -> None:
        charger = self._charger_class()(
            self.charger_id,
            ws,
            set(self.spec.refuse_purposes),
            store=self.store,
            clock=self.clock,
            listener=self,
            strict=self.strict,
            response_timeout_s=self.response_timeout_s,
        )
        if self.spec.protocol is ProtocolName.OCPP16:
            charger.configuration["MeterValueSampleInterval"] = str(int(self.spec.meter_interval_s))
        reader = asyncio.create_task(charger.start(), name=f"sim-read:{self.charger_id}")
        worker = asyncio.create_task(self._converse(charger), name=f"sim-talk:{self.charger_id}")
        try:
            done, _ = await asyncio.wait((reader, worker), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None and not isinstance(failure, ConnectionClosed):
                    log.warning("%s: link failed: %r", self.charger_id, failure)
        finally:
            await _finish((reader, worker))

    async def _converse(self, charger: SimCharger16 | SimCharger201) -> None:
        """Boot (first connection, or every one if so configured), statuses, then the outbox
        and heartbeats until the connection drops."""
        if not self._booted_once or self.boot_on_reconnect:
            while True:
                extra: dict[str, Any] = {}
                if self.spec.protocol is ProtocolName.OCPP16:
                    extra = {"firmware_version": self.spec.firmware_version}
                    if self.spec.serial_number:
                        extra["charge_point_serial_number"] = self.spec.serial_number
                else:
                    extra = {"firmware_version": self.spec.firmware_version}
                    if self.spec.serial_number:
                        extra["serial_number"] = self.spec.serial_number
                response = await charger.boot(self.spec.vendor, self.spec.model, **extra)
                interval = float(getattr(response, "interval", 0) or 0) or 300.0
                if response is not None and response.status == "Accepted":
                    self.heartbeat_interval_s = interval
                    break
                # Pending/Rejected (1.6 §4.2, 2.0.1 B02/B03): try again after the interval.
                await self.clock.sleep(interval)
            self._booted_once = True
        self.charger = charger
        if self.spec.protocol is ProtocolName.OCPP16:
            await charger.status(0, "Available")
        for evse in self.evses.values():
            await self._send_status(charger, evse.evse_id, evse.state)
        self._ready.set()
        heartbeat = asyncio.create_task(self._heartbeats(charger))
        try:
            await self._drain(charger)
        finally:
            await _finish((heartbeat,))

    async def _heartbeats(self, charger: SimCharger16 | SimCharger201) -> None:
        while True:
            _raise_if_cancelling()
            await self.clock.sleep(self.heartbeat_interval_s or 300.0)
            with contextlib.suppress(TimeoutError, OCPPError):
                await charger.heartbeat()
                self.heartbeats_sent += 1

    async def _drain(self, charger: SimCharger16 | SimCharger201) -> None:
        """Send queued messages in order; transaction messages wait out a lost connection and
        go first after reconnecting (1.6 §4.8 / 2.0.1 E12: none are lost)."""
        while True:
            _raise_if_cancelling()
            while not self._outbox:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
            item = self._outbox[0]
            try:
                await item.send(charger)
            except OCPPError as exc:
                # Refused by the CSMS: retrying the same message would be refused again.
                log.warning("%s: %s refused: %s", self.charger_id, item.what, exc)
            except TimeoutError:
                await self.clock.sleep(1.0)
                continue
            if self._outbox and self._outbox[0] is item:
                self._outbox.popleft()

    def _enqueue(
        self, send: Callable[[Any], Awaitable[None]], what: str, transactional: bool
    ) -> None:
        if not transactional and not self.online:
            return  # re-sent as current state after the reconnect
        self._outbox.append(_Outgoing(send, what, transactional))
        self._outbox_changed.set()

    async def _send_status(
        self, charger: SimCharger16 | SimCharger201, evse_id: int, state: str
    ) -> None:
        if isinstance(charger, SimCharger16):
            await charger.status(evse_id, state)
        else:
            await charger.status(evse_id, "Available" if state == "Available" else "Occupied")

    def _status_changed(self, evse: EvseState) -> None:
        if self.spec.protocol is ProtocolName.OCPP201 and evse.state not in (
            "Available",
            "Preparing",
        ):
            return  # 2.0.1 tells charging states in TransactionEvent, not StatusNotification
        self._enqueue_status(evse.evse_id, evse.state)

    def _enqueue_status(self, evse_id: int, state: str) -> None:
        async def send(charger: SimCharger16 | SimCharger201) -> None:
            await self._send_status(charger, evse_id, state)

        self._enqueue(send, f"status {evse_id} {state}", transactional=False)

    # --- EV sessions ---------------------------------------------------------------------

    def plug_in(
        self,
        evse_id: int,
        energy_needed_wh: float,
        ev_max_power_w: float,
        departure: datetime,
        id_token: str,
        requested_energy_wh: float | None = None,
        *,
        stated_departure: datetime | None = None,
        ev_phases: int | None = None,
        unplug_when_full: bool = False,
    ) -> EvSession:
        """An EV arrives: status, authorization, transaction start, then it charges.

        `energy_needed_wh` is what the EV takes until it is full; `requested_energy_wh` and
        `stated_departure` are what the driver tells (2.0.1: NotifyEVChargingNeeds, ISO 15118)
        and may differ from the truth. The EV leaves at `departure`; a full EV stays plugged
        in drawing nothing (SuspendedEV) until then, unless `unplug_when_full`.
        """
        now = self.clock.now()
        evse = self.evses.get(evse_id)
        if evse is None:
            raise ValueError(f"{self.charger_id} has no EVSE {evse_id} (1..{len(self.evses)})")
        if evse.ev is not None:
            raise ValueError(f"{self.charger_id} EVSE {evse_id} is occupied")
        if not energy_needed_wh > 0 or not math.isfinite(energy_needed_wh):
            raise ValueError(f"energy needed must be > 0 Wh, got {energy_needed_wh}")
        if not ev_max_power_w > 0 or not math.isfinite(ev_max_power_w):
            raise ValueError(f"EV max power must be > 0 W, got {ev_max_power_w}")
        if departure.tzinfo is None or departure <= now:
            raise ValueError(f"departure {departure} must be UTC-aware and after {now}")
        phases = min(ev_phases or self.spec.phases, self.spec.phases)
        if phases not in (1, 2, 3):
            raise ValueError(f"EV phases must be 1..3, got {ev_phases}")
        if requested_energy_wh is not None and not requested_energy_wh > 0:
            raise ValueError(f"requested energy must be > 0 Wh, got {requested_energy_wh}")
        self._advance(now)
        ev = EvSession(
            evse_id=evse_id,
            id_token=id_token,
            energy_needed_wh=float(energy_needed_wh),
            ev_max_power_w=float(ev_max_power_w),
            ev_phases=phases,
            departure=departure,
            plugged_at=now,
            meter_start_wh=evse.register_wh,
            requested_energy_wh=requested_energy_wh,
            stated_departure=stated_departure,
            unplug_when_full=unplug_when_full,
            offline_start=not self.online,
        )
        evse.ev = ev
        evse.state = "Preparing"
        self._status_changed(evse)
        self._begin_transaction(evse, ev, now)
        evse.next_sample = self._next_sample_after(now)
        self._recompute(now)
        self._wake.set()
        return ev

    def unplug(self, evse_id: int, reason: str = "EVDisconnected") -> EvSession:
        """The driver leaves now (before the planned departure, or an EV that stayed)."""
        evse = self.evses.get(evse_id)
        if evse is None or evse.ev is None:
            raise ValueError(f"{self.charger_id} EVSE {evse_id} has no EV plugged in")
        now = self.clock.now()
        self._advance(now)
        ev = evse.ev
        self._end_session(evse, now, reason)
        self._recompute(now)
        self._wake.set()
        return ev

    def _begin_transaction(self, evse: EvseState, ev: EvSession, now: datetime) -> None:
        register = evse.register_wh
        if self.spec.protocol is ProtocolName.OCPP16:

            async def authorize16(charger: SimCharger16) -> None:
                if await charger.authorize(ev.id_token) != "Accepted":
                    ev.authorized = False

            async def start16(charger: SimCharger16) -> None:
                if not ev.authorized:
                    return
                transaction_id = await charger.start_transaction(
                    evse.evse_id, round(register), ev.id_token, now
                )
                ev.transaction_id = str(transaction_id)
                if charger.last_id_tag_status != "Accepted" and ev.unplugged_at is None:
                    # 1.6 §5.x: a transaction whose idTag the CSMS rejects is stopped.
                    ev.authorized = False
                    self._end_session(evse, self.clock.now(), "DeAuthorized")

            self._enqueue(authorize16, f"authorize {ev.id_token}", transactional=False)
            self._enqueue(start16, f"start {evse.evse_id}", transactional=True)
            return

        # Unique across runs too: an agent that keeps its database must never see a reused id.
        transaction_id = str(uuid.uuid4())
        ev.transaction_id = transaction_id
        self.store.transaction_started(evse.evse_id, transaction_id, now)
        seq = ev.next_seq_no()
        offline = not self.online

        async def authorize201(charger: SimCharger201) -> None:
            if await charger.authorize(ev.id_token) != "Accepted":
                ev.authorized = False

        async def started(charger: SimCharger201) -> None:
            await charger.transaction_event(
                "Started",
                transaction_id,
                seq,
                register,
                evse.evse_id,
                trigger_reason="CablePluggedIn",
                w=0.0,
                charging_state="EVConnected",
                id_token=ev.id_token,
                offline=offline,
                phases_used=ev.ev_phases,
                at=now,
            )

        async def needs(charger: SimCharger201) -> None:
            assert ev.requested_energy_wh is not None
            await charger.notify_ev_charging_needs(
                evse.evse_id,
                ev.requested_energy_wh,
                ev.stated_departure,
                ev_current_a(ev.ev_max_power_w, ev.ev_phases, self.spec.nominal_voltage_v),
                ev.ev_phases,
                self.spec.nominal_voltage_v,
            )

        self._enqueue(authorize201, f"authorize {ev.id_token}", transactional=False)
        self._enqueue(started, f"started {transaction_id}", transactional=True)
        if ev.requested_energy_wh is not None:
            self._enqueue(needs, f"needs {transaction_id}", transactional=True)

    def _end_session(self, evse: EvseState, now: datetime, reason: str) -> None:
        ev = evse.ev
        assert ev is not None
        ev.unplugged_at = now
        ev.stop_reason = reason
        register = evse.register_wh
        evse.ev = None
        evse.power_w = evse.current_a = 0.0
        evse.next_sample = None
        if self.spec.protocol is ProtocolName.OCPP16:

            async def stop16(charger: SimCharger16) -> None:
                if ev.transaction_id is None:
                    return  # never started (token refused)
                await charger.stop_transaction(int(ev.transaction_id), round(register), reason, now)

            self._enqueue(stop16, f"stop {ev.transaction_id}", transactional=True)
            self.store.transaction_ended(evse.evse_id)
        else:
            seq = ev.next_seq_no()
            transaction_id = ev.transaction_id
            assert transaction_id is not None
            offline = not self.online

            async def ended(charger: SimCharger201) -> None:
                await charger.transaction_event(
                    "Ended",
                    transaction_id,
                    seq,
                    register,
                    evse.evse_id,
                    trigger_reason="EVDeparted" if reason == "EVDisconnected" else "StopAuthorized",
                    w=0.0,
                    charging_state="Idle",
                    stopped_reason=reason,
                    offline=offline,
                    at=now,
                )

            self._enqueue(ended, f"ended {transaction_id}", transactional=True)
            self.store.transaction_ended(evse.evse_id)
        evse.state = "Available"
        self._status_changed(evse)
        self.sessions.append(ev)

    # --- physics -------------------------------------------------------------------------

    def triggered(self, requested: str, evse_id: int | None) -> bool:
        """Queue the current state a CSMS asked for with TriggerMessage; False for a message
        this station does not send on request."""
        evses = [e for e in self.evses.values() if evse_id in (None, 0, e.evse_id)]
        now = self.clock.now()
        if requested == "Heartbeat":

            async def beat(charger: SimCharger16 | SimCharger201) -> None:
                await charger.heartbeat()

            self._enqueue(beat, "heartbeat", transactional=False)
        elif requested == "StatusNotification":
            if self.spec.protocol is ProtocolName.OCPP16 and evse_id in (None, 0):

                async def station(charger: SimCharger16 | SimCharger201) -> None:
                    await self._send_status(charger, 0, "Available")

                self._enqueue(station, "status 0", transactional=False)
            for evse in evses:
                self._enqueue_status(evse.evse_id, evse.state)
        elif requested in ("MeterValues", "TransactionEvent"):
            for evse in evses:
                if evse.ev is not None and evse.ev.transaction_id is not None:
                    if self.spec.protocol is ProtocolName.OCPP16:
                        self._sample(evse, now)
                    else:
                        self._enqueue_updated(evse, evse.ev, now, "Trigger", "triggered")
        else:
            return False
        return True

    def profiles_changing(self) -> None:
        self._advance(self.clock.now())

    def profiles_changed(self, installed: StoredProfile | None = None) -> None:
        self._recompute(self.clock.now())
        self._wake.set()
        if installed is not None and self.on_profile is not None:
            self.on_profile(self, installed)

    def _advance(self, now: datetime) -> None:
        """Integrate every EVSE's energy from the last step to `now` at the power it had."""
        last = self._last_advance
        if last is None:  # not started yet: the meter starts counting now
            self._last_advance = now
            return
        seconds = (now - last).total_seconds()
        if seconds <= 0:
            return
        self._last_advance = now
        for evse in self.evses.values():
            ev = evse.ev
            if ev is None or evse.power_w <= 0:
                continue
            added = min(evse.power_w * seconds / 3600.0, ev.remaining_wh)
            ev.delivered_wh += added
            evse.register_wh += added
            if ev.full and ev.full_at is None:
                # The exact moment it filled up, not the step that noticed.
                ev.full_at = last + timedelta(seconds=added * 3600.0 / evse.power_w)

    def _demand_a(self, evse: EvseState, now: datetime) -> float:
        ev = evse.ev
        if ev is None or ev.full or not ev.authorized:
            return 0.0
        allowed = min(self.store.evse_limit_a_at(now, evse.evse_id), self.spec.max_current_a)
        wanted = ev_current_a(ev.ev_max_power_w, ev.ev_phases, self.spec.nominal_voltage_v)
        return max(0.0, min(allowed, wanted))

    def _recompute(self, now: datetime) -> None:
        """Power of every EVSE at `now` from the profiles, the station's supply and the EVs."""
        ids = sorted(self.evses)
        demands = [self._demand_a(self.evses[i], now) for i in ids]
        cap = self.spec.supply_current_a
        station = self.store.station_max_a_at(now)
        if station is not None:
            cap = min(cap, station)
        shares = share_current(demands, max(0.0, cap), self.spec.min_current_a)
        volts = self.spec.nominal_voltage_v
        for evse_id, amps in zip(ids, shares, strict=True):
            evse = self.evses[evse_id]
            ev = evse.ev
            evse.current_a = amps
            evse.power_w = amps * volts * ev.ev_phases if ev is not None else 0.0
            if ev is None:
                continue
            if ev.full or not ev.authorized:
                state = "SuspendedEV"
            elif amps > 0:
                state = "Charging"
            else:
                state = "SuspendedEVSE"
            if state != evse.state:
                previous, evse.state = evse.state, state
                self._charging_state_changed(evse, ev, previous, now)

    def _charging_state_changed(
        self, evse: EvseState, ev: EvSession, previous: str, now: datetime
    ) -> None:
        if self.spec.protocol is ProtocolName.OCPP16:
            self._status_changed(evse)
            return
        self._enqueue_updated(evse, ev, now, "ChargingStateChanged", "state")

    def _enqueue_updated(
        self, evse: EvseState, ev: EvSession, now: datetime, trigger: str, what: str
    ) -> None:
        """A 2.0.1 TransactionEvent Updated carrying the meter as it is now."""
        transaction_id = ev.transaction_id
        if transaction_id is None:
            return
        seq = ev.next_seq_no()
        register, power, amps = evse.register_wh, evse.power_w, self._phase_currents(evse)
        state = evse.state
        offline = not self.online

        async def updated(charger: SimCharger201) -> None:
            await charger.transaction_event(
                "Updated",
                transaction_id,
                seq,
                register,
                evse.evse_id,
                trigger_reason=trigger,
                w=power,
                amps=amps,
                charging_state=state,
                offline=offline,
                at=now,
            )

        self._enqueue(updated, f"{what} {transaction_id}", transactional=True)

    def _phase_currents(self, evse: EvseState) -> tuple[float, ...]:
        ev = evse.ev
        phases = ev.ev_phases if ev is not None else self.spec.phases
        return tuple([evse.current_a] * phases)

    def _sample(self, evse: EvseState, now: datetime) -> None:
        ev = evse.ev
        assert ev is not None
        register, power, amps = evse.register_wh, evse.power_w, self._phase_currents(evse)
        if self.spec.protocol is ProtocolName.OCPP16:

            async def values16(charger: SimCharger16) -> None:
                if ev.transaction_id is None:
                    return
                await charger.meter_values(
                    evse.evse_id, int(ev.transaction_id), register, power, amps, now
                )

            self._enqueue(values16, f"meter {evse.evse_id}", transactional=True)
            return
        self._enqueue_updated(evse, ev, now, "MeterValuePeriodic", "meter")

    def _next_sample_after(self, moment: datetime) -> datetime:
        interval = self.spec.meter_interval_s
        epoch = moment.timestamp()
        return datetime.fromtimestamp((math.floor(epoch / interval) + 1) * interval, UTC)

    def _step(self, now: datetime) -> datetime | None:
        """Advance to `now`, end what is due, re-plan power, sample; return the next wake-up."""
        self._advance(now)
        for evse in self.evses.values():
            ev = evse.ev
            if ev is None:
                continue
            if now >= ev.departure or (ev.full and ev.unplug_when_full):
                self._end_session(evse, now, "EVDisconnected")
        self._recompute(now)
        wakeups: list[datetime] = []
        for evse in self.evses.values():
            ev = evse.ev
            if ev is None:
                continue
            if evse.next_sample is not None and now >= evse.next_sample:
                self._sample(evse, now)
                evse.next_sample = self._next_sample_after(now)
            if evse.next_sample is not None:
                wakeups.append(evse.next_sample)
            wakeups.append(ev.departure)
            if evse.power_w > 0:
                wakeups.append(now + timedelta(seconds=ev.remaining_wh * 3600.0 / evse.power_w))
        change = self.store.next_change(now)
        if change is not None:
            wakeups.append(change)
        return min(wakeups) if wakeups else None

    async def _physics(self) -> None:
        while True:
            _raise_if_cancelling()
            now = self.clock.now()
            wake = self._step(now)
            self._wake.clear()
            seconds = 3600.0 if wake is None else max(0.0, (wake - now).total_seconds())
            sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                woken.cancel()

    # --- introspection ------------------------------------------------------------------

    def power_w(self, evse_id: int) -> float:
        """What the EV on this EVSE draws now (W)."""
        self._advance(self.clock.now())
        return self.evses[evse_id].power_w

    def energy_wh(self, evse_id: int) -> float:
        """Energy delivered in the current session (0 without an EV)."""
        self._advance(self.clock.now())
        ev = self.evses[evse_id].ev
        return 0.0 if ev is None else ev.delivered_wh

    def register_wh(self, evse_id: int) -> float:
        """The EVSE's energy meter register (grows over all sessions)."""
        self._advance(self.clock.now())
        return self.evses[evse_id].register_wh

    def limit_w(self, evse_id: int = 0) -> float:
        """The composite limit now in W (0: the whole station), capped by the hardware."""
        now = self.clock.now()
        volts, phases = self.spec.nominal_voltage_v, self.spec.phases
        if evse_id:
            amps = min(self.store.evse_limit_a_at(now, evse_id), self.spec.max_current_a)
        else:
            amps = min(self.store.limit_a_at(now, 0), self.spec.supply_current_a)
        return amps * volts * phases

    def session(self, evse_id: int) -> EvSession | None:
        return self.evses[evse_id].ev

    @property
    def pending_messages(self) -> int:
        return len(self._outbox)


# --- a fleet in its own process ----------------------------------------------------------------


async def run_fleet(
    url: str,
    specs: Sequence[StationSpec],
    password: str | None,
    *,
    strict: bool = True,
    report_profiles: bool = False,
    plug_in_wh: float = 0.0,
    out: Callable[[str], None] = print,
) -> None:
    """Run stations until cancelled; print ``ready <n>`` once all booted and, if asked,
    ``accepted <charger> <evse> <profile id> <stack level> <unix time>`` per profile.

    With `plug_in_wh` every EVSE gets an EV needing that much (11 kW, leaving in 8 h) once
    the fleet is ready, so a CSMS has sessions to dispatch."""

    def report(station: SimulatedStation, profile: StoredProfile) -> None:
        out(
            f"accepted {station.charger_id} {profile.evse_id} {profile.profile_id} "
            f"{profile.stack_level} {time.time():.6f}"
        )

    stations = [
        SimulatedStation(
            spec,
            url,
            password=password,
            strict=strict,
            on_profile=report if report_profiles else None,
        )
        for spec in specs
    ]
    try:
        for station in stations:
            await station.start()
        await asyncio.gather(*(s.wait_ready() for s in stations))
        if plug_in_wh > 0:
            for n, station in enumerate(stations):
                leave = station.clock.now() + timedelta(hours=8)
                for evse_id in station.evses:
                    station.plug_in(evse_id, plug_in_wh, 11_000.0, leave, f"FLEET{n:05d}{evse_id}")
        out(f"ready {len(stations)}")
        await asyncio.Event().wait()
    finally:
        await asyncio.gather(*(s.stop() for s in stations))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ocpp_bridge.simulator --url ws://127.0.0.1:9000/ocpp --count 500``: a fleet
    of simulated stations in a process of its own, so a benchmark of the CSMS does not pay
    for the stations' CPU. Stops on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m ocpp_bridge.simulator", description=main.__doc__
    )
    parser.add_argument("--url", required=True, help="CSMS URL without the identity")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="SIM-", help="identities <prefix>0001 onwards")
    parser.add_argument("--protocol", choices=("1.6", "2.0.1", "mixed"), default="mixed")
    parser.add_argument("--evses", type=int, default=1)
    parser.add_argument("--password", default=None, help="HTTP Basic password (profile 1/2)")
    parser.add_argument(
        "--no-strict", action="store_true", help="skip schema validation (less CPU per station)"
    )
    parser.add_argument("--report-profiles", action="store_true")
    parser.add_argument(
        "--plug-in-wh", type=float, default=0.0, help="an EV needing this much on every EVSE"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")

    def protocol(i: int) -> ProtocolName:
        if args.protocol == "mixed":
            return ProtocolName.OCPP16 if i % 2 == 0 else ProtocolName.OCPP201
        return ProtocolName.OCPP16 if args.protocol == "1.6" else ProtocolName.OCPP201

    specs = [
        StationSpec(f"{args.prefix}{i + 1:04d}", protocol(i), evse_count=args.evses)
        for i in range(args.count)
    ]

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run() -> None:
        task = asyncio.ensure_future(
            run_fleet(
                args.url,
                specs,
                args.password,
                strict=not args.no_strict,
                report_profiles=args.report_profiles,
                plug_in_wh=args.plug_in_wh,
                out=out,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
