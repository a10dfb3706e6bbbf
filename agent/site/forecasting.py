"""The agent's use of `forecaster`: history from the store, forecasts, session scenarios.

`forecaster` is pure numerics over arrays; this module turns the agent's records into those
arrays and back. Three products:

- **Load forecasts** per congestion point at the market's ISPs (day-ahead, or intraday with the
  plugged-in EVs), P10/P50/P90 in W. An ISP the agent measured without energy had zero load; one
  from before the agent ran is a gap, so a fresh install forecasts from what it has.
- **Session calibration** from finished sessions: how late drivers leave compared to what they
  said, how much of what they request they take (docs/forecasting.md).
- **Scenarios** for offer sizing and revocation: the EVs plugged in now (calibrated departure and
  energy) plus the arrivals of the last comparable days, on a period's ISP grid.

Forecasts (day-ahead with structure selection, intraday) run in a short-lived worker
process (`forecaster.worker`), which loads numba and the compiled kernels from the cache under
the state directory and exits; the agent's own process never loads numba (over 100 MB that
would stay resident for a few forecasts a day). A worker that fails or is killed is one logged
error: the forecast is unavailable for that round, and what was sent before stays in effect;
failures in a row pause the workers (`WorkerPause`).
The rest (calibration, scenarios, allocation) stays in this process, on the
numpy twins of the kernels (`forecaster.numpy_kernels`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import numpy as np

from agent.runtime.clock import Clock
from agent.runtime.config import ChargerConfig, Config
from agent.site.model import ActiveSession
from agent.storage import store
from agent.storage.db import Database, Migration, Schema, agent_schema, apply_schema
from forecaster import rounds
from forecaster.calendar import SiteCalendar, public_holidays
from forecaster.flexibility import SessionSet, allocate
from forecaster.forecast import (
    EmptyHistoryError,
    ForecastSettings,
    PowerHistory,
)
from forecaster.intraday import KnownSessions, SessionCalibration
from forecaster.selection import (
    EVAL_DAYS,
    MAX_HISTORY_DAYS,
    Selection,
    SelectionError,
)
from forecaster.worker import WorkerError, run_in_worker

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WORKER_PAUSE_MIN_S = 60.0
WORKER_PAUSE_MAX_S = 3600.0


class WorkerPause:
    """How long to wait before the next forecast worker after failures in a row.

    A worker loads numba and the kernels (about 180 MB for a few seconds). One that keeps
    failing (a full disk under its cache, a broken installation) must not be started again at
    every caller's period on a gateway with little memory: after the n-th failure in a row no
    worker starts for min(60 s x 2^(n-1), 1 h); the first success resets it. Monotonic time: a
    stepped wall clock neither shortens nor stretches the pause."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.failures = 0
        self._until = 0.0

    def remaining_s(self) -> float:
        return max(0.0, self._until - self._monotonic())

    def failed(self) -> float:
        """Record a failure; returns the pause it starts."""
        self.failures += 1
        pause = min(WORKER_PAUSE_MIN_S * 2.0 ** (self.failures - 1), WORKER_PAUSE_MAX_S)
        self._until = self._monotonic() + pause
        return pause

    def succeeded(self) -> None:
        self.failures = 0
        self._until = 0.0


SCHEMA = [
    Migration(
        1,
        "forecast_structure: the load forecast's structure chosen per congestion point",
        """
        CREATE TABLE forecast_structure (
            congestion_point TEXT PRIMARY KEY,
            selected_at REAL NOT NULL,
            reason TEXT NOT NULL,
            selection TEXT NOT NULL
        );
        """,
    )
]


def schema() -> Schema:
    """The forecaster's own table, versioned apart from the agent's schema (its own
    `forecast_schema` table), so the store's migrations stay untouched."""
    return agent_schema("forecast_schema", SCHEMA)


def migrate(conn: sqlite3.Connection) -> int:
    return apply_schema(conn, schema())


@dataclass(frozen=True)
class ChosenStructure:
    """A congestion point's forecast structure, when and why it was chosen."""

    selection: Selection
    selected_at: datetime
    reason: str  # "first", "daily", "regime change" or "ISP length changed"

    def as_json(self) -> dict[str, object]:
        sel = self.selection
        return {
            "structure": sel.structure,
            "selected_at": self.selected_at.isoformat(),
            "reason": self.reason,
            "heldout_days": sel.eval_days,
            "heldout_nmae_pct": round(sel.heldout_nmae_pct, 2),
            "baseline_nmae_pct": {k: round(v, 2) for k, v in sel.baseline_nmae_pct.items()},
        }


def load_structures(conn: sqlite3.Connection) -> dict[str, ChosenStructure]:
    """Stored structures; a row this version cannot read is skipped (and re-selected)."""
    out: dict[str, ChosenStructure] = {}
    for cp, at, reason, text in conn.execute(
        "SELECT congestion_point, selected_at, reason, selection FROM forecast_structure"
    ):
        try:
            selection = Selection.from_json(json.loads(text))
        except (SelectionError, ValueError) as exc:
            log.warning("stored forecast structure of %s unreadable (%s): re-selecting", cp, exc)
            continue
        out[cp] = ChosenStructure(selection, datetime.fromtimestamp(at, UTC), reason)
    return out


def save_structure(
    conn: sqlite3.Connection, congestion_point: str, chosen: ChosenStructure
) -> None:
    conn.execute(
        "INSERT INTO forecast_structure (congestion_point, selected_at, reason, selection) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (congestion_point) DO UPDATE SET "
        "selected_at = excluded.selected_at, reason = excluded.reason, "
        "selection = excluded.selection",
        (
            congestion_point,
            chosen.selected_at.timestamp(),
            chosen.reason,
            json.dumps(chosen.selection.as_json()),
        ),
    )


DEFAULT_STAY_S = 8 * 3600.0
DEFAULT_ENERGY_WH = 15_000.0
SCENARIO_DAYS = 4


@dataclass(frozen=True)
class Bands:
    """One congestion point's forecast at the requested ISPs (W)."""

    p10: list[float]
    p50: list[float]
    p90: list[float]
    days_of_history: int


@dataclass(frozen=True)
class SessionNeed:
    """What one plugged-in EV needs, in watts it really draws."""

    session: ActiveSession
    leave: datetime
    energy_wh: float
    pmin_w: float
    pmax_w: float
    # Charger limit per W the EV draws: 3 for a one-phase car on a three-phase charger,
    # whose limit in amps per phase lets it draw only a third of the three-phase watts.
    limit_factor: float = 1.0


TOP_UP_WH = 2_000.0
"""A car still charging past every calibrated estimate wants at least this much more."""


@dataclass(frozen=True)
class Calibration:
    """Medians the scenarios use, and the forecaster's full calibration when there is one."""

    departure_residual_s: float
    stay_s: float
    energy_ratio: float
    energy_wh: float
    samples: SessionCalibration | None


def _finished_arrays(
    rows: Sequence[store.SessionRow], power_w: float
) -> tuple[np.ndarray, ...] | None:
    rows = [r for r in rows if r.started_at and r.ended_at and r.ended_at > r.started_at]
    rows = [r for r in rows if (r.energy_wh or 0) > 0]
    if not rows:
        return None
    arrival = np.array([int(r.started_at.timestamp()) for r in rows if r.started_at])
    departure = np.array([int(r.ended_at.timestamp()) for r in rows if r.ended_at])
    delivered = np.array([float(r.energy_wh or 0.0) for r in rows])
    requested = np.array(
        [float(r.requested_energy_wh) if r.requested_energy_wh else np.nan for r in rows]
    )
    stated = np.array(
        [float(r.departure_at.timestamp()) if r.departure_at else np.nan for r in rows]
    )
    return arrival, departure, delivered, requested, stated, np.full(len(rows), power_w)


class SiteForecaster:
    def __init__(self, config: Config, db: Database, clock: Clock) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self.isp_minutes = config.isp_duration_min
        self.isp_seconds = self.isp_minutes * 60
        self._calendar_year = 0
        self.calendar = self._calendar_for(clock.now().year)
        self.settings = ForecastSettings(history_days=config.forecast.history_days)
        self._chargers = {c.id: c for c in config.ocpp.chargers}
        self._structures: dict[str, ChosenStructure] | None = None
        self.worker_argv: list[str] | None = None
        """The forecast worker's command line; None: `python -m forecaster.worker`."""
        self.worker_pause = WorkerPause()

    async def _in_worker(self, function: Callable[..., _T], args: tuple[object, ...]) -> _T:
        """`function(*args)` in a forecast worker process; a failed worker is logged here
        in one line and raised as WorkerError (the caller keeps what it had). After failures
        no worker starts until the pause has passed (`WorkerPause`)."""
        waiting = self.worker_pause.remaining_s()
        if waiting > 0:
            raise WorkerError(
                f"forecast worker paused for another {waiting:.0f} s after "
                f"{self.worker_pause.failures} failure(s) in a row"
            )
        try:
            result = await run_in_worker(function, args, argv=self.worker_argv)
        except WorkerError as exc:
            pause = self.worker_pause.failed()
            log.error(
                "%s; the last forecast stays in use; next worker in %.0f s at the earliest",
                exc,
                pause,
            )
            if exc.detail:
                log.debug("forecast worker output:\n%s", exc.detail)
            raise
        self.worker_pause.succeeded()
        return result

    def _calendar_for(self, year: int) -> SiteCalendar:
        """The site calendar with the configured extra dates and, when a country is set, its
        public holidays of the years around `year` (rebuilt when the year turns)."""
        fc = self.config.forecast
        holidays = {date.fromisoformat(d) for d in fc.holidays}
        if fc.holidays_country:
            holidays |= public_holidays(
                fc.holidays_country, fc.holidays_subdivision, range(year - 1, year + 2)
            )
        self._calendar_year = year
        return SiteCalendar.of(self.config.site.timezone, self.isp_minutes, holidays)

    def _current_calendar(self) -> SiteCalendar:
        year = self.clock.now().year
        if year != self._calendar_year:
            self.calendar = self._calendar_for(year)
        return self.calendar

    # --- history ----------------------------------------------------------------------------

    def _grid_start(self, until: datetime) -> datetime:
        # Selection scores the last EVAL_DAYS days, each from the MAX_HISTORY_DAYS before it
        # (the day-type profile reads history_days).
        days = max(self.config.forecast.history_days, MAX_HISTORY_DAYS) + EVAL_DAYS + 2
        start = until - timedelta(days=days)
        epoch = int(start.timestamp())
        return datetime.fromtimestamp(epoch - epoch % self.isp_seconds, UTC)

    async def history(self, congestion_points: Sequence[str], until: datetime) -> PowerHistory:
        """Power per ISP (S, T) up to `until` (exclusive), NaN where the agent did not measure."""
        start = self._grid_start(until)
        length = int((until - start).total_seconds()) // self.isp_seconds

        def read(
            conn: sqlite3.Connection,
        ) -> tuple[list[tuple[datetime, datetime]], list[dict[int, float]]]:
            alive = store.uptime(conn, start, until)
            energy = [
                store.congestion_point_energy(conn, cp, start, until) for cp in congestion_points
            ]
            return alive, energy

        alive, energy = await self.db.read(read)
        values = np.full((len(congestion_points), length), np.nan)
        origin = int(start.timestamp())
        for began, ended in alive:
            first = max(0, math.ceil((began.timestamp() - origin) / self.isp_seconds))
            last = min(length, int((ended.timestamp() - origin) // self.isp_seconds))
            if last > first:
                values[:, first:last] = 0.0
        to_w = 3600.0 / self.isp_seconds
        for s, per_isp in enumerate(energy):
            for isp_start, wh in per_isp.items():
                t = (isp_start - origin) // self.isp_seconds
                if 0 <= t < length:
                    values[s, t] = (0.0 if np.isnan(values[s, t]) else values[s, t]) + wh * to_w
        return PowerHistory(start, self.isp_minutes, values)

    # --- forecasts --------------------------------------------------------------------------

    async def forecast(
        self,
        congestion_points: Sequence[str],
        targets: Sequence[datetime],
        *,
        origin: datetime | None = None,
        sessions: Sequence[ActiveSession] = (),
        select_structure: bool = True,
    ) -> dict[str, Bands]:
        """P10/P50/P90 per congestion point at `targets` (UTC ISP starts).

        Day-ahead when `origin` is None (all history known), with each congestion point's
        structure chosen from its own history (`forecaster.selection`; the fixed day-type
        profile while there are fewer than two weeks of it); intraday from `origin` (an ISP
        start) with the plugged-in `sessions` added to the day-type profile. A congestion
        point without any history forecasts zero load, with a warning: it has nothing to
        learn from yet.
        """
        self._current_calendar()
        until = origin if origin is not None else self.clock.now()
        epoch = int(until.timestamp())
        until = datetime.fromtimestamp(epoch - epoch % self.isp_seconds, UTC)
        history = await self.history(congestion_points, until)
        if origin is None and select_structure:
            selected = await self._selected(congestion_points, history, until, targets)
            rest = [cp for cp in congestion_points if cp not in selected]
            if rest:
                selected.update(
                    await self.forecast(rest, targets, sessions=sessions, select_structure=False)
                )
            return selected
        calibration = await self.calibration() if origin is not None else None
        known = self._known(congestion_points, sessions) if origin is not None else None
        samples = calibration.samples if calibration is not None else None
        job = (history, until if origin is not None else None, list(targets), self.calendar)
        try:
            result = await self._in_worker(
                rounds.profile_forecast, (*job, known, samples, self.settings)
            )
            if isinstance(result, list):
                raise EmptyHistoryError(result)
        except EmptyHistoryError as exc:
            empty = {congestion_points[i] for i in exc.series}
            log.warning(
                "no load history yet for %s: forecasting zero load", ", ".join(sorted(empty))
            )
            zero = Bands([0.0] * len(targets), [0.0] * len(targets), [0.0] * len(targets), 0)
            rest = [cp for cp in congestion_points if cp not in empty]
            out = dict.fromkeys(empty, zero)
            if rest:
                out.update(await self.forecast(rest, targets, origin=origin, sessions=sessions))
            return out
        return {
            cp: Bands(
                [float(v) for v in result.p10[s]],
                [float(v) for v in result.p50[s]],
                [float(v) for v in result.p90[s]],
                int(result.days_pooled[s].max()),
            )
            for s, cp in enumerate(congestion_points)
        }

    async def structures(self) -> dict[str, ChosenStructure]:
        if self._structures is None:
            self._structures = await self.db.read(load_structures)
        return self._structures

    def structure_views(self) -> dict[str, dict[str, object]]:
        """The chosen structure per congestion point for the status API (empty until the
        first day-ahead forecast of this run has read them)."""
        return {cp: c.as_json() for cp, c in sorted((self._structures or {}).items())}

    async def _selected(
        self,
        congestion_points: Sequence[str],
        history: PowerHistory,
        until: datetime,
        targets: Sequence[datetime],
    ) -> dict[str, Bands]:
        """Day-ahead bands of the congestion points that have (or now get) a structure;
        re-selects those whose structure a newer whole day has outdated (or whose residuals
        show a regime change), and stores the new choice."""
        chosen = dict(await self.structures())
        now = self.clock.now()
        stored = {cp: c.selection for cp, c in chosen.items()}
        result = await self._in_worker(
            rounds.day_ahead,
            (
                list(congestion_points),
                history,
                self.calendar,
                until,
                list(targets),
                stored,
                self.config.forecast.history_days,
            ),
        )
        bands = {cp: Bands(*b) for cp, b in result.bands.items()}
        fresh = {cp: ChosenStructure(sel, now, why) for cp, (sel, why) in result.chosen.items()}
        for cp, why in result.waiting.items():
            log.info("forecast structure of %s not chosen yet: %s", cp, why)
        if fresh:

            def write(conn: sqlite3.Connection) -> None:
                for cp, c in fresh.items():
                    save_structure(conn, cp, c)

            await self.db.transaction(write)
            for cp, c in fresh.items():
                log.info(
                    "forecast structure of %s (%s): %s, held-out NMAE %.1f %% (baselines %s)",
                    cp,
                    c.reason,
                    c.selection.structure,
                    c.selection.heldout_nmae_pct,
                    ", ".join(f"{k} {v:.1f} %" for k, v in c.selection.baseline_nmae_pct.items()),
                )
            if self._structures is None:
                self._structures = {}
            self._structures.update(fresh)
        return bands

    def _charger(self, charger_id: str) -> ChargerConfig | None:
        return self._chargers.get(charger_id)

    def _pmax(self, charger_id: str) -> float:
        charger = self._charger(charger_id)
        return float(charger.max_power_w) if charger else 11_040.0

    def _pmin(self, charger_id: str) -> float:
        charger = self._charger(charger_id)
        if charger is None:
            return 6.0 * 230.0 * 3
        return charger.min_current_a * charger.nominal_voltage_v * charger.phases

    def _known(
        self, congestion_points: Sequence[str], sessions: Sequence[ActiveSession]
    ) -> KnownSessions:
        index = {cp: i for i, cp in enumerate(congestion_points)}
        rows = [s for s in sessions if s.congestion_point in index and s.info.started_at]
        if not rows:
            return KnownSessions.none()

        def stamp(moment: datetime | None) -> float:
            return np.nan if moment is None else moment.timestamp()

        return KnownSessions(
            series=np.array([index[s.congestion_point or ""] for s in rows]),
            arrival=np.array([int(stamp(s.info.started_at)) for s in rows]),
            expected_departure=np.array([stamp(s.info.departure_time) for s in rows]),
            needed_wh=np.array(
                [
                    max(0.0, (s.info.requested_energy_wh or np.nan) - (s.info.energy_wh or 0.0))
                    if s.info.requested_energy_wh
                    else np.nan
                    for s in rows
                ]
            ),
            delivered_wh=np.array(
                [s.info.energy_wh if s.info.energy_wh is not None else np.nan for s in rows]
            ),
            pmax_w=np.array([self._pmax(s.info.charger_id) for s in rows]),
            power_now_w=np.array([s.power_w for s in rows]),
        )

    # --- calibration and scenarios ----------------------------------------------------------

    async def calibration(self) -> Calibration:
        now = self.clock.now()
        since = now - timedelta(days=self.config.forecast.history_days)
        rows = await self.db.read(lambda c: store.finished_sessions(c, since, now))
        arrays = _finished_arrays(rows, 7_000.0)
        if arrays is None:
            return Calibration(0.0, DEFAULT_STAY_S, 1.0, DEFAULT_ENERGY_WH, None)
        samples = await asyncio.to_thread(SessionCalibration.fit, self.calendar, *arrays)
        arrival, departure, delivered, _, _, _ = arrays
        return Calibration(
            departure_residual_s=float(np.median(samples.departure_residual_s)),
            stay_s=float(np.median(departure - arrival)),
            energy_ratio=float(np.median(samples.energy_ratio)),
            energy_wh=float(np.median(delivered)),
            samples=samples,
        )

    async def scenarios(
        self,
        congestion_point: str,
        grid_start: datetime,
        horizon: int,
        sessions: Sequence[ActiveSession],
        *,
        now: datetime | None = None,
        days: int = SCENARIO_DAYS,
    ) -> list[SessionSet]:
        """Session sets on the grid [grid_start, + horizon ISPs): plugged-in EVs plus the
        arrivals after `now` of each of the last `days` days of the same day type."""
        now = now or self.clock.now()
        calibration = await self.calibration()
        plugged = [s for s in sessions if s.congestion_point == congestion_point]
        rows = [
            (now, need.leave, need.energy_wh, need.pmin_w, need.pmax_w)
            for need in self.needs(plugged, now, calibration)
        ]

        target_day = grid_start.astimezone(self.calendar.zone).date()
        target_type = self.calendar.day_types(np.array([target_day.toordinal()], dtype=np.int64))[0]
        past_days: list[date] = []
        probe = target_day - timedelta(days=1)
        while len(past_days) < days and (target_day - probe).days <= 28:
            kind = self.calendar.day_types(np.array([probe.toordinal()], dtype=np.int64))[0]
            if kind == target_type:
                past_days.append(probe)
            probe -= timedelta(days=1)

        def read(conn: sqlite3.Connection) -> list[list[store.SessionRow]]:
            out = []
            for day in past_days:
                start = datetime.combine(day, datetime.min.time(), self.calendar.zone)
                end = start + timedelta(days=1)
                out.append(
                    [
                        r
                        for r in store.finished_sessions(
                            conn, start.astimezone(UTC), end.astimezone(UTC)
                        )
                        if r.congestion_point == congestion_point
                    ]
                )
            return out

        history_days = await self.db.read(read) if past_days else []
        grid_end = grid_start + timedelta(seconds=horizon * self.isp_seconds)
        scenarios: list[SessionSet] = []
        for day, finished in zip(past_days, history_days, strict=True):
            shift = target_day - day
            extra: list[tuple[datetime, datetime, float, float, float]] = []
            for r in finished:
                if r.started_at is None or r.ended_at is None or not r.energy_wh:
                    continue
                arrive = _same_local_time(r.started_at, shift, self.calendar)
                leave = arrive + (r.ended_at - r.started_at)
                if arrive < now or arrive >= grid_end:
                    continue
                cid = r.charger_id
                extra.append((arrive, leave, float(r.energy_wh), self._pmin(cid), self._pmax(cid)))
            scenarios.append(self._session_set(grid_start, rows + extra))
        if not scenarios:
            scenarios.append(self._session_set(grid_start, rows))
        return scenarios

    async def uncontrolled_load(
        self,
        grid_start: datetime,
        horizon: int,
        sessions: Sequence[ActiveSession],
        *,
        now: datetime | None = None,
    ) -> np.ndarray:
        """Power (H,) W the plugged-in EVs of chargers that take no profile will draw on the
        grid: each as early and as fast as it can, since nothing holds it back."""
        if not sessions:
            return np.zeros(horizon)
        now = now or self.clock.now()
        calibration = await self.calibration()
        rows = [
            (now, need.leave, need.energy_wh, need.pmin_w, need.pmax_w)
            for need in self.needs(sessions, now, calibration)
        ]
        unbounded = np.full(horizon, float(sum(r[4] for r in rows)))
        result = allocate(
            self._session_set(grid_start, rows), unbounded, unbounded, self.isp_minutes
        )
        return np.asarray(result.site_w, dtype=np.float64)

    def needs(
        self, sessions: Sequence[ActiveSession], now: datetime, calibration: Calibration
    ) -> list[SessionNeed]:
        """What each plugged-in EV still needs and until when, calibrated against history:
        drivers leave later than they say and take less than they request."""
        out: list[SessionNeed] = []
        for s in sessions:
            info = s.info
            arrived = info.started_at or now
            if info.departure_time is not None:
                leave = info.departure_time + timedelta(seconds=calibration.departure_residual_s)
            else:
                leave = arrived + timedelta(seconds=calibration.stay_s)
            leave = max(leave, now + timedelta(seconds=self.isp_seconds))
            delivered = info.energy_wh or 0.0
            if s.ev_suspended and delivered > 0:
                # The charger reports SuspendedEV after charging: the car takes no more.
                # (A car we paused shows SuspendedEVSE instead and keeps its need.)
                wanted = delivered
            else:
                wanted = _still_wanted(info.requested_energy_wh, delivered, calibration)
            cid = info.charger_id
            charger = self._charger(cid)
            phases = charger.phases if charger else 3
            factor = 1.0
            if s.ev_phases is not None and s.ev_phases < phases:
                factor = phases / s.ev_phases
            pmin, pmax = self._pmin(cid) / factor, self._pmax(cid) / factor
            if s.ev_max_w is not None:
                # The car took less than its charger allowed: that is the car's own maximum
                # (with a margin, so a car that can take more is noticed again).
                pmax = min(pmax, max(pmin, s.ev_max_w * 1.1 + 300.0))
            out.append(SessionNeed(s, leave, max(0.0, wanted - delivered), pmin, pmax, factor))
        return out

    def _session_set(
        self, grid_start: datetime, rows: Sequence[tuple[datetime, datetime, float, float, float]]
    ) -> SessionSet:
        if not rows:
            empty = np.zeros(0)
            return SessionSet(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty)
        arrive, leave, energy, pmin, pmax = zip(*rows, strict=True)
        return SessionSet.from_instants(
            grid_start, self.isp_minutes, list(arrive), list(leave), energy, pmin, pmax
        )


def _still_wanted(
    requested_wh: float | None, delivered_wh: float, calibration: Calibration
) -> float:
    """The energy a car that is still charging will take in all, given what it has taken.

    Drivers take about half of what they request, but a car still charging past that
    is one of those taking more: the estimate is the median of the calibrated outcomes above
    what it already took, or a top-up when it is past all of them.
    """
    samples = calibration.samples
    if samples is None:
        outcomes = np.array(
            [requested_wh * calibration.energy_ratio if requested_wh else calibration.energy_wh]
        )
    elif requested_wh:
        outcomes = requested_wh * samples.energy_ratio
    else:
        outcomes = samples.energy_wh
    above = outcomes[outcomes > delivered_wh]
    return float(np.median(above)) if above.size else delivered_wh + TOP_UP_WH


def _same_local_time(instant: datetime, shift: timedelta, calendar: SiteCalendar) -> datetime:
    """The instant `shift` days later at the same local clock time (DST-safe)."""
    local = instant.astimezone(calendar.zone)
    moved = (local.replace(tzinfo=None) + shift).replace(tzinfo=calendar.zone)
    return moved.astimezone(UTC)
