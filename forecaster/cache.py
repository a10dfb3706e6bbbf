"""numba's compiled-kernel cache under the agent's state directory, and the warm-up.

A process that calls a kernel for the first time compiles it (0.3–0.7 s each, measured
here) unless a cache entry for this CPU exists. Entries are tied to the CPU model, so a cache
built in CI is useless on a gateway: warm it on the device (`flexbridge warmup`, or at service
start), and every later process loads each kernel in milliseconds. The cache lives under the
state directory because that is the one place a hardened systemd unit may write, and because
`__pycache__` next to an installed package is read-only there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CACHE_DIRNAME = "numba-cache"


class CacheDirectoryError(RuntimeError):
    pass


def cache_dir_for(state_directory: Path) -> Path:
    return state_directory / CACHE_DIRNAME


def point_cache_at(path: Path) -> None:
    """Set NUMBA_CACHE_DIR before numba is imported (cheap: imports nothing), for this
    process and its children. An explicit NUMBA_CACHE_DIR from the environment wins."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(path))


def kernels() -> list[Any]:
    """Every numba dispatcher of the package (public and helper kernels)."""
    import numba

    from forecaster.kernels import flex, profile, sessions

    return [
        value
        for module in (profile, flex, sessions)
        for value in vars(module).values()
        if isinstance(value, numba.core.registry.CPUDispatcher)
    ]


def use_cache_dir(path: Path) -> Path:
    """Cache compiled kernels in `path` (created if missing) from now on, in this process.

    numba picks a cache location when a function is decorated, so the kernels already
    imported are re-pointed here; NUMBA_CACHE_DIR is set too for child processes.
    """
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheDirectoryError(f"cannot create kernel cache directory {path}: {exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirectoryError(f"kernel cache directory {path} is not writable")
    import numba

    resolved = str(path.resolve())
    os.environ["NUMBA_CACHE_DIR"] = resolved
    setattr(numba.config, "CACHE_DIR", resolved)  # noqa: B010 - config attributes are dynamic
    for kernel in kernels():
        kernel.enable_caching()
    return path


@dataclass(frozen=True)
class WarmupReport:
    seconds: float
    compiled: int
    """Kernel signatures compiled (and written to the cache) in this run."""
    loaded: int
    """Kernel signatures loaded from the cache."""
    cache_dir: str | None


def _stats() -> tuple[int, int]:
    hits = misses = 0
    for kernel in kernels():
        hits += sum(kernel.stats.cache_hits.values())
        misses += sum(kernel.stats.cache_misses.values())
    return hits, misses


def warm_up() -> WarmupReport:
    """Run every kernel once on small inputs of the production dtypes (float64/int64, C order)
    through the public API, so each is compiled into, or loaded from, the cache."""
    import numba
    import numpy as np

    from forecaster.calendar import SiteCalendar
    from forecaster.flexibility import SessionSet, allocate, flexibility_envelope, size_request
    from forecaster.forecast import PowerHistory, fit_profiles
    from forecaster.intraday import KnownSessions, SessionCalibration, forecast_intraday
    from forecaster.sessions import SessionRecords, reconstruct_power

    hits0, misses0 = _stats()
    began = time.perf_counter()
    calendar = SiteCalendar.of("Europe/Amsterdam")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    epoch0 = int(start.timestamp())
    day = np.arange(24, dtype=np.int64)
    records = SessionRecords(
        arrival=epoch0 + day * 86_400 + 8 * 3_600,
        departure=epoch0 + day * 86_400 + 17 * 3_600,
        delivered_wh=np.full(24, 12_000.0),
        requested_wh=np.full(24, 20_000.0),
        stated_departure=(epoch0 + day * 86_400 + 16 * 3_600).astype(np.float64),
    )
    power = reconstruct_power(records, epoch0, 900, 14 * 96)
    history = PowerHistory(start, 15, np.vstack([power, power]))
    origin = start + timedelta(days=14, hours=10)
    targets = np.arange(int(origin.timestamp()), int(origin.timestamp()) + 8 * 900, 900)
    fit_profiles(history, calendar).forecast(targets)
    calibration = SessionCalibration.fit(
        calendar,
        records.arrival,
        records.departure,
        records.delivered_wh,
        records.requested_wh,
        records.stated_departure,
        7_400.0,
    )
    known = KnownSessions(
        series=np.array([0], dtype=np.int64),
        arrival=np.array([int(origin.timestamp()) - 3_600], dtype=np.int64),
        expected_departure=np.array([float(origin.timestamp()) + 6 * 3_600]),
        needed_wh=np.array([10_000.0]),
        delivered_wh=np.array([5_000.0]),
        pmax_w=np.array([7_400.0]),
        power_now_w=np.array([7_400.0]),
    )
    forecast_intraday(history, origin, targets, calendar, known, calibration)
    fleet = SessionSet(
        arrival=np.array([0, 2], dtype=np.int64),
        departure=np.array([6, 8], dtype=np.int64),
        energy_wh=np.array([5_000.0, 8_000.0]),
        pmin_w=np.array([1_400.0, 4_100.0]),
        pmax_w=np.array([7_400.0, 11_000.0]),
    )
    flexibility_envelope(fleet, 15_000.0, 8)
    allocate(fleet, np.full(8, 6_000.0), 15_000.0)
    size_request(fleet, 15_000.0, np.array([np.nan, -3_000.0] + [np.nan] * 6))
    seconds = time.perf_counter() - began
    hits1, misses1 = _stats()
    cache = getattr(numba.config, "CACHE_DIR", "") or None
    return WarmupReport(seconds, misses1 - misses0, hits1 - hits0, cache)
