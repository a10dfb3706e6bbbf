"""The two profile layers of one charger: what we want it to hold and what it accepted.

Safe layer (docs/ocpp.md "Charging limits: the safe layer and what happens when flexbridge
stops"): a station-wide max profile at stack level 0 without validTo, set on every (re)connect.
Dynamic layer: schedules per charger (EVSE 0) or EVSE at higher stack levels with a short
validTo under fixed profile ids, refreshed before validTo while the schedule lasts. If
flexbridge dies, refreshing stops, the dynamic profiles expire on the charger and the safe layer
rules.

Purpose fallback (chargers that refuse a purpose, docs/ocpp.md "Chargers that refuse a profile
type"): station max -> TxDefault on EVSE 0 -> TxProfile on the active transaction(s). A purpose
is remembered as refused for the charger only when a later one in the chain was accepted, so a
profile refused for another reason never disables a purpose for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ocpp.exceptions import OCPPError

from ocpp_bridge.capabilities import DEFAULTS, ChargerCapabilities, Purpose, RateUnit
from ocpp_bridge.connection import ChargerOfflineError, Connection
from ocpp_bridge.events import (
    CommandResult,
    CommandStatus,
    CompositeSchedule,
    DynamicScheduleSnapshot,
    PowerPeriod,
    ProtocolVersion,
)
from ocpp_bridge.model import ChargerModel
from ocpp_bridge.profiles import (
    DEFAULT_LAYOUT,
    BuiltProfile,
    ElectricalData,
    Layer,
    ProfileError,
    ProfileLayout,
    ProfileTarget,
    build_dynamic_profile,
    build_safe_profile,
    limit_to_watts,
)
from ocpp_bridge.timestamps import TimestampError, parse_timestamp, real_sleep, utc_now

log = logging.getLogger(__name__)

SAFE_CHAIN = (Purpose.STATION_MAX, Purpose.TX_DEFAULT)
STATION_DYNAMIC_CHAIN = (Purpose.STATION_MAX, Purpose.TX_DEFAULT, Purpose.TX)
EVSE_DYNAMIC_CHAIN = (Purpose.TX_DEFAULT, Purpose.TX)
# CALLERROR codes that mean "this charger does not do that" rather than "bad payload".
_UNSUPPORTED_CODES = {"NotSupported", "NotImplemented"}
# Back-off of a dynamic schedule the charger did not take: the first retry after this many
# seconds, each further one after twice as long, at most _RETRY_MAX_S apart. A charger that
# refuses keeps refusing; asking again every few seconds only floods its message log.
_RETRY_S = 5.0
_RETRY_MAX_S = 300.0


# A schedule lower than the refused one by more than this, at some instant, is tried at once
# instead of after the back-off: one amp on one phase. Smaller moves are the allocation's
# rounding from one dispatch round to the next, not a new order or a tighter site cap.
_STRICTER_BY_W = 230.0


def retry_delay_s(failures: int) -> float:
    """Seconds to wait after the `failures`-th failed attempt in a row (>= 1)."""
    return min(_RETRY_MAX_S, _RETRY_S * 2.0 ** min(max(0, failures - 1), 16))


def _limit_at(periods: Sequence[PowerPeriod], instant: datetime, fill_w: float) -> float:
    """The schedule's limit at `instant`: `fill_w` before its first period, as the profile
    built from it holds (`build_dynamic_profile` fills that gap with the safe limit)."""
    limit = fill_w
    for period in periods:
        if period.start > instant:
            break
        limit = period.limit_w
    return limit


def stricter(
    new: Sequence[PowerPeriod],
    old: Sequence[PowerPeriod],
    since: datetime,
    fill_w: float,
    by_w: float = _STRICTER_BY_W,
) -> bool:
    """Whether `new` allows less than `old` by more than `by_w` at some instant from `since`
    on. Both are step functions, so comparing them at `since` and at every period start after
    it is exact."""
    instants = {since, *(p.start for p in (*new, *old) if p.start > since)}
    return any(
        _limit_at(new, t, fill_w) < _limit_at(old, t, fill_w) - by_w for t in sorted(instants)
    )


@dataclass
class DynamicSchedule:
    evse_id: int
    periods: tuple[PowerPeriod, ...]  # what we want the charger to hold
    valid_until: datetime
    profile_valid_to: datetime | None = None  # what the charger holds now
    purpose: Purpose | None = None
    split_evses: tuple[int, ...] = ()  # EVSEs holding split TxProfiles (station limit)
    failed_at: datetime | None = None
    # Failed attempts in a row and the last answer: remembered, so every caller within the
    # back-off gets that answer instead of asking the charger again.
    failures: int = 0
    refusal: CommandResult | None = None
    refused_periods: tuple[PowerPeriod, ...] = ()  # what the charger refused last
    # The periods of the profile the charger accepted last (W); () when it holds none.
    held: tuple[PowerPeriod, ...] = ()

    def retry_at(self) -> datetime | None:
        if self.failed_at is None:
            return None
        return self.failed_at + timedelta(seconds=retry_delay_s(self.failures))


@dataclass(frozen=True)
class _Outcome:
    status: CommandStatus
    reason: str | None = None
    unsupported: bool = False


def validate_schedule(periods: Sequence[PowerPeriod], valid_until: datetime) -> None:
    """Bad input from the caller: raise ValueError naming the offending value."""
    if not periods:
        raise ValueError("a dynamic schedule needs at least one period")
    if valid_until.tzinfo is None:
        raise ValueError(f"valid_until {valid_until!r} is naive; use UTC-aware datetimes")
    previous: datetime | None = None
    for period in periods:
        if period.start.tzinfo is None:
            raise ValueError(f"period start {period.start!r} is naive; use UTC-aware datetimes")
        if not period.limit_w >= 0 or period.limit_w == float("inf"):
            raise ValueError(f"period limit must be a finite number >= 0 W, got {period.limit_w}")
        if previous is not None and period.start <= previous:
            raise ValueError(f"period starts must increase: {period.start} after {previous}")
        previous = period.start
    if valid_until <= periods[0].start:
        raise ValueError(f"valid_until {valid_until} is not after the first period's start")


class ScheduleIds:
    """2.0.1 chargingSchedule ids unique per charger across restarts (CitrineOS' UNIQUE key).

    Seeded with whole seconds since 2023-11-14 so a restarted process starts above every id
    the previous one handed out as long as it used fewer than one per second on average
    (refreshes come minutes apart); stays inside a signed 32-bit integer for ~68 years.
    """

    EPOCH_S = 1_700_000_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(self._clock()) - self.EPOCH_S)
        return self._last


class SmartCharging:
    def __init__(
        self,
        model: ChargerModel,
        electrical: ElectricalData,
        safe_limit_w: float,
        dynamic_validity_s: float,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = real_sleep,
        layout: ProfileLayout = DEFAULT_LAYOUT,
    ) -> None:
        self.model = model
        self.layout = layout
        self.electrical = electrical
        self.safe_limit_w = safe_limit_w
        self.validity = timedelta(seconds=dynamic_validity_s)
        self.clock = clock
        self.sleep = sleep  # in the clock's time: the refresh timer must follow a scaled clock
        self.safe_purpose: Purpose | None = None  # accepted on the current connection
        self.safe_refused = False  # the charger answered the safe layer with a refusal
        self.dynamic: dict[int, DynamicSchedule] = {}
        self.refused: set[Purpose] = set()
        self.schedule_ids = ScheduleIds()
        self.lock = asyncio.Lock()
        self.changed = asyncio.Event()

    @property
    def caps(self) -> ChargerCapabilities:
        return self.model.capabilities or DEFAULTS

    @property
    def refresh_margin(self) -> timedelta:
        return self.validity / 3

    @property
    def tail_s(self) -> float:
        """The end of each dynamic profile that allows no more than the safe limit: half the
        refresh margin, so a live agent's refresh always replaces the profile before it."""
        return self.refresh_margin.total_seconds() / 2

    def connection_lost(self) -> None:
        self.safe_purpose = None
        self.safe_refused = False
        for schedule in self.dynamic.values():
            # A new connection (perhaps after a reboot or an update) gets a fresh start.
            schedule.failed_at = None
            schedule.failures = 0
            schedule.refusal = None

    def want(
        self, evse_id: int, periods: Sequence[PowerPeriod], valid_until: datetime
    ) -> DynamicSchedule:
        """The schedule the EVSE should hold from now on. What the charger holds and its
        back-off stay as they are until the next attempt tells otherwise."""
        schedule = self.dynamic.get(evse_id)
        if schedule is None:
            schedule = DynamicSchedule(evse_id, tuple(periods), valid_until)
            self.dynamic[evse_id] = schedule
        else:
            schedule.periods = tuple(periods)
            schedule.valid_until = valid_until
            if schedule.refusal is not None and stricter(
                schedule.periods, schedule.refused_periods, self.clock(), self.safe_limit_w
            ):
                # A lower limit (a new order, a tighter site cap) must not wait up to five
                # minutes behind the refusal of a looser one: the next attempt is now. The
                # count of failures stays, so a charger that refuses it too backs off further.
                schedule.failed_at = None
                schedule.refusal = None
        self.changed.set()
        return schedule

    # --- sending ----------------------------------------------------------------------------

    async def _set(self, connection: Connection, built: BuiltProfile) -> _Outcome:
        try:
            response = await connection.call_raw("SetChargingProfile", built.payload)
        except ChargerOfflineError as exc:
            return _Outcome(CommandStatus.OFFLINE, str(exc))
        except TimeoutError as exc:
            return _Outcome(CommandStatus.TIMEOUT, str(exc))
        except OCPPError as exc:
            return _Outcome(
                CommandStatus.REJECTED,
                f"CALLERROR {exc.code}: {exc.description}",
                unsupported=exc.code in _UNSUPPORTED_CODES,
            )
        status = response.get("status")
        if status == "Accepted":
            return _Outcome(CommandStatus.ACCEPTED)
        info = response.get("statusInfo") or {}
        detail = " ".join(str(v) for v in (info.get("reasonCode"), info.get("additionalInfo")) if v)
        return _Outcome(
            CommandStatus.REJECTED,
            f"{status}{': ' + detail if detail else ''}",
            unsupported=status in ("Rejected", "NotSupported"),
        )

    async def _with_fallback(
        self,
        chain: Sequence[Purpose],
        attempt: Callable[[Purpose], Any],
    ) -> tuple[CommandResult, Purpose | None]:
        candidates = [p for p in chain if p not in self.refused] or list(chain)
        refused_now: list[Purpose] = []
        reasons: list[str] = []
        for purpose in candidates:
            try:
                outcome: _Outcome = await attempt(purpose)
            except ProfileError as exc:
                reasons.append(f"{purpose.value}: {exc}")
                continue
            if outcome.status is CommandStatus.ACCEPTED:
                if refused_now:
                    self.refused.update(refused_now)
                    log.warning(
                        "charger %s refuses %s profiles; using %s",
                        self.model.charger_id,
                        ", ".join(p.value for p in refused_now),
                        purpose.value,
                    )
                return CommandResult(CommandStatus.ACCEPTED, outcome.reason, purpose.value), purpose
            if outcome.status in (CommandStatus.TIMEOUT, CommandStatus.OFFLINE):
                return CommandResult(outcome.status, outcome.reason, purpose.value), None
            reasons.append(f"{purpose.value}: {outcome.reason}")
            if outcome.unsupported:
                refused_now.append(purpose)
            else:
                break  # refused for another reason than its purpose: fallback would not help
        return CommandResult(CommandStatus.REJECTED, "; ".join(reasons)), None

    # --- safe layer -------------------------------------------------------------------------

    def _safe_chain(self) -> list[Purpose]:
        chain = [p for p in SAFE_CHAIN if p not in self.caps.ignored_purposes_offline]
        if len(chain) < len(SAFE_CHAIN):
            log.warning(
                "charger %s drops %s profiles while offline (IgnoredProfilePurposesOffline); "
                "the safe layer avoids them",
                self.model.charger_id,
                ", ".join(sorted(p.value for p in self.caps.ignored_purposes_offline)),
            )
        return chain or list(SAFE_CHAIN)

    async def apply_safe(self, connection: Connection) -> CommandResult:
        version = connection.version
        now = self.clock()

        async def attempt(purpose: Purpose) -> _Outcome:
            built = build_safe_profile(
                version,
                ProfileTarget(Layer.SAFE, purpose, 0),
                self.caps,
                self.electrical,
                self.safe_limit_w,
                now,
                self.schedule_ids.next(),
                layout=self.layout,
            )
            return await self._set(connection, built)

        async with self.lock:
            result, purpose = await self._with_fallback(self._safe_chain(), attempt)
            self.safe_purpose = purpose
            self.safe_refused = result.status is CommandStatus.REJECTED
        if result.status is CommandStatus.OFFLINE:
            # Gone during set-up: the next connect installs the safe layer first again, so
            # this is no fault of the charger's configuration (the disconnect is logged).
            log.info(
                "charger %s left before its safe profile was set: %s",
                self.model.charger_id,
                result.reason,
                extra={"charger_id": self.model.charger_id},
            )
        elif not result.accepted:
            log.error(
                "charger %s has no safe profile: %s",
                self.model.charger_id,
                result.reason,
                extra={"charger_id": self.model.charger_id},
            )
        return result

    # --- dynamic layer ----------------------------------------------------------------------

    def _chain_for(self, evse_id: int) -> tuple[Purpose, ...]:
        return STATION_DYNAMIC_CHAIN if evse_id == 0 else EVSE_DYNAMIC_CHAIN

    async def apply_dynamic(self, connection: Connection, evse_id: int) -> CommandResult:
        async with self.lock:
            schedule = self.dynamic.get(evse_id)
            if schedule is None:
                return CommandResult(
                    CommandStatus.REJECTED, f"no dynamic schedule for EVSE {evse_id}"
                )
            now = self.clock()
            if schedule.valid_until <= now:
                del self.dynamic[evse_id]
                return CommandResult(CommandStatus.REJECTED, "the schedule has ended")
            retry_at = schedule.retry_at()
            if schedule.refusal is not None and retry_at is not None and now < retry_at:
                # One stream per EVSE: whoever asks within the back-off gets the last answer.
                return replace(
                    schedule.refusal,
                    reason=f"{schedule.refusal.reason} (refused {schedule.failures} time(s) "
                    f"in a row; next attempt at {retry_at.isoformat(timespec='seconds')})",
                )
            valid_to = min(schedule.valid_until, now + self.validity)
            holder: dict[str, Any] = {}

            async def attempt(purpose: Purpose) -> _Outcome:
                if purpose is Purpose.TX:
                    return await self._apply_tx(connection, schedule, valid_to, now, holder)
                built = build_dynamic_profile(
                    connection.version,
                    ProfileTarget(Layer.DYNAMIC, purpose, evse_id),
                    self.caps,
                    self.electrical,
                    schedule.periods,
                    now,
                    valid_to,
                    self.schedule_ids.next(),
                    fill_limit_w=self.safe_limit_w,
                    tail_s=self.tail_s,
                    layout=self.layout,
                )
                holder["valid_to"] = built.valid_to
                return await self._set(connection, built)

            result, purpose = await self._with_fallback(self._chain_for(evse_id), attempt)
            if result.accepted:
                if schedule.purpose is Purpose.TX and purpose is not Purpose.TX:
                    schedule.split_evses = ()
                schedule.purpose = purpose
                schedule.profile_valid_to = holder.get("valid_to")
                schedule.held = schedule.periods if schedule.profile_valid_to else ()
                schedule.failed_at = None
                schedule.failures = 0
                schedule.refusal = None
            else:
                if not schedule.held:
                    schedule.purpose = None  # (a TxProfile waiting for its transaction)
                schedule.failed_at = now
                schedule.failures += 1
                schedule.refusal = result
                schedule.refused_periods = schedule.periods
                if schedule.failures == 1:
                    log.warning(
                        "charger %s EVSE %d did not take its dynamic schedule: %s; retrying "
                        "with back-off",
                        self.model.charger_id,
                        evse_id,
                        result.reason,
                        extra={"charger_id": self.model.charger_id},
                    )
            self.changed.set()
            return result

    async def _apply_tx(
        self,
        connection: Connection,
        schedule: DynamicSchedule,
        valid_to: datetime,
        now: datetime,
        holder: dict[str, Any],
    ) -> _Outcome:
        """TxProfile(s): on the EVSE's transaction, or split over all active ones (EVSE 0)."""
        if schedule.evse_id:
            session = self.model.active_session(schedule.evse_id)
            sessions = [session] if session else []
        else:
            sessions = self.model.active_sessions()
        if not sessions:
            holder["valid_to"] = None
            return _Outcome(
                CommandStatus.ACCEPTED,
                "no active transaction: the TxProfile is sent when one starts",
            )
        share = 1.0 / len(sessions) if schedule.evse_id == 0 else 1.0
        periods = tuple(replace(p, limit_w=p.limit_w * share) for p in schedule.periods)
        earliest: datetime | None = None
        for session in sessions:
            built = build_dynamic_profile(
                connection.version,
                ProfileTarget(Layer.DYNAMIC, Purpose.TX, session.evse_id, session.transaction_id),
                self.caps,
                self.electrical,
                periods,
                now,
                valid_to,
                self.schedule_ids.next(),
                fill_limit_w=self.safe_limit_w * share,
                tail_s=self.tail_s,
                profile_id=None
                if schedule.evse_id
                else self.layout.station_split_profile_id_base + session.evse_id,
                layout=self.layout,
            )
            outcome = await self._set(connection, built)
            if outcome.status is not CommandStatus.ACCEPTED:
                return outcome
            if built.valid_to is not None and (earliest is None or built.valid_to < earliest):
                earliest = built.valid_to
        if schedule.evse_id == 0:
            schedule.split_evses = tuple(s.evse_id for s in sessions)
        holder["valid_to"] = earliest
        return _Outcome(CommandStatus.ACCEPTED)

    async def transaction_started(self, connection: Connection, evse_id: int) -> None:
        """A TxProfile-mode schedule covering this EVSE now has a transaction to sit on."""
        for schedule in list(self.dynamic.values()):
            if schedule.purpose is Purpose.TX and schedule.evse_id in (0, evse_id):
                result = await self.apply_dynamic(connection, schedule.evse_id)
                if not result.accepted:
                    connection.problems.report("TxProfile on new transaction", str(result.reason))

    async def clear_dynamic(self, connection: Connection | None, evse_id: int) -> CommandResult:
        schedule = self.dynamic.pop(evse_id, None)
        self.changed.set()
        if connection is None:
            return CommandResult(
                CommandStatus.OFFLINE, "cleared here; the charger's profile expires at its validTo"
            )
        ids = [self.layout.dynamic_profile_id_base + evse_id]
        if schedule is not None:
            ids += [self.layout.station_split_profile_id_base + e for e in schedule.split_evses]
        reasons: list[str] = []
        async with self.lock:
            for profile_id in ids:
                payload: dict[str, Any] = (
                    {"id": profile_id}
                    if connection.version is ProtocolVersion.OCPP16
                    else {"chargingProfileId": profile_id}
                )
                try:
                    response = await connection.call_raw("ClearChargingProfile", payload)
                except ChargerOfflineError as exc:
                    return CommandResult(CommandStatus.OFFLINE, str(exc))
                except TimeoutError as exc:
                    return CommandResult(CommandStatus.TIMEOUT, str(exc))
                except OCPPError as exc:
                    return CommandResult(
                        CommandStatus.REJECTED, f"CALLERROR {exc.code}: {exc.description}"
                    )
                if response.get("status") == "Unknown":
                    reasons.append(f"profile {profile_id} was not installed")
        return CommandResult(CommandStatus.ACCEPTED, "; ".join(reasons) or None)

    # --- composite schedule -----------------------------------------------------------------

    async def composite(
        self, connection: Connection, evse_id: int, duration_s: int
    ) -> CompositeSchedule:
        unit = self.caps.preferred_unit
        payload: dict[str, Any]
        if connection.version is ProtocolVersion.OCPP16:
            payload = {
                "connectorId": evse_id,
                "duration": duration_s,
                "chargingRateUnit": unit.value,
            }
        else:
            payload = {"evseId": evse_id, "duration": duration_s, "chargingRateUnit": unit.value}
        try:
            response = await connection.call_raw("GetCompositeSchedule", payload)
        except ChargerOfflineError as exc:
            return CompositeSchedule(CommandResult(CommandStatus.OFFLINE, str(exc)), evse_id)
        except TimeoutError as exc:
            return CompositeSchedule(CommandResult(CommandStatus.TIMEOUT, str(exc)), evse_id)
        except OCPPError as exc:
            return CompositeSchedule(
                CommandResult(CommandStatus.REJECTED, f"CALLERROR {exc.code}: {exc.description}"),
                evse_id,
            )
        if response.get("status") != "Accepted":
            return CompositeSchedule(
                CommandResult(CommandStatus.REJECTED, str(response.get("status"))), evse_id
            )
        return read_composite(connection.version, response, evse_id, self.electrical)

    # --- refresh ----------------------------------------------------------------------------

    def next_wakeup(self, now: datetime) -> datetime | None:
        moments: list[datetime] = []
        for schedule in self.dynamic.values():
            moments.append(schedule.valid_until)
            retry_at = schedule.retry_at()
            if retry_at is not None:
                moments.append(retry_at)
            elif schedule.profile_valid_to is not None:
                moments.append(schedule.profile_valid_to - self.refresh_margin)
        return min(moments) if moments else None

    def due(self, now: datetime) -> list[int]:
        """EVSEs whose dynamic profile needs sending again now; drops ended schedules."""
        for evse_id in [e for e, s in self.dynamic.items() if s.valid_until <= now]:
            del self.dynamic[evse_id]  # the charger's profile expires at the same moment
        due: list[int] = []
        for evse_id, schedule in self.dynamic.items():
            retry_at = schedule.retry_at()
            if retry_at is not None:
                if now >= retry_at:
                    due.append(evse_id)
            elif schedule.profile_valid_to is not None and (
                schedule.profile_valid_to < schedule.valid_until
                and now >= schedule.profile_valid_to - self.refresh_margin
            ):
                due.append(evse_id)
        return due

    async def refresh_forever(self, connection: Connection) -> None:
        """Keep the dynamic layer alive on this connection (a task per connection)."""
        while True:
            now = self.clock()
            for evse_id in self.due(now):
                result = await self.apply_dynamic(connection, evse_id)
                if not result.accepted:
                    connection.problems.report("dynamic refresh failed", str(result.reason))
            wakeup = self.next_wakeup(self.clock())
            self.changed.clear()
            if wakeup is None:
                await self.changed.wait()
                continue
            timer = asyncio.ensure_future(
                self.sleep(max(0.05, (wakeup - self.clock()).total_seconds()))
            )
            changed = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait((timer, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
                changed.cancel()

    def snapshot(self) -> tuple[DynamicScheduleSnapshot, ...]:
        return tuple(
            DynamicScheduleSnapshot(
                s.evse_id,
                s.periods,
                s.valid_until,
                s.profile_valid_to,
                s.purpose.value if s.purpose else None,
                s.held,
            )
            for s in sorted(self.dynamic.values(), key=lambda s: s.evse_id)
        )

    @property
    def controllable(self) -> bool | None:
        """Whether the charger takes any profile from us (see ChargerSnapshot)."""
        if self.safe_purpose is not None or any(s.purpose for s in self.dynamic.values()):
            return True
        if self.safe_refused:
            return False
        return None


def read_composite(
    version: ProtocolVersion, response: dict[str, Any], evse_id: int, electrical: ElectricalData
) -> CompositeSchedule:
    """A GetCompositeSchedule response in W (pure; 1.6 limits may arrive as Decimal)."""
    if version is ProtocolVersion.OCPP16:
        schedule = response.get("chargingSchedule") or {}
        start_text = response.get("scheduleStart") or schedule.get("startSchedule")
    else:
        schedule = response.get("schedule") or {}
        start_text = schedule.get("scheduleStart")
    try:
        start = parse_timestamp(start_text) if start_text else None
    except TimestampError:
        start = None
    unit = RateUnit(schedule.get("chargingRateUnit", "A"))
    periods: list[PowerPeriod] = []
    base = start or utc_now()
    for period in schedule.get("chargingSchedulePeriod") or ():
        watts = limit_to_watts(float(period["limit"]), unit, electrical, period.get("numberPhases"))
        periods.append(PowerPeriod(base + timedelta(seconds=int(period["startPeriod"])), watts))
    duration = schedule.get("duration")
    return CompositeSchedule(
        CommandResult(CommandStatus.ACCEPTED),
        evse_id,
        start,
        None if duration is None else int(duration),
        tuple(periods),
    )
