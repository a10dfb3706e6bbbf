"""The simulated station: EVs plug in and leave, draw what the profiles, the supply and the
EV allow, and the meters integrate it; each change goes out through the link's outbox as the
version's messages (1.6 StatusNotification, Start/StopTransaction, MeterValues; 2.0.1
TransactionEvent, NotifyEVChargingNeeds).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp_bridge.simulator.client import SimCharger
from ocpp_bridge.simulator.common import ProtocolName, SimClock
from ocpp_bridge.simulator.link import ReconnectPolicy, StationLink, raise_if_cancelling
from ocpp_bridge.simulator.schedule import ProfileStore, StoredProfile, StoreLimits
from ocpp_bridge.simulator.state import (
    EvSession,
    EvseState,
    StationSpec,
    ev_current_a,
    share_current,
)
from ocpp_bridge.simulator.v16 import SimCharger16
from ocpp_bridge.simulator.v201 import SimCharger201


class SimulatedStation(StationLink):
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
        super().__init__(
            spec,
            url,
            password=password,
            clock=clock,
            ssl_context=ssl_context,
            reconnect=reconnect,
            boot_on_reconnect=boot_on_reconnect,
            strict=strict,
            response_timeout_s=response_timeout_s,
            seed=seed,
        )
        self.on_profile = on_profile
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
        self._wake = asyncio.Event()
        self._last_advance: datetime | None = None

    async def start(self) -> None:
        """Power on; the meters count from now, not over the time the station was off."""
        await super().start()
        self._last_advance = self.clock.now()

    def _status_changed(self, evse: EvseState) -> None:
        if self.spec.protocol is ProtocolName.OCPP201 and evse.state not in (
            "Available",
            "Preparing",
        ):
            return  # 2.0.1 tells charging states in TransactionEvent, not StatusNotification
        self._enqueue_status(evse.evse_id, evse.state)

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

        async def authorize(charger: SimCharger) -> None:
            if await charger.authorize(ev.id_token) != "Accepted":
                ev.authorized = False

        self._enqueue(authorize, f"authorize {ev.id_token}", transactional=False)
        if self.spec.protocol is ProtocolName.OCPP16:

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

            self._enqueue(start16, f"start {evse.evse_id}", transactional=True)
            return

        # Unique across runs too: an agent that keeps its database must never see a reused id.
        transaction_id = str(uuid.uuid4())
        ev.transaction_id = transaction_id
        self.store.transaction_started(evse.evse_id, transaction_id, now)
        self._enqueue_event(
            evse,
            ev,
            "Started",
            "started",
            now,
            trigger_reason="CablePluggedIn",
            w=0.0,
            charging_state="EVConnected",
            id_token=ev.id_token,
            phases_used=ev.ev_phases,
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
            self._enqueue_event(
                evse,
                ev,
                "Ended",
                "ended",
                now,
                trigger_reason="EVDeparted" if reason == "EVDisconnected" else "StopAuthorized",
                w=0.0,
                charging_state="Idle",
                stopped_reason=reason,
            )
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

            async def beat(charger: SimCharger) -> None:
                await charger.heartbeat()

            self._enqueue(beat, "heartbeat", transactional=False)
        elif requested == "StatusNotification":
            if self.spec.protocol is ProtocolName.OCPP16 and evse_id in (None, 0):

                async def station(charger: SimCharger) -> None:
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
        if ev.transaction_id is None:
            return
        self._enqueue_event(
            evse,
            ev,
            "Updated",
            what,
            now,
            trigger_reason=trigger,
            w=evse.power_w,
            amps=self._phase_currents(evse),
            charging_state=evse.state,
        )

    def _enqueue_event(
        self,
        evse: EvseState,
        ev: EvSession,
        event_type: str,
        what: str,
        now: datetime,
        **fields: Any,
    ) -> None:
        """Queue a 2.0.1 TransactionEvent of `ev` with its next sequence number and the meter
        register and link state as they are now: it may go out much later."""
        transaction_id = ev.transaction_id
        assert transaction_id is not None
        seq = ev.next_seq_no()
        register = evse.register_wh
        offline = not self.online

        async def send(charger: SimCharger201) -> None:
            await charger.transaction_event(
                event_type,
                transaction_id,
                seq,
                register,
                evse.evse_id,
                offline=offline,
                at=now,
                **fields,
            )

        self._enqueue(send, f"{what} {transaction_id}", transactional=True)

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
            raise_if_cancelling()
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
