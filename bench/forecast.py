"""Forecast benchmark: 1,000 series × 8 weeks of 15-minute history, 7 days ahead with P10/P50/P90.

Measured in one run, from the same (S, T) float64 array to (S, H) forecasts:
* ours: `forecaster.forecast.fit_profiles(...).forecast(...)` (numba, warm);
* the same method in pure numpy (tests/support/forecaster_reference.py);
* statsforecast `SeasonalWindowAverage(season_length=672, window_size=4)`, the named baseline,
  including the long DataFrame it needs and turning its output back into an array (it gives
  a point forecast only, no quantiles). It is in the `bench` extra, never a runtime dependency.
Also: the first forecast of a fresh process whose kernel cache is warm (imports included),
the envelope and allocation of 1,000 sessions × 96 ISPs, and per-site structure selection
(`forecaster.selection`) for one site of 50 chargers with 8 weeks of history, with the
forecast of its chosen structure, for that site and for all 1,000 series (numba kernel, and
its numpy reference path). And what the agent's own process pays for an allocation at a site's
scale (30 sessions × 96 ISPs) on the numpy twin it runs without numba
(`forecaster.numpy_kernels`), against the numba kernel as the baseline.

Usage: python -m bench forecast [--series N] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.report import emit

WEEKS = 8
SITE_CHARGERS = 50


def chosen_candidates() -> dict[str, object]:
    from forecaster.selection import CANDIDATES

    return dict(CANDIDATES)


HORIZON_DAYS = 7
ISPS_PER_DAY = 96


def ev_like_history(
    series: int, days: int, seed: int = 0, arrivals: float | None = None
) -> np.ndarray:
    """Site-like load: Poisson arrivals around 08:30, 6.6-11 kW, 1-6 h of charging, quieter
    weekends. Built from sessions so neighbouring ISPs correlate as on a real site.
    `arrivals`: weekday arrivals per series (default: 4-20 at random)."""
    rng = np.random.default_rng(seed)
    length = days * ISPS_PER_DAY
    out = np.zeros((series, length))
    weekday_rate = rng.uniform(4, 20, series) if arrivals is None else np.full(series, arrivals)
    for d in range(days):
        rate = weekday_rate * (0.25 if d % 7 >= 5 else 1.0)
        counts = rng.poisson(rate)
        for s in np.flatnonzero(counts):
            n = int(counts[s])
            start = d * ISPS_PER_DAY + np.clip(rng.normal(34, 8, n), 0, 90).astype(int)
            stop = np.minimum(start + rng.integers(4, 24, n), length)
            power = rng.choice([6_600.0, 7_400.0, 11_000.0], n)
            for a, b, p in zip(start, stop, power, strict=True):
                out[s, a:b] += p
    return out


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def statsforecast_seconds(values: np.ndarray, start: datetime, repeats: int) -> float | None:
    try:
        import pandas as pd
        from statsforecast import StatsForecast
        from statsforecast.models import SeasonalWindowAverage
    except ImportError:
        return None
    series, length = values.shape
    stamps = pd.date_range(start.replace(tzinfo=None), periods=length, freq="15min")
    horizon = HORIZON_DAYS * ISPS_PER_DAY

    def run() -> np.ndarray:
        frame = pd.DataFrame(
            {
                "unique_id": np.repeat(np.arange(series), length),
                "ds": np.tile(stamps, series),
                "y": values.ravel(),
            }
        )
        model = StatsForecast(
            models=[SeasonalWindowAverage(season_length=672, window_size=4)],
            freq="15min",
            n_jobs=1,
        )
        out = model.forecast(df=frame, h=horizon)
        return np.asarray(out.iloc[:, -1].to_numpy(), dtype=np.float64).reshape(series, horizon)

    run()
    return best_of(run, repeats)


FRESH_PROCESS = """
import time
began = time.perf_counter()
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np
from forecaster.cache import use_cache_dir
use_cache_dir(Path({cache!r}))
from forecaster.calendar import SiteCalendar
from forecaster.forecast import PowerHistory, forecast_load
cal = SiteCalendar.of("Europe/Amsterdam")
start = datetime(2024, 1, 1, tzinfo=timezone.utc)
values = np.load({data!r})
targets = cal.day_isps((start + timedelta(days=56)).date())
f = forecast_load(PowerHistory(start, 15, values), targets, cal)
assert f.p50.shape == (values.shape[0], targets.size)
print(time.perf_counter() - began)
"""


def fresh_process_seconds(values: np.ndarray) -> tuple[float, float]:
    """(first forecast incl. imports measured inside, whole process wall time), warm cache."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "site.npy"
        np.save(data, values[:1])
        code = FRESH_PROCESS.format(cache=str(Path(tmp) / "numba-cache"), data=str(data))
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # warm
        inside = []
        wall = []
        for _ in range(3):
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True
            )
            wall.append(time.perf_counter() - began)
            inside.append(float(done.stdout.strip().splitlines()[-1]))
        return min(inside), min(wall)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench forecast")
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 10

    from forecaster.calendar import SiteCalendar
    from forecaster.flexibility import SessionSet, allocate, flexibility_envelope
    from forecaster.forecast import PowerHistory, fit_profiles
    from forecaster.kernels.profile import assemble_forecast
    from tests.support import forecaster_reference as reference

    calendar = SiteCalendar.of("Europe/Amsterdam")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    days = WEEKS * 7
    values = ev_like_history(args.series, days)
    history = PowerHistory(start, 15, values)
    first_day = (start + timedelta(days=days)).date()
    targets = np.concatenate(
        [calendar.day_isps(first_day + timedelta(days=d)) for d in range(HORIZON_DAYS)]
    )

    def ours() -> object:
        return fit_profiles(history, calendar).forecast(targets)

    ours()  # compile or load
    ours_s = best_of(ours, repeats)

    from forecaster.calendar import history_layout
    from forecaster.forecast import _Z, ForecastSettings

    settings = ForecastSettings()
    layout = history_layout(calendar, int(start.timestamp()), values.shape[1])
    ordinal, slot = calendar.local_day_and_slot(targets)
    day_type = calendar.day_types(ordinal)

    def numpy_version() -> object:
        profile, level, _ = reference.sqrt_profiles(
            values,
            layout.index,
            layout.day_type,
            layout.whole_day,
            settings.alpha,
            _Z,
            settings.smooth_slots,
            settings.min_type_days,
            settings.level_days,
            settings.level_weight,
            settings.level_clip,
            True,
        )
        return assemble_forecast(profile, level, day_type, slot)

    numpy_s = best_of(numpy_version, 1 if args.quick else 2)
    baseline_s = statsforecast_seconds(values, start, 2 if args.quick else 3)
    first_s, wall_s = fresh_process_seconds(values)

    from forecaster.selection import day_table, forecast_days, forecast_many, select

    site = ev_like_history(1, days, seed=5, arrivals=0.8 * SITE_CHARGERS)
    start_epoch = int(start.timestamp())
    end_epoch = start_epoch + days * 86_400
    target_days = np.unique(calendar.local_day_and_slot(targets)[0])
    no_holiday = np.zeros(target_days.size, dtype=bool)

    def selection() -> object:
        return select(day_table(site[0], start_epoch, calendar, end_epoch))

    chosen = select(day_table(site[0], start_epoch, calendar, end_epoch))
    selection_s = best_of(selection, 3 if args.quick else 5)
    site_table = day_table(site[0], start_epoch, calendar, end_epoch)
    site_forecast_s = best_of(
        lambda: forecast_days(chosen, site_table, target_days, no_holiday), repeats
    )
    tables = [day_table(values[s], start_epoch, calendar, end_epoch) for s in range(len(values))]
    stacked = np.stack([t.values for t in tables])

    def selected_all() -> object:
        # Every series with the site's structure, in vectorised blocks.
        return forecast_many(
            chosen, stacked, tables[0].ordinals, tables[0].holiday, target_days, no_holiday
        )

    selected_all()  # compile or load the kernel
    selected_all_s = best_of(selected_all, repeats)

    def selected_all_numpy() -> object:
        return forecast_many(
            chosen,
            stacked,
            tables[0].ordinals,
            tables[0].holiday,
            target_days,
            no_holiday,
            kernel=False,
        )

    selected_numpy_s = best_of(selected_all_numpy, 1 if args.quick else 3)

    rng = np.random.default_rng(3)
    n = 1000
    arrival = rng.integers(-16, 60, n)
    fleet = SessionSet(
        arrival,
        arrival + rng.integers(8, 60, n),
        rng.uniform(2_000, 40_000, n),
        np.full(n, 4_140.0),
        rng.choice([7_400.0, 11_000.0, 22_000.0], n),
    )
    limit = 2_500_000.0
    envelope = flexibility_envelope(fleet, limit, ISPS_PER_DAY)
    alloc_s = best_of(lambda: allocate(fleet, envelope.lower_w, limit), repeats)
    env_s = best_of(lambda: flexibility_envelope(fleet, limit, ISPS_PER_DAY), repeats)

    from forecaster import numpy_kernels
    from forecaster.kernels import flex

    cars = 30
    arrive = rng.integers(-16, 60, cars)
    site_fleet = SessionSet(
        arrive,
        arrive + rng.integers(8, 60, cars),
        rng.uniform(2_000, 40_000, cars),
        np.full(cars, 4_140.0),
        rng.choice([7_400.0, 11_000.0, 22_000.0], cars),
    )
    site_limit = np.full(ISPS_PER_DAY, 150_000.0)
    site_target = flexibility_envelope(site_fleet, site_limit, ISPS_PER_DAY).lower_w
    site_args = (*site_fleet.kernel_arrays(), site_limit, site_target, 0.25)
    twin_s = best_of(lambda: numpy_kernels.allocate(*site_args), repeats)
    site_kernel_s = best_of(lambda: flex.allocate(*site_args), repeats)

    emit("series", args.series)
    emit("history_weeks", WEEKS)
    emit("horizon_isps", int(targets.size))
    emit("ours_forecast_s", ours_s)
    emit("numpy_reference_forecast_s", numpy_s)
    emit("ours_speedup_vs_numpy", numpy_s / ours_s)
    if baseline_s is None:
        print(
            "statsforecast: MISSING - install the bench extra: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        emit("statsforecast_available", False)
    else:
        emit("statsforecast_swa_forecast_s", baseline_s)
    emit("first_forecast_fresh_process_warm_cache_s", first_s)
    emit("fresh_process_wall_warm_cache_s", wall_s)
    emit("selection_site_chargers", SITE_CHARGERS)
    emit("selection_candidates", len(chosen_candidates()))
    emit("selection_chosen_structure", chosen.structure)
    emit("selection_s", selection_s)
    emit("selected_forecast_site_7_days_s", site_forecast_s)
    emit("selected_forecast_all_series_s", selected_all_s)
    emit("selected_forecast_all_series_numpy_s", selected_numpy_s)
    emit("selected_forecast_all_series_vs_ours", selected_all_s / ours_s)
    emit("selected_forecast_kernel_speedup_vs_numpy", selected_numpy_s / selected_all_s)
    emit("envelope_1000_sessions_96_isps_ms", env_s * 1000.0)
    emit("allocation_1000_sessions_96_isps_ms", alloc_s * 1000.0)
    emit("allocation_numpy_twin_30_sessions_96_isps_ms", twin_s * 1000.0)
    emit("allocation_kernel_30_sessions_96_isps_ms", site_kernel_s * 1000.0)
    emit("allocation_numpy_twin_vs_kernel", twin_s / site_kernel_s)
    if baseline_s is None:
        emit("forecast_speedup_vs_statsforecast", "unavailable")
    else:
        emit("forecast_speedup_vs_statsforecast", baseline_s / ours_s)
