"""One figure per line, ``name: value``, so results are greppable and diffable across runs."""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

_NAME = re.compile(r"^[a-z0-9_]+$")


def format_value(value: float | int | str) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    return value


def emit(name: str, value: float | int | str, stream: TextIO | None = None) -> None:
    """Print one figure. Names are snake_case with the unit as suffix (``_s``, ``_per_s``)."""
    if not _NAME.match(name):
        raise ValueError(f"benchmark figure name {name!r} must be snake_case")
    print(f"{name}: {format_value(value)}", file=stream or sys.stdout, flush=True)


def ratio(ours: float, baseline: float) -> float:
    """How many times better we are (both as rates, higher is better)."""
    if baseline <= 0:
        raise ValueError("baseline rate must be positive")
    return ours / baseline


def best_rate(fn: Callable[[], object], *, min_time_s: float = 0.5, repeats: int = 3) -> float:
    """Calls per second of `fn`: the best of `repeats` timed loops of at least `min_time_s`."""
    rates: list[float] = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < min_time_s:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
        rates.append(count / elapsed)
    return max(rates)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must lie in [0, 1]")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
