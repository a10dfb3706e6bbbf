"""Intraday forecast: the plugged-in sessions plus the arrivals still to come.

From an origin inside the day, load has two parts. Cars already plugged in charge until their
energy is in or they leave; drivers say when they leave and how much they need, but on Caltech
they leave 1.75 h later than they say (MAE 2.8 h) and take about half of what they request
(measured on the ACN sessions), so `SessionCalibration` learns those errors from finished
sessions and turns each stated value into a set of equally likely samples. Cars yet to come
are the profile forecast scaled by the share of the load at each clock slot that,
historically, came from sessions arriving at or after the origin's slot.

The two parts are added: means add; the band adds the known part's variance to the profile
band's half-widths in quadrature (independent parts, a normal approximation for their sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from forecaster.calendar import (
    DAY_TYPES,
    Float64Array,
    Int64Array,
    SiteCalendar,
    epoch_seconds,
)
from forecaster.flexibility import loaded_kernels
from forecaster.forecast import (
    ForecastInputError,
    ForecastSettings,
    PowerHistory,
    QuantileForecast,
    fit_profiles,
)

SAMPLES = 11
"""Quantile samples per calibrated quantity (5 %, 14 %, ..., 95 %): enough to shape the mean
curve of a session, few enough for 121 combinations per session."""
_LEVELS = np.linspace(0.05, 0.95, SAMPLES)
_Z90 = 1.2815515655446004
MIN_CALIBRATION_SESSIONS = 20
"""Fewer finished sessions than this with driver input: the stated values are used as given."""


@dataclass(frozen=True)
class SessionCalibration:
    """Samples (K,) of how driver input relates to outcome, and when the load arrives.

    departure_residual_s: actual minus stated departure; stay_s: stays of sessions without a
    stated departure; energy_ratio: delivered over requested energy; energy_wh: delivered energy
    of sessions without a request; arrival_share: (3, P, P) per day type, origin slot and
    clock slot, the share of the load that came from sessions arriving at or after the origin.
    """

    departure_residual_s: Float64Array
    stay_s: Float64Array
    energy_ratio: Float64Array
    energy_wh: Float64Array
    arrival_share: Float64Array

    @classmethod
    def fit(
        cls,
        calendar: SiteCalendar,
        arrival: Int64Array,
        departure: Int64Array,
        delivered_wh: Float64Array,
        requested_wh: Float64Array,
        stated_departure: Float64Array,
        power_w: float | Float64Array,
        *,
        raw_driver_input: bool = False,
    ) -> SessionCalibration:
        """Fit from finished sessions (N,): epoch seconds, Wh, NaN where no driver input.

        `power_w` is each session's charging power for the arrival shares (scalar or (N,)).
        With `raw_driver_input` the stated values are taken at face value (no bias, no
        spread): the comparison the backtest prints to show what calibration earns.
        """
        arrival = np.ascontiguousarray(arrival, dtype=np.int64)
        departure = np.ascontiguousarray(departure, dtype=np.int64)
        delivered = np.ascontiguousarray(delivered_wh, dtype=np.float64)
        if arrival.size == 0:
            raise ForecastInputError("session calibration needs at least one finished session")
        stay = (departure - arrival).astype(np.float64)
        has_dep = ~np.isnan(stated_departure)
        has_req = ~np.isnan(requested_wh) & (np.nan_to_num(requested_wh) > 0)
        if raw_driver_input or has_dep.sum() < MIN_CALIBRATION_SESSIONS:
            residual = np.zeros(1)
        else:
            residual = np.quantile(departure[has_dep] - stated_departure[has_dep], _LEVELS)
        if raw_driver_input or has_req.sum() < MIN_CALIBRATION_SESSIONS:
            ratio = np.ones(1)
        else:
            ratio = np.quantile(delivered[has_req] / requested_wh[has_req], _LEVELS)
        power = np.broadcast_to(np.asarray(power_w, dtype=np.float64), arrival.shape)
        ordinal, slot = calendar.local_day_and_slot(arrival)
        duration = np.minimum(stay, delivered * 3600.0 / power)
        load = loaded_kernels("forecaster.kernels.sessions").arrival_load(
            slot,
            calendar.day_types(ordinal),
            (arrival % calendar.isp_seconds).astype(np.float64),
            duration,
            np.ascontiguousarray(power),
            calendar.slots_per_day,
            calendar.isp_seconds,
        )
        # share[tau, a, k] = Σ_{a' >= a} load[tau, a', k] / Σ_{a'} load[tau, a', k]
        later = np.flip(np.cumsum(np.flip(load, axis=1), axis=1), axis=1)
        total = later[:, :1, :]
        # Clock slots without any historical load (the profile there is smoothing spill-over)
        # take the day's energy share of later arrivals; a day type without sessions, 1.
        day_later = later.sum(axis=2, keepdims=True)
        day_total = day_later[:, :1, :]
        fallback = np.where(day_total > 0, day_later / np.where(day_total > 0, day_total, 1), 1.0)
        share = np.where(total > 0, later / np.where(total > 0, total, 1.0), fallback)
        return cls(
            departure_residual_s=np.ascontiguousarray(residual),
            stay_s=np.ascontiguousarray(np.quantile(stay, _LEVELS)),
            energy_ratio=np.ascontiguousarray(ratio),
            energy_wh=np.ascontiguousarray(np.quantile(delivered, _LEVELS)),
            arrival_share=np.ascontiguousarray(share),
        )


@dataclass(frozen=True)
class KnownSessions:
    """N plugged-in sessions: the series (row) each belongs to, arrival (UTC epoch s), the
    driver's expected departure (epoch s, NaN if not given), energy still needed and energy
    delivered so far (Wh, NaN if not known), maximum power and the power drawn now (W, NaN if
    not known; 0 means the car is full)."""

    series: Int64Array
    arrival: Int64Array
    expected_departure: Float64Array
    needed_wh: Float64Array
    delivered_wh: Float64Array
    pmax_w: Float64Array
    power_now_w: Float64Array

    def __post_init__(self) -> None:
        arrays = {
            "series": np.ascontiguousarray(self.series, dtype=np.int64),
            "arrival": np.ascontiguousarray(self.arrival, dtype=np.int64),
            "expected_departure": np.ascontiguousarray(self.expected_departure, np.float64),
            "needed_wh": np.ascontiguousarray(self.needed_wh, dtype=np.float64),
            "delivered_wh": np.ascontiguousarray(self.delivered_wh, dtype=np.float64),
            "pmax_w": np.ascontiguousarray(self.pmax_w, dtype=np.float64),
            "power_now_w": np.ascontiguousarray(self.power_now_w, dtype=np.float64),
        }
        shapes = {name: a.shape for name, a in arrays.items()}
        if len(set(shapes.values())) != 1 or arrays["series"].ndim != 1:
            raise ForecastInputError(f"known-session arrays must be 1-D of one length: {shapes}")
        for name in ("needed_wh", "delivered_wh", "power_now_w"):
            a = arrays[name]
            bad = np.isinf(a) | (a < 0)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ForecastInputError(f"session {i}: {name} {float(a[i])} must be >= 0 or NaN")
        bad = ~np.isfinite(arrays["pmax_w"]) | (arrays["pmax_w"] <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ForecastInputError(
                f"session {i}: pmax_w {float(arrays['pmax_w'][i])} must be > 0"
            )
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    @classmethod
    def none(cls) -> KnownSessions:
        empty_i = np.zeros(0, dtype=np.int64)
        empty_f = np.zeros(0, dtype=np.float64)
        return cls(empty_i, empty_i, empty_f, empty_f, empty_f, empty_f, empty_f)


def forecast_intraday(
    history: PowerHistory,
    origin: datetime,
    targets: Sequence[datetime] | npt.NDArray[np.datetime64] | Int64Array,
    calendar: SiteCalendar,
    sessions: KnownSessions,
    calibration: SessionCalibration,
    settings: ForecastSettings | None = None,
) -> QuantileForecast:
    """P10/P50/P90 (S, H) in W from `origin` on: history up to the origin, sessions plugged
    in at the origin, and the arrivals still to come."""
    origin_epoch = int(epoch_seconds([origin])[0])
    if origin_epoch % calendar.isp_seconds:
        raise ForecastInputError(f"origin {origin.isoformat()} is not an ISP start")
    if sessions.series.size and (
        sessions.series.min() < 0 or sessions.series.max() >= history.series
    ):
        bad = int(sessions.series[(sessions.series < 0) | (sessions.series >= history.series)][0])
        raise ForecastInputError(f"session series {bad} outside 0..{history.series - 1}")
    from forecaster.kernels.sessions import known_session_power

    base = fit_profiles(history, calendar, settings, until_epoch=origin_epoch).forecast(targets)
    if (base.targets < origin_epoch).any():
        raise ForecastInputError("intraday targets must not start before the origin")
    ordinal, slot = calendar.local_day_and_slot(base.targets)
    origin_ord, origin_slot = calendar.local_day_and_slot(np.array([origin_epoch]))
    types = calendar.day_types(ordinal)
    same_day = ordinal == origin_ord[0]
    share = np.where(
        same_day,
        calibration.arrival_share[types % DAY_TYPES, origin_slot[0], slot],
        1.0,
    )
    mean, var = known_session_power(
        sessions.series,
        history.series,
        origin_epoch,
        sessions.arrival,
        sessions.expected_departure,
        sessions.needed_wh,
        sessions.delivered_wh,
        sessions.pmax_w,
        sessions.power_now_w,
        calibration.departure_residual_s,
        calibration.stay_s,
        calibration.energy_ratio,
        calibration.energy_wh,
        base.targets,
        calendar.isp_seconds,
    )
    new10, new50, new90 = base.p10 * share, base.p50 * share, base.p90 * share
    spread = _Z90 * np.sqrt(var)
    p50 = new50 + mean
    p10 = np.maximum(p50 - np.sqrt((new50 - new10) ** 2 + spread**2), 0.0)
    p90 = p50 + np.sqrt((new90 - new50) ** 2 + spread**2)
    return QuantileForecast(base.targets, p10, p50, p90, base.days_pooled)
