"""Dispatch: accepted FlexOrders and the site's capacity turned into per-charger limits.

Every control round (and at once when an order arrives, an EV plugs in or leaves, a charger
connects) the dispatcher

1. builds the site's power cap per ISP over the horizon: the connection capacity, and in ordered
   ISPs the order's baseline (the D-prognosis the DSO measures against) plus the ordered change;
   an order that raises load sets a floor instead; in fleet mode, the caps of the centre's
   commands still valid (`agent.fleet.apply.binding_caps`: the strictest binds);
2. allocates the cap to the plugged-in EVs with the forecaster (least laxity first, every EV's
   energy by its calibrated departure where physics allows, 0-or-at-least-minimum per charger);
3. gives idle chargers the minimum charging power while the cap has room, so a new EV starts at
   once instead of waiting for the next round;
4. pushes each charger's schedule through the OCPP bridge as its dynamic layer (station-wide,
   short validTo, refreshed by the bridge) and re-reads a sample of composite schedules to see
   that chargers applied it.

The dispatcher holds no state that matters across a restart: everything is recomputed from the
store (orders, prognoses) and the live site, so after a crash chargers get their limits back in
the first round. Limits are finite and never negative; a charger the dispatcher does not reach
keeps its static safe profile.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from agent.fleet import store as fleet_store
from agent.fleet.apply import binding_caps
from agent.runtime import failpoints
from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.runtime.loops import DeathHook, SupervisedLoop, clock_loop
from agent.runtime.observe import Observe, discard, timed
from agent.site.forecasting import SessionNeed, SiteForecaster
from agent.site.model import Site
from agent.storage import store, trades
from agent.storage.db import Database
from agent.trading.market import Market
from agent.trading.orders import OrderedIsp, load_context
from forecaster.flexibility import SessionSet, allocate
from ocpp_bridge import (
    CentralSystem,
    ChargerConnected,
    ChargerSnapshot,
    CommandResult,
    CommandStatus,
    CompositeSchedule,
    Event,
    PowerPeriod,
    Purpose,
    SessionEnded,
    SessionStarted,
)

log = logging.getLogger(__name__)

MIN_HORIZON = timedelta(hours=2)


@dataclass
class DispatchRound:
    at: datetime
    grid: list[datetime]
    cap_w: list[float]
    floor_w: list[float]
    # Station-wide limit per charger (EVSE 0)
    schedules: dict[str, list[float]]
    unmet_wh: float
    # Per EVSE of chargers with several: each EVSE's own share of its station's limit
    evse_schedules: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    pushed: dict[tuple[str, int], CommandResult] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadBack:
    """Composite schedules a charger reported (its own, or one per connector) and when."""

    at: datetime
    composites: tuple[CompositeSchedule, ...]

    def limit_w(self, moment: datetime) -> float:
        """What the charger allows at `moment`: its connectors' limits add up."""
        return sum(_limit_at(c.periods, moment) for c in self.composites)

    def covers(self, moment: datetime) -> bool:
        for c in self.composites:
            start = c.start or c.periods[0].start
            if start <= moment < start + timedelta(seconds=c.duration_s or 0):
                return True
        return False


@dataclass(frozen=True)
class AppliedLimit:
    """The limit a charger holds by its own word, for every surface that shows one.

    source: "dynamic" (our limit, in the purpose we prefer), "fallback" (our limit in another
    purpose, named in `purpose`), "safe" (only the static safe profile), "none" (the charger
    took no profile at all: its load cannot be steered), or None while not known (offline,
    or just connected and not yet set up).
    """

    limit_w: float | None
    source: str | None
    purpose: str | None = None
    read_back: bool = False  # the charger's composite schedule confirmed it
    controllable: bool | None = None


def applied_limit(
    snapshot: ChargerSnapshot | None, read_back: ReadBack | None, now: datetime
) -> AppliedLimit:
    """What the charger accepted (and, where read back, what it reports), never what was
    only sent: a refused profile leaves the limit the charger held before."""
    if snapshot is None or not snapshot.online:
        return AppliedLimit(None, None)
    controllable = snapshot.controllable
    station = next((d for d in snapshot.dynamic if d.evse_id == 0), None)
    limit: float
    if (
        station is not None
        and station.held
        and station.purpose is not None
        and station.profile_valid_to is not None
        and now < station.profile_valid_to
    ):
        limit = _limit_at(station.held, now)
        source = "dynamic" if station.purpose == Purpose.STATION_MAX.value else "fallback"
        purpose: str | None = station.purpose
    elif snapshot.safe_purpose is not None and snapshot.safe_limit_w is not None:
        limit, source, purpose = snapshot.safe_limit_w, "safe", snapshot.safe_purpose
    elif controllable is False:
        return AppliedLimit(None, "none", controllable=False)
    else:
        return AppliedLimit(None, None, controllable=controllable)
    checked = read_back is not None and read_back.covers(now)
    if read_back is not None and checked:
        reported = read_back.limit_w(now)
        # Connectors read one by one add up to at most what the charger as a whole took.
        limit = reported if len(read_back.composites) == 1 else min(limit, reported)
    return AppliedLimit(limit, source, purpose, checked, controllable)


class Dispatcher:
    """Service component: keeps every online charger on the limits the site and orders need."""

    name = "dispatch"

    def __init__(
        self,
        config: Config,
        db: Database,
        site: Site,
        bridge: CentralSystem,
        forecaster: SiteForecaster,
        clock: Clock,
        *,
        control_s: float = 60.0,
        verify_sample: int = 5,
    ) -> None:
        self.config = config
        self.db = db
        self.site = site
        self.bridge = bridge
        self.forecaster = forecaster
        self.clock = clock
        self.market = Market(config.market_timezone, config.isp_duration_min)
        self.isp_seconds = config.isp_duration_min * 60
        self.control_s = control_s
        self.verify_sample = verify_sample
        self.capacity_w = float(config.site.connection_capacity_w)
        self._loop: SupervisedLoop | None = None
        # Told when the dispatch loop dies (the app raises the loop fault).
        self.on_loop_death: DeathHook | None = None
        self._sent: dict[tuple[str, int], tuple[tuple[PowerPeriod, ...], datetime]] = {}
        # The first round that begins at or after this instant pushes everything (round_now).
        self._resend_from: datetime | None = None
        # Why rounds must not run now (the clock guard), or None.
        self.hold: Callable[[], str | None] = lambda: None
        self._verifiers: set[asyncio.Task[None]] = set()
        self._refused: set[tuple[str, int]] = set()
        # Chargers read back per connector (no composite schedule for connector 0).
        self._per_connector: set[str] = set()
        # The last composite schedule(s) each charger reported after a push.
        self.read_back: dict[str, ReadBack] = {}
        # Profiles in flight at once: enough to reach every charger of a large site within a
        # second, bounded so a round does not open thousands of OCPP calls in one burst.
        self.push_concurrency = 100
        self._slots: asyncio.Semaphore | None = None
        self._slots_size = 0
        self.last_round: DispatchRound | None = None
        # The round whose profiles are on the chargers or on their way: a composite schedule
        # read back while a newer round pushes would compare old limits with new ones.
        self._latest_push: DispatchRound | None = None
        self.rounds = 0
        # agent.interfaces.metrics hooks: round and command durations, command outcomes.
        self.observe: Observe = discard
        self.command_results: collections.Counter[str] = collections.Counter()
        # Composite schedules read back, by outcome: "ok", "excess" (a charger allows more
        # than we sent: alert on it), "unavailable" (not answered or empty).
        self.readbacks: collections.Counter[str] = collections.Counter()
        self._round_finished = asyncio.Event()
        self._chargers = {c.id: c for c in config.ocpp.chargers}
        site.subscribe(self._site_event)

    async def start(self) -> None:
        # The first round runs at once: limits back right after a restart.
        self._loop = clock_loop(
            "dispatch",
            self._round,
            self.clock,
            interval_s=self.control_s,
            on_death=self.on_loop_death,
            logger=log,
        )
        self._loop.start()

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
            self._loop = None
        for task in list(self._verifiers):
            task.cancel()

    def wake(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.wake()

    async def release(self) -> None:
        """Take every dynamic schedule back (while the clock is not trusted, agent.runtime.clock):
        the chargers run on their safe profile, which no clock can expire."""
        # A refused push left the charger on the schedule it had before: take that back too
        # (clearing a schedule that is not there is harmless).
        sent = list(dict.fromkeys([*self._sent, *self._refused]))
        self._sent, self._refused = {}, set()
        # A read-back of the last push still under way must not bring its limits back into
        # the site model after they were withdrawn.
        self._latest_push = None
        for cid, evse_id in sent:
            result = await self._command(self.bridge.clear_dynamic_schedule(cid, evse_id))
            if evse_id == 0:
                self.site.charger(cid).limit_w = None
            log.info("dynamic schedule withdrawn", extra={"charger": cid, "result": result.status})

    async def round_now(self, *, resend: bool = False) -> DispatchRound:
        """Ask for a round at once and return the first one that began after the asking.

        Rounds push only what changed since the last push. `resend` makes the returned round
        hand every schedule to the bridge again (which sends it, unless it is the very one the
        charger's set-up sent on this connection): for an operator who knows a charger lost
        its profiles without the agent seeing it (reset from its local interface, a controller
        swapped behind a gateway that kept the connection open), and for tests that need a
        round that certainly pushes.
        """
        asked = self.clock.now()
        if resend and self._resend_from is None:
            self._resend_from = asked
        while True:
            finished = self._round_finished
            self.wake()
            await finished.wait()
            if self.last_round is not None and self.last_round.at >= asked:
                return self.last_round

    def _site_event(self, event: Event) -> None:
        if isinstance(event, SessionStarted | SessionEnded | ChargerConnected):
            self.wake()

    async def _round(self) -> None:
        """One step of the dispatch loop. A failed round leaves the chargers on their current
        limits (and, should rounds keep failing, on their safe profile once those expire)."""
        try:
            if self.hold() is None:
                await self.dispatch_once()
            elif self._sent or self._refused:
                await self.release()
        except Exception:
            self._finish_round()
            raise
        self._finish_round()

    def _finish_round(self) -> None:
        self._round_finished.set()
        self._round_finished = asyncio.Event()

    # --- one round --------------------------------------------------------------------------------

    def _grid(self, now: datetime, last_ordered: datetime | None) -> list[datetime]:
        epoch = int(now.timestamp())
        first = datetime.fromtimestamp(epoch - epoch % self.isp_seconds, UTC)
        end = now + MIN_HORIZON
        if last_ordered is not None:
            end = max(end, last_ordered + timedelta(seconds=self.isp_seconds))
        count = max(1, math.ceil((end - first).total_seconds() / self.isp_seconds))
        return [first + timedelta(seconds=k * self.isp_seconds) for k in range(count)]

    async def _orders(
        self, now: datetime
    ) -> tuple[dict[datetime, OrderedIsp], dict[datetime, float]]:
        """Targets of ordered ISPs from the current one on, and the DSO's room elsewhere."""
        today = self.market.today(now)
        context = await self.db.read(
            lambda c: load_context(
                c, since=today - timedelta(days=1), until=today + timedelta(days=1)
            )
        )
        epoch = int(now.timestamp())
        current = datetime.fromtimestamp(epoch - epoch % self.isp_seconds, UTC)
        targets = {s: i for s, i in context.targets(self.market).items() if s >= current}
        room = {s: w for s, w in context.room(self.market).items() if s >= current}
        return targets, room

    async def _fleet_caps(self, now: datetime) -> dict[datetime, float]:
        """The caps of the fleet commands in force from the current ISP on (none outside
        fleet mode: the table is empty)."""
        commands = await self.db.read(fleet_store.active_commands)
        epoch = int(now.timestamp())
        current = datetime.fromtimestamp(epoch - epoch % self.isp_seconds, UTC)
        return binding_caps(commands, now, since=current)

    async def dispatch_once(self) -> DispatchRound:
        with timed(self.observe, "round"):
            return await self._dispatch_once()

    async def _dispatch_once(self) -> DispatchRound:
        now = self.clock.now()
        ordered, room = await self._orders(now)
        fleet = await self._fleet_caps(now)
        last = max([*ordered, *fleet], default=None)
        grid = self._grid(now, last)
        horizon = len(grid)
        cap = np.full(horizon, self.capacity_w)
        floor = np.zeros(horizon)
        position = {start: k for k, start in enumerate(grid)}
        for start, isp in ordered.items():
            k = position.get(start)
            if k is None:
                continue
            if isp.change_w < 0:
                cap[k] = min(cap[k], isp.target_w)
            else:
                floor[k] = min(self.capacity_w, isp.target_w)
        for start, most in room.items():
            k = position.get(start)
            if k is not None:
                cap[k] = min(cap[k], max(most, floor[k]))
        for start, most in fleet.items():
            k = position.get(start)
            if k is not None:
                cap[k] = min(cap[k], most)

        calibration = await self.forecaster.calibration()
        online = {cid for cid, c in self.site.chargers.items() if c.online}
        sessions = [s for s in self.site.active_sessions() if s.info.charger_id in online]
        # EVs on chargers that take no profile draw what they like: not planned, but their
        # load takes its share of the cap.
        fixed = [s for s in sessions if self.site.charger(s.info.charger_id).controllable is False]
        steerable_cap = cap
        if fixed:
            sessions = [s for s in sessions if all(s is not f for f in fixed)]
            drawn = await self.forecaster.uncontrolled_load(grid[0], horizon, fixed, now=now)
            steerable_cap = np.maximum(cap - drawn, 0.0)
            online -= {s.info.charger_id for s in fixed}
        needs = self.forecaster.needs(sessions, now, calibration)
        schedules, per_evse, unmet = await asyncio.to_thread(
            self._allocate, needs, grid, steerable_cap, floor, online
        )
        self._within_csms_limits(grid, schedules, per_evse)
        round_ = DispatchRound(
            now,
            grid,
            cap.tolist(),
            floor.tolist(),
            {k: v.tolist() for k, v in schedules.items()},
            unmet,
            {k: v.tolist() for k, v in per_evse.items()},
        )
        await self._push(round_)
        self.sync_limits()
        self.last_round = round_
        self.rounds += 1
        return round_

    def _allocate(
        self,
        needs: Sequence[SessionNeed],
        grid: list[datetime],
        cap: np.ndarray,
        floor: np.ndarray,
        online: set[str],
    ) -> tuple[dict[str, np.ndarray], dict[tuple[str, int], np.ndarray], float]:
        horizon = len(grid)
        schedules: dict[str, np.ndarray] = {cid: np.zeros(horizon) for cid in online}
        per_evse: dict[tuple[str, int], np.ndarray] = {}
        limits, used, unmet = allocate_limits(
            needs, grid[0], cap, self.config.isp_duration_min, self._keep_levels(needs)
        )
        for need, limit in zip(needs, limits, strict=True):
            cid = need.session.info.charger_id
            schedules[cid] = schedules.get(cid, np.zeros(horizon)) + limit
            # A station with several EVSEs shares its station-wide limit as it sees fit
            # (typically equally, pausing every EV below 6 A): each EVSE gets its own.
            if self._evse_count(cid) > 1:
                per_evse[(cid, need.session.info.evse_id)] = limit
        busy = {n.session.info.charger_id for n in needs}
        for cid in sorted(online - busy):
            # An idle charger may start an EV at its minimum power while the cap has room.
            minimum = self._min_power(cid)
            room = cap - used
            allowance = np.where(room >= minimum, minimum, 0.0)
            schedules[cid] = allowance
            used = used + allowance
        return schedules, per_evse, unmet

    def _within_csms_limits(
        self,
        grid: list[datetime],
        schedules: dict[str, np.ndarray],
        per_evse: dict[tuple[str, int], np.ndarray],
    ) -> None:
        """A charger relayed to its operator's CSMS (local-controller mode) also holds that
        CSMS's own profiles, and draws the lower of both limits: its plan is kept within
        theirs, ISP by ISP, so that what the agent plans with is what the charger allows."""
        step = timedelta(seconds=self.isp_seconds)

        def bound(cid: str, evse_id: int, evses: int) -> np.ndarray | None:
            limits = [
                self.bridge.csms_limit_w(cid, s, s + step, evse_id=evse_id, evses=evses)
                for s in grid
            ]
            if all(limit is None for limit in limits):
                return None
            return np.array([np.inf if limit is None else limit for limit in limits])

        for cid, values in schedules.items():
            evses = max(1, self._evse_count(cid))
            station = bound(cid, 0, evses)
            if station is not None:
                schedules[cid] = np.minimum(values, station)
            for (charger, evse_id), evse_values in per_evse.items():
                if charger != cid:
                    continue
                own = bound(cid, evse_id, evses)
                limit = schedules[cid] if own is None else np.minimum(own, schedules[cid])
                per_evse[(charger, evse_id)] = np.minimum(evse_values, limit)

    def _keep_levels(self, needs: Sequence[SessionNeed]) -> list[float]:
        """Per EV, the charger limit (W) it keeps where the plan has no energy for it: its
        share of its charger's safe limit, the level the charger falls back to anyway."""
        sharing = collections.Counter(n.session.info.charger_id for n in needs)
        return [
            self.safe_power_w(n.session.info.charger_id) / sharing[n.session.info.charger_id]
            for n in needs
        ]

    def safe_power_w(self, charger_id: str) -> float:
        charger = self._chargers.get(charger_id)
        if charger is None:  # admitted on first contact: the bridge's default safe limit
            return float(self.bridge.settings.default_safe_power_w)
        return float(self.config.safe_power_w(charger))

    def _evse_count(self, charger_id: str) -> int:
        state = self.site.chargers.get(charger_id)
        return 0 if state is None else sum(1 for e in state.evses if e > 0)

    def _min_power(self, charger_id: str) -> float:
        charger = self._chargers.get(charger_id)
        if charger is None:
            return 6.0 * 230.0 * 3
        return charger.min_current_a * charger.nominal_voltage_v * charger.phases

    async def _push(self, round_: DispatchRound) -> None:
        valid_until = round_.grid[-1] + timedelta(seconds=self.isp_seconds)
        wanted: dict[tuple[str, int], list[PowerPeriod]] = {}
        for cid, values in round_.schedules.items():
            wanted[(cid, 0)] = _periods(round_.grid, values, round_.at)
        for key, values in round_.evse_schedules.items():
            wanted[key] = _periods(round_.grid, values, round_.at)
        jobs: dict[tuple[str, int], asyncio.Task[CommandResult]] = {}
        resend = self._resend_from is not None and round_.at >= self._resend_from
        if resend:
            self._resend_from = None
        for (cid, evse_id), periods in wanted.items():
            previous = self._sent.get((cid, evse_id))
            if (
                not resend
                and previous is not None
                and _same_from(previous[0], periods, round_.at)
                and (previous[1] >= valid_until - timedelta(seconds=self.isp_seconds))
            ):
                continue
            jobs[(cid, evse_id)] = asyncio.create_task(
                self._command(self.bridge.set_dynamic_schedule(cid, periods, valid_until, evse_id))
            )
            if evse_id == 0:
                self.read_back.pop(cid, None)  # what the charger reported is about to change
        # An EVSE whose EV left keeps no limit of its own: the station-wide one rules again.
        for key in [k for k in self._sent if k[1] > 0 and k not in wanted]:
            del self._sent[key]
            jobs[key] = asyncio.create_task(self._command(self.bridge.clear_dynamic_schedule(*key)))
        log.debug(
            "dispatch round",
            extra={
                "chargers": len(round_.schedules),
                "pushes": len(jobs),
                "lowest_cap_w": round(min(round_.cap_w)),
                "unmet_wh": round(round_.unmet_wh),
            },
        )
        if not jobs:
            return  # nothing changes on the chargers: the last push's read-back stays valid
        self._latest_push = round_
        if len(jobs) > 1 and min(round_.cap_w) < self.capacity_w:
            # Crash-safety tests die here: one charger has its new limit, the others not.
            await asyncio.wait(jobs.values(), return_when=asyncio.FIRST_COMPLETED)
            failpoints.hit(failpoints.DISPATCH_MID_PUSH)
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        rejected: list[str] = []
        for key, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                log.error("dynamic schedule for %s EVSE %d failed: %s", key[0], key[1], result)
                continue
            round_.pushed[key] = result
            if not result.accepted:
                # Not held: the next round asks again (the bridge retries with back-off and
                # answers every round in between with the refusal it remembers). Said once.
                self._sent.pop(key, None)
                # Offline is no refusal: the disconnect is logged where it happens, and the
                # charger's own profile runs out at its validTo onto the safe layer.
                if result.status is not CommandStatus.OFFLINE and key not in self._refused:
                    self._refused.add(key)
                    rejected.append(
                        f"{key[0]}/{key[1]}: {result.status} {result.reason or ''}".strip()
                    )
                continue
            self._refused.discard(key)
            if key in wanted:  # (else: an EVSE's own limit the charger cleared)
                self._sent[key] = (tuple(wanted[key]), valid_until)
        self.sync_limits()
        if rejected:
            log.warning(
                "chargers did not take their dynamic schedule",
                extra={"chargers": "; ".join(rejected[:10])},
            )
        accepted = [cid for (cid, evse), r in round_.pushed.items() if r.accepted and evse == 0]
        if accepted:
            sample = {cid: wanted[(cid, 0)] for cid in accepted[: self.verify_sample]}
            task = asyncio.create_task(self._verify(sample, round_))
            self._verifiers.add(task)
            task.add_done_callback(self._verifiers.discard)

    async def _command(self, command: Awaitable[CommandResult]) -> CommandResult:
        async with self._push_slots():
            return await self._command_now(command)

    def _push_slots(self) -> asyncio.Semaphore:
        if self._slots is None or self._slots_size != self.push_concurrency:
            self._slots = asyncio.Semaphore(self.push_concurrency)
            self._slots_size = self.push_concurrency
        return self._slots

    async def _command_now(self, command: Awaitable[CommandResult]) -> CommandResult:
        status = "error"
        try:
            with timed(self.observe, "set_dynamic_schedule"):
                result = await command
            status = str(result.status)
            return result
        finally:
            self.command_results[status] += 1

    async def _verify(self, sample: dict[str, list[PowerPeriod]], round_: DispatchRound) -> None:
        """Re-read composite schedules: did the chargers apply what we sent?"""
        for cid, sent in sample.items():
            composites = await self._read_back(cid)
            if self._latest_push is not round_:
                return  # a newer round is (re)setting limits: its own check will tell
            usable = [c for c in composites if c.result.accepted and c.periods]
            if not usable:
                self.readbacks["unavailable"] += 1
                continue
            self.read_back[cid] = ReadBack(self.clock.now(), tuple(usable))
            held = self.bridge.dynamic_schedule(cid, 0)
            excess = None
            for composite in usable:
                start = composite.start or composite.periods[0].start
                until = start + timedelta(seconds=composite.duration_s or self.isp_seconds)
                if held is not None and held.profile_valid_to is not None:
                    until = min(until, held.profile_valid_to)
                # A connector's composite is within the charger's: both compare with what the
                # charger as a whole was sent.
                excess = excess or _excess(composite.periods, sent, until)
            self.readbacks["ok" if excess is None else "excess"] += 1
            self.sync_limits([cid])
            if excess is not None:
                moment, applied, allowed = excess
                log.error(
                    "charger %s reports %.0f W allowed from %s, we sent %.0f W",
                    cid,
                    applied,
                    moment.isoformat(),
                    allowed,
                )

    def applied(self, charger_id: str) -> AppliedLimit:
        """The limit the charger holds now, by the bridge's record of what it accepted and
        the composite schedule it last reported."""
        return applied_limit(
            self.bridge.charger_snapshot(charger_id),
            self.read_back.get(charger_id),
            self.clock.now(),
        )

    def sync_limits(self, charger_ids: Sequence[str] | None = None) -> None:
        """Bring the site model's limits up to what the chargers hold."""
        for cid in self.site.chargers if charger_ids is None else charger_ids:
            state = self.site.charger(cid)
            applied = self.applied(cid)
            state.limit_w = applied.limit_w
            state.limit_source = applied.source
            state.controllable = applied.controllable

    async def _read_back(self, charger_id: str) -> list[CompositeSchedule]:
        """The charger's composite schedule, or its connectors' where the charger refuses
        one for the whole of it (a 1.6 charge point that leaves ChargePointMaxProfile out
        of its composite answers connector 0 with Rejected)."""
        if charger_id not in self._per_connector:
            whole = await self.bridge.composite_schedule(charger_id, 0, self.isp_seconds)
            if whole.result.status is not CommandStatus.REJECTED:
                return [whole]
        if charger_id not in self._per_connector:  # (a concurrent read-back may have said it)
            self._per_connector.add(charger_id)
            log.info(
                "charger %s refuses a composite schedule for connector 0 (%s); reading its "
                "connectors' instead",
                charger_id,
                whole.result.reason,
                extra={"charger_id": charger_id},
            )
        state = self.site.chargers.get(charger_id)
        evses = sorted(e for e in (state.evses if state else ()) if e > 0) or [1]
        return [
            await self.bridge.composite_schedule(charger_id, e, self.isp_seconds) for e in evses
        ]

    # --- delivery -------------------------------------------------------------------------------

    async def delivery(self, order: trades.OrderRow) -> list[tuple[int, float, float, float]]:
        """Per ordered ISP: (index, baseline W, ordered change W, measured W so far)."""
        start, end = self.market.bounds(order.period)

        def read(conn: sqlite3.Connection) -> tuple[trades.PrognosisRow | None, dict[int, float]]:
            base = trades.prognosis_by_message(conn, order.baseline_message_id or "")
            energy = store.congestion_point_energy(conn, order.congestion_point, start, end)
            return base, energy

        baseline, energy = await self.db.read(read)
        starts = {isp.index: isp.start for isp in self.market.isps(order.period)}
        to_w = 3600.0 / self.isp_seconds
        out = []
        for index, change in sorted(order.change_per_isp().items()):
            isp_start = starts[index]
            base = float(baseline.power_w[index - 1]) if baseline is not None else math.nan
            measured = energy.get(int(isp_start.timestamp()), 0.0) * to_w
            out.append((index, base, float(change), measured))
        return out


def allocate_limits(
    needs: Sequence[SessionNeed],
    start: datetime,
    cap: np.ndarray,
    isp_minutes: int,
    keep_limit_w: Sequence[float],
) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Charger limits (W) per plugged-in EV over the grid from `start`, the site power they
    draw (W) and the energy left unmet (Wh).

    The forecaster's allocation gives each EV the energy it is estimated to need; beyond that
    estimate (which is only an estimate: the car may want more) and wherever the allocation
    leaves an EV without power, the EV keeps charging at `keep_limit_w` (its share of the
    safe limit) as far as the cap has room. So a plugged-in EV is held at 0 only where an
    order or the site limit leaves no room for its minimum, never by where a plan ends.
    """
    horizon = len(cap)
    if not needs:
        return [], np.zeros(horizon), 0.0
    sessions = SessionSet.from_instants(
        start,
        isp_minutes,
        [start] * len(needs),
        [n.leave for n in needs],
        [n.energy_wh for n in needs],
        [n.pmin_w for n in needs],
        [n.pmax_w for n in needs],
    )
    # As much as the cap allows: that also serves a raise order's floor as far as the EVs
    # can take energy (nobody can be made to charge a full battery).
    result = allocate(sessions, cap, cap, isp_minutes)
    # Allocated in watts the EV draws; the charger's limit per phase must let a one-phase
    # car draw them (its per-phase amps are a third of the 3-phase W): limit = W x factor.
    levels = [
        min(n.pmax_w, keep / n.limit_factor) for n, keep in zip(needs, keep_limit_w, strict=True)
    ]
    drawn = keep_charging(
        result.schedule_w,
        np.array([n.pmin_w for n in needs]),
        np.array(levels),
        cap - result.site_w,
    )
    limits = [row * n.limit_factor for n, row in zip(needs, drawn, strict=True)]
    return limits, drawn.sum(axis=0), float(result.unmet_wh.sum())


def keep_charging(
    schedule_w: np.ndarray, pmin_w: np.ndarray, level_w: np.ndarray, room_w: np.ndarray
) -> np.ndarray:
    """`schedule_w` (N, H) raised towards `level_w` (N,) wherever it is lower, using at most
    `room_w` (H,) of spare site power in all; a raise that would leave an EV below its
    minimum `pmin_w` (N,) is not made (it would be a pause in disguise)."""
    out = np.array(schedule_w, dtype=np.float64, copy=True)
    room = np.maximum(np.asarray(room_w, dtype=np.float64), 0.0)
    for i in range(out.shape[0]):
        extra = np.minimum(np.maximum(level_w[i] - out[i], 0.0), room)
        raised = out[i] + extra
        usable = (extra > 0) & (raised >= pmin_w[i] - 1e-6)
        out[i] = np.where(usable, raised, out[i])
        room = room - np.where(usable, extra, 0.0)
    return out


def _periods(
    grid: list[datetime], values: np.ndarray | list[float], now: datetime
) -> list[PowerPeriod]:
    """Merge equal neighbours; the first period starts now (the charger applies it at once)."""
    periods: list[PowerPeriod] = []
    for start, value in zip(grid, values, strict=True):
        limit = float(max(0.0, round(float(value))))
        begin = max(start, now.replace(microsecond=0))
        if periods and periods[-1].limit_w == limit:
            continue
        if periods and begin <= periods[-1].start:
            periods[-1] = PowerPeriod(periods[-1].start, limit)
            continue
        periods.append(PowerPeriod(begin, limit))
    return periods


def _limit_at(periods: Sequence[PowerPeriod], moment: datetime) -> float:
    """The limit in force at `moment` (the first period's before it starts)."""
    value = periods[0].limit_w
    for p in periods:
        if p.start <= moment:
            value = p.limit_w
    return value


CLOCK_SKEW = timedelta(seconds=5)
"""How far a charger's clock may be off ours before a period boundary counts as missed."""


def _excess(
    applied: Sequence[PowerPeriod], sent: Sequence[PowerPeriod], until: datetime
) -> tuple[datetime, float, float] | None:
    """The first moment a composite schedule (periods up to `until`) allows more than we
    sent, as (moment, applied W, sent W), or None. A composite may be lower (the safe layer,
    the EV) but never higher. The W -> A -> W rounding on the charger's side is tolerated,
    and so are a few seconds around each boundary, where the charger's clock and ours may
    disagree about when a step happens."""
    for i, period in enumerate(applied):
        end = applied[i + 1].start if i + 1 < len(applied) else until
        begin, end = period.start + CLOCK_SKEW, end - CLOCK_SKEW
        if end < begin:
            continue  # a sliver around a boundary
        for moment in [begin, *(p.start for p in sent if begin < p.start <= end)]:
            allowed = _limit_at(sent, moment)
            if period.limit_w > allowed + max(250.0, 0.05 * allowed):
                return (period.start if moment == begin else moment), period.limit_w, allowed
    return None


def _same_from(old: Sequence[PowerPeriod], new: Sequence[PowerPeriod], now: datetime) -> bool:
    """Whether `new` may be skipped because the charger already holds `old`: never when a
    limit goes down (the site cap depends on it), and not when one goes up by more than
    max(250 W, 5 %) (small rises are not worth a SetChargingProfile per charger per round)."""
    moments = sorted(
        {now, *(p.start for p in old if p.start > now), *(p.start for p in new if p.start > now)}
    )
    for moment in moments:
        before, after = _limit_at(old, moment), _limit_at(new, moment)
        if after < before or after - before > max(250.0, 0.05 * before):
            return False
    return True
