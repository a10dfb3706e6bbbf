"""A simulated charging site: stations, drivers and their EVs, on the agent's clock.

For `flexbridge demo`, the end-to-end tests and the benchmarks: a fleet of simulated OCPP
stations (`ocpp_bridge.simulator`, both versions, 11 and 22 kW, one or two EVSEs) that connect
to the agent's OCPP listener with credentials, and a session generator that draws the day's
arrivals, energies and departures from real sessions: the Caltech ACN-Data garage, May-December
2019 (Lee, Li, Low, e-Energy 2019; CC BY 4.0), reduced to a compact pool that ships with the
package (`agent.demo.pool`).

How a day is drawn (`SessionGenerator.plan`):
- the number and shape of sessions come from real days of the same day type (weekday,
  Saturday, Sunday or holiday): a source day is picked at random and each of its sessions is
  kept with probability fleet EVSEs / Caltech EVSEs (more days when the fleet is larger), so
  busy and quiet days, morning peaks and overnight stays keep their real joint distribution;
- arrival keeps its local clock time (08:10 in Pasadena is 08:10 at the site, DST included),
  the stay keeps its length, the energy the EV takes is the energy Caltech delivered, and a
  driver who used the ACN app states a requested energy and a departure time, as then;
- drivers find a free EVSE (a few minutes after the previous EV left) or go elsewhere;
- each EV gets an on-board charger from a European mix (`EV_MIX`): one-phase 3.7/7.4 kW or
  three-phase 11/22 kW, so a one-phase EV on a three-phase 11 kW station draws 3.7 kW.

Everything is seeded: the same seed and days give the same plan, and what is drawn for a day
(arrivals, stays, energies, EVs) does not depend on which other days are drawn with it; only
which EVSE a driver finds free does.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from agent.demo.pool import SessionPool
from agent.runtime.clock import Clock, SystemClock
from forecaster.calendar import (
    WEEKDAY,
    SiteCalendar,
)
from forecaster.forecast import PowerHistory
from forecaster.kernels.sessions import asap_power
from ocpp_bridge.passwords import ScryptParameters, hash_password
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.settings import ChargerRecord
from ocpp_bridge.simulator import (
    ProtocolName,
    ReconnectPolicy,
    SimulatedStation,
    StationSpec,
)

log = logging.getLogger(__name__)

# (on-board charger power W, phases, share): an assumption for a European fleet, not a
# measurement. One-phase 7.4 kW EVs draw 3.7 kW on a 16 A three-phase station.
EV_MIX: tuple[tuple[float, int, float], ...] = (
    (3_700.0, 1, 0.10),
    (7_400.0, 1, 0.20),
    (11_000.0, 3, 0.55),
    (22_000.0, 3, 0.15),
)
CHANGEOVER = timedelta(minutes=5)  # an EVSE is free again this long after an EV left
DEFAULT_PASSWORD = "flexbridge-simulated-site"  # Basic-auth password of every simulated station


# --- the fleet --------------------------------------------------------------------------------


def default_fleet(
    count: int = 20, prefix: str = "DEMO-", meter_interval_s: float = 60.0
) -> list[StationSpec]:
    """A mixed site: half OCPP 1.6, half 2.0.1; every fifth station 22 kW (32 A), the rest
    11 kW (16 A); every third station with two EVSEs. Ids ``<prefix>001`` onwards.

    Meter samples go out every `meter_interval_s` of simulated time per EVSE: at a clock
    speed S a two-EVSE station sends about 2 x S / interval messages per real second, which
    must stay below the bridge's per-charger budget (`BridgeSettings.max_calls_per_s`, 20).
    """
    if count < 1:
        raise ValueError(f"a fleet needs at least one station, got {count}")
    fleet = []
    for i in range(count):
        protocol = ProtocolName.OCPP16 if i % 2 == 0 else ProtocolName.OCPP201
        amps = 32.0 if i % 5 == 4 else 16.0
        evses = 2 if i % 3 == 2 else 1
        kw = round(amps * 230 * 3 / 1000)
        fleet.append(
            StationSpec(
                charger_id=f"{prefix}{i + 1:03d}",
                protocol=protocol,
                evse_count=evses,
                max_current_a=amps,
                vendor="flexbridge-sim",
                model=f"AC{kw}-{evses}" + ("-ocpp16" if protocol is ProtocolName.OCPP16 else ""),
                serial_number=f"SIM{i + 1:06d}",
                meter_interval_s=meter_interval_s,
            )
        )
    return fleet


def charger_records(
    fleet: Sequence[StationSpec],
    safe_power_w: float | Mapping[str, float],
    password: str = DEFAULT_PASSWORD,
    scrypt: ScryptParameters | None = None,
) -> list[ChargerRecord]:
    """The bridge's records for a fleet. Max current is the station's supply (all EVSEs):
    the bridge's station-wide limits are what it sends; each EVSE caps itself."""
    password_hash = hash_password(password, scrypt) if scrypt else hash_password(password)
    return [
        ChargerRecord(
            spec.charger_id,
            password_hash,
            electrical=ElectricalData(
                phases=spec.phases,
                nominal_voltage_v=spec.nominal_voltage_v,
                min_current_a=spec.min_current_a,
                max_current_a=spec.supply_current_a,
            ),
            safe_power_w=safe_power_w
            if isinstance(safe_power_w, int | float)
            else safe_power_w[spec.charger_id],
        )
        for spec in fleet
    ]


def charger_config(
    fleet: Sequence[StationSpec], password: str = DEFAULT_PASSWORD
) -> list[dict[str, Any]]:
    """``[[ocpp.chargers]]`` entries (agent configuration) for a fleet."""
    return [
        {
            "id": spec.charger_id,
            "phases": spec.phases,
            "nominal_voltage_v": spec.nominal_voltage_v,
            "max_current_a": spec.supply_current_a,
            "min_current_a": spec.min_current_a,
            "password": password,
        }
        for spec in fleet
    ]


# --- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedSession:
    """One EV's visit: where, when, how much it takes, and what its driver says."""

    charger_id: str
    evse_id: int
    arrival: datetime
    departure: datetime
    energy_needed_wh: float
    ev_max_power_w: float
    ev_phases: int
    id_token: str
    requested_energy_wh: float | None = None
    stated_departure: datetime | None = None


@dataclass(frozen=True)
class SitePlan:
    sessions: tuple[PlannedSession, ...]
    # Drivers who found every EVSE taken (the site is smaller than the garage at that hour).
    turned_away: int = 0


@dataclass(frozen=True)
class _Draw:
    arrival: datetime
    stay_s: int
    energy_wh: float
    requested_wh: float
    stated_s: float
    ev_power_w: float
    ev_phases: int
    id_token: str
    evse_pick: float


class SessionGenerator:
    """Draws a site's sessions for local days from a pool of real ones (see the module doc)."""

    def __init__(
        self,
        fleet: Sequence[StationSpec],
        timezone: str,
        seed: int = 0,
        pool: SessionPool | None = None,
        holidays: Iterable[date] = (),
        occupancy: float = 1.0,
    ) -> None:
        """`occupancy` scales the number of drivers relative to the Caltech garage per EVSE
        (1.0: as busy as Caltech; 2.0: twice the drivers, for a congested demo day)."""
        if not fleet:
            raise ValueError("the session generator needs a fleet of at least one station")
        if not occupancy > 0:
            raise ValueError(f"occupancy must be > 0, got {occupancy}")
        self.fleet = list(fleet)
        self.calendar = SiteCalendar.of(timezone, holidays=holidays)
        self.zone = ZoneInfo(timezone)
        self.seed = seed
        self.pool = pool or SessionPool.read()
        self.evses = [(spec, e) for spec in self.fleet for e in range(1, spec.evse_count + 1)]
        self.scale = occupancy * len(self.evses) / self.pool.source_evses

    def _rng(self, day: date) -> np.random.Generator:
        # One stream per (seed, day): a day's draw does not depend on the other days drawn.
        return np.random.default_rng([self.seed, day.toordinal()])

    def _draw_day(self, day: date) -> list[_Draw]:
        rng = self._rng(day)
        day_type = int(self.calendar.day_types(np.array([day.toordinal()], dtype=np.int64))[0])
        candidates = self.pool.days_of_type(day_type)
        if candidates.size == 0:
            candidates = self.pool.days_of_type(WEEKDAY)
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.zone)
        draws: list[_Draw] = []
        for copy in range(math.ceil(self.scale)):
            keep = min(1.0, self.scale - copy)
            source = int(rng.choice(candidates))
            lo, hi = int(self.pool.day_start[source]), int(self.pool.day_start[source + 1])
            for i in range(lo, hi):
                if rng.random() >= keep:
                    continue
                power, phases = _ev(rng)
                local = midnight + timedelta(seconds=int(self.pool.arrival_s[i]))
                draws.append(
                    _Draw(
                        # Wall-clock arithmetic, then to UTC: arrivals keep their local time.
                        arrival=local.astimezone(UTC),
                        stay_s=int(self.pool.stay_s[i]),
                        energy_wh=float(self.pool.energy_wh[i]),
                        requested_wh=float(self.pool.requested_wh[i]),
                        stated_s=float(self.pool.stated_s[i]),
                        ev_power_w=power,
                        ev_phases=phases,
                        id_token=f"{int(rng.integers(0, 2**32)):08X}",
                        evse_pick=float(rng.random()),
                    )
                )
        return draws

    def plan(self, first_day: date, days: int = 1) -> SitePlan:
        """Sessions arriving on `days` local days from `first_day`, assigned to free EVSEs."""
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        draws: list[_Draw] = []
        for offset in range(days):
            draws += self._draw_day(first_day + timedelta(days=offset))
        draws.sort(key=lambda d: (d.arrival, d.id_token))
        free_at = [datetime.min.replace(tzinfo=UTC)] * len(self.evses)
        sessions: list[PlannedSession] = []
        turned_away = 0
        for draw in draws:
            free = [i for i, moment in enumerate(free_at) if moment <= draw.arrival]
            if not free:
                turned_away += 1
                continue
            index = free[min(int(draw.evse_pick * len(free)), len(free) - 1)]
            spec, evse_id = self.evses[index]
            departure = draw.arrival + timedelta(seconds=draw.stay_s)
            free_at[index] = departure + CHANGEOVER
            stated = (
                None
                if math.isnan(draw.stated_s)
                else draw.arrival + timedelta(seconds=draw.stated_s)
            )
            sessions.append(
                PlannedSession(
                    charger_id=spec.charger_id,
                    evse_id=evse_id,
                    arrival=draw.arrival,
                    departure=departure,
                    energy_needed_wh=draw.energy_wh,
                    ev_max_power_w=draw.ev_power_w,
                    ev_phases=draw.ev_phases,
                    id_token=draw.id_token,
                    requested_energy_wh=None
                    if math.isnan(draw.requested_wh)
                    else draw.requested_wh,
                    stated_departure=stated,
                )
            )
        return SitePlan(tuple(sessions), turned_away)

    def power_history(self, first_day: date, days: int, isp_minutes: int = 15) -> PowerHistory:
        """Mean power per ISP and station for `days` local days from `first_day`, each EV
        charging as soon as possible at what it and its EVSE allow (no site limit).

        Rows follow the fleet's order; the sum over rows is the site. The day before is
        drawn too, so the first morning starts with the EVs that stayed overnight.
        """
        plan = self.plan(first_day - timedelta(days=1), days + 1)
        calendar = SiteCalendar.of(self.calendar.timezone, isp_minutes)
        start = calendar.local_midnight(first_day)
        end = calendar.local_midnight(first_day + timedelta(days=days))
        isp_s = isp_minutes * 60
        length = int((end - start).total_seconds()) // isp_s
        specs = {spec.charger_id: (row, spec) for row, spec in enumerate(self.fleet)}
        values = np.zeros((len(self.fleet), length))
        for row, spec in enumerate(self.fleet):
            mine = [s for s in plan.sessions if specs[s.charger_id][0] == row]
            if not mine:
                continue
            values[row] = asap_power(
                np.array([int(s.arrival.timestamp()) for s in mine], dtype=np.int64),
                np.array([int(s.departure.timestamp()) for s in mine], dtype=np.int64),
                np.array([s.energy_needed_wh for s in mine], dtype=np.float64),
                np.array([drawn_power_w(spec, s) for s in mine], dtype=np.float64),
                int(start.timestamp()),
                isp_s,
                length,
            )
        return PowerHistory(start=start, isp_minutes=isp_minutes, values=values)


def drawn_power_w(spec: StationSpec, session: PlannedSession) -> float:
    """What the EV draws on its EVSE with nothing else limiting it (the station's rule)."""
    phases = min(session.ev_phases, spec.phases)
    ev_amps = session.ev_max_power_w / (spec.nominal_voltage_v * phases)
    return min(ev_amps, spec.max_current_a) * spec.nominal_voltage_v * phases


def _ev(rng: np.random.Generator) -> tuple[float, int]:
    shares = np.array([share for _, _, share in EV_MIX])
    power, phases, _ = EV_MIX[int(rng.choice(len(EV_MIX), p=shares / shares.sum()))]
    return power, phases


# --- the running site ---------------------------------------------------------------------------


class SimulatedSite:
    """The fleet of simulated stations, connected to an OCPP listener, with EVs coming and
    going on the clock. ``await start()``; ``await play(plan)`` plugs EVs in at their
    arrival times (stations unplug them at departure); ``await stop()``."""

    def __init__(
        self,
        url: str,
        fleet: Sequence[StationSpec],
        clock: Clock | None = None,
        *,
        password: str | Mapping[str, str] = DEFAULT_PASSWORD,
        reconnect: ReconnectPolicy | None = None,
        strict: bool = True,
        ssl_context: Any = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.fleet = list(fleet)
        self.stations = {
            spec.charger_id: SimulatedStation(
                spec,
                url,
                password=password if isinstance(password, str) else password[spec.charger_id],
                clock=self.clock,
                ssl_context=ssl_context,
                reconnect=reconnect,
                strict=strict,
            )
            for spec in self.fleet
        }
        self.skipped: list[PlannedSession] = []

    async def start(self) -> None:
        for station in self.stations.values():
            await station.start()

    async def wait_ready(self) -> None:
        """Until every station is connected and booted (real time: wrap in a timeout)."""
        await asyncio.gather(*(s.wait_ready() for s in self.stations.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.stations.values()))

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def play(self, plan: SitePlan | Iterable[PlannedSession]) -> None:
        """Plug each EV in at its arrival on the clock; returns after the last arrival.

        A session whose arrival has passed is plugged in at once if its EV has not left yet
        (a demo that starts mid-morning finds the early EVs already there) and skipped
        otherwise.
        """
        sessions = plan.sessions if isinstance(plan, SitePlan) else tuple(plan)
        for session in sorted(sessions, key=lambda s: s.arrival):
            wait = (session.arrival - self.clock.now()).total_seconds()
            if wait > 0:
                await self.clock.sleep(wait)
            self.plug_in(session)

    def plug_in(self, session: PlannedSession) -> bool:
        now = self.clock.now()
        station = self.stations[session.charger_id]
        if session.departure <= now:
            self.skipped.append(session)
            return False
        occupant = station.session(session.evse_id)
        if occupant is not None:
            if occupant.departure <= now:
                station.unplug(session.evse_id)  # it was leaving this very moment
            else:
                log.warning(
                    "%s EVSE %d still occupied; session of %s skipped",
                    session.charger_id,
                    session.evse_id,
                    session.id_token,
                )
                self.skipped.append(session)
                return False
        station.plug_in(
            session.evse_id,
            session.energy_needed_wh,
            session.ev_max_power_w,
            session.departure,
            session.id_token,
            session.requested_energy_wh,
            stated_departure=session.stated_departure,
            ev_phases=session.ev_phases,
        )
        return True

    def power_w(self) -> float:
        """What the site's EVs draw now."""
        return sum(
            station.power_w(evse_id)
            for station in self.stations.values()
            for evse_id in station.evses
        )

    def energy_wh(self) -> float:
        """Energy the site's meters counted so far (all EVSE registers)."""
        return sum(
            station.register_wh(evse_id)
            for station in self.stations.values()
            for evse_id in station.evses
        )

    @property
    def online(self) -> int:
        return sum(1 for s in self.stations.values() if s.online)
