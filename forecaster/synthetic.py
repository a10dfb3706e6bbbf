"""Seeded synthetic charging sites whose shapes differ from a workplace garage, so the
backtest can show that per-site selection holds beyond the one real site it has.

Each site is a session generator: per local day a Poisson number of arrivals (capped at the
chargers), arrival clock times from a normal distribution, stays from a log-normal, energy
uniform and capped at what the stay allows at `power_kw`. The same seed gives the same
sessions. Shapes:

* ``odd_weekday``: a workplace where Friday is different (40 % of the arrivals, earlier);
* ``night_shift``: arrivals around 21:30 for a night shift Sunday to Thursday night, cars
  leaving after 8 hours, so the load straddles midnight;
* ``fleet_depot``: an overnight depot: vans return 16:30-19:00 every day but Sunday, charge
  until they leave at 06:00;
* ``doubling``: a workplace that doubles its chargers (and arrivals) halfway through.

Pure: it returns arrays (`SessionRecords`), no files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from forecaster.calendar import SiteCalendar
from forecaster.sessions import SessionRecords


@dataclass(frozen=True)
class Shape:
    """Arrivals per day by weekday (Mon..Sun) and the clock/stay/energy of one day type."""

    rate: tuple[float, float, float, float, float, float, float]
    arrive_h: tuple[float, float, float, float, float, float, float]
    arrive_sd_h: float
    stay_h: float
    stay_sigma: float
    energy_kwh: tuple[float, float]
    chargers: int
    fixed_departure_h: float | None = None
    """Departure at this local hour the next morning (a depot's shift start)."""
    double_at: float | None = None
    """Fraction of the period after which chargers and arrivals double."""


SHAPES: dict[str, Shape] = {
    "odd_weekday": Shape(
        rate=(14, 14, 14, 14, 5.6, 2, 1),
        arrive_h=(8.5, 8.5, 8.5, 8.5, 7.0, 10.0, 11.0),
        arrive_sd_h=1.2,
        stay_h=7.0,
        stay_sigma=0.35,
        energy_kwh=(4.0, 25.0),
        chargers=20,
    ),
    "night_shift": Shape(
        rate=(12, 12, 12, 12, 2, 1, 12),
        arrive_h=(21.5, 21.5, 21.5, 21.5, 21.5, 21.5, 21.5),
        arrive_sd_h=0.6,
        stay_h=8.5,
        stay_sigma=0.1,
        energy_kwh=(5.0, 30.0),
        chargers=16,
    ),
    "fleet_depot": Shape(
        rate=(18, 18, 18, 18, 18, 10, 0.5),
        arrive_h=(17.5, 17.5, 17.5, 17.5, 17.5, 14.0, 14.0),
        arrive_sd_h=0.7,
        stay_h=12.0,
        stay_sigma=0.1,
        energy_kwh=(15.0, 60.0),
        chargers=20,
        fixed_departure_h=6.0,
    ),
    "doubling": Shape(
        rate=(10, 10, 10, 10, 9, 2, 1),
        arrive_h=(8.5, 8.5, 8.5, 8.5, 8.5, 10.0, 11.0),
        arrive_sd_h=1.3,
        stay_h=6.0,
        stay_sigma=0.4,
        energy_kwh=(4.0, 25.0),
        chargers=15,
        double_at=0.5,
    ),
}


def generate(
    shape_name: str,
    first: date,
    days: int,
    calendar: SiteCalendar,
    *,
    seed: int = 0,
    power_kw: float = 6.6,
) -> SessionRecords:
    """Sessions of `days` local days from `first` at the named shape; same seed, same output.

    Holidays of the calendar get the Sunday rate (the site is closed like on a Sunday)."""
    if shape_name not in SHAPES:
        raise ValueError(
            f"unknown synthetic site {shape_name!r}; choose one of {', '.join(SHAPES)}"
        )
    if days <= 0:
        raise ValueError(f"days {days} must be positive")
    shape = SHAPES[shape_name]
    rng = np.random.default_rng(seed)
    arrival: list[int] = []
    departure: list[int] = []
    energy: list[float] = []
    for d in range(days):
        day = first + timedelta(days=d)
        wd = 6 if day in calendar.holidays else day.weekday()
        scale = 2.0 if shape.double_at is not None and d >= shape.double_at * days else 1.0
        n = min(int(rng.poisson(shape.rate[wd] * scale)), int(shape.chargers * scale))
        if n == 0:
            continue
        midnight = int(calendar.local_midnight(day).timestamp())
        hours = rng.normal(shape.arrive_h[wd], shape.arrive_sd_h, n)
        arrive = midnight + np.round(np.clip(hours, 0.0, 23.9) * 3600).astype(np.int64)
        if shape.fixed_departure_h is not None:
            next_midnight = int(calendar.local_midnight(day + timedelta(days=1)).timestamp())
            leave = next_midnight + int(shape.fixed_departure_h * 3600) + rng.integers(-900, 900, n)
        else:
            stay = shape.stay_h * np.exp(rng.normal(0.0, shape.stay_sigma, n))
            leave = arrive + np.round(np.maximum(stay, 0.5) * 3600).astype(np.int64)
        kwh = rng.uniform(*shape.energy_kwh, n)
        kwh = np.minimum(kwh, power_kw * (leave - arrive) / 3600.0)
        arrival.extend(int(a) for a in arrive)
        departure.extend(int(b) for b in leave)
        energy.extend(float(e) * 1000.0 for e in kwh)
    order = np.argsort(np.array(arrival), kind="stable")
    count = len(arrival)
    return SessionRecords(
        arrival=np.array(arrival, dtype=np.int64)[order],
        departure=np.array(departure, dtype=np.int64)[order],
        delivered_wh=np.array(energy, dtype=np.float64)[order],
        requested_wh=np.full(count, np.nan),
        stated_departure=np.full(count, np.nan),
    )
