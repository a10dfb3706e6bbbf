"""Flexibility of the plugged-in sessions: the envelope per ISP and the sizing of a request.

Sessions are given on the target grid (the ISPs of a FlexRequest or of today): positions are
ISP indices, 0 the first target ISP. Built from UTC instants, a session arriving inside an ISP
counts from the next one and one leaving inside an ISP stops at its start: the envelope never
promises power a session may not be there to take.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType

import numpy as np
import numpy.typing as npt

from forecaster.calendar import Float64Array, Int64Array, epoch_seconds


class FlexInputError(ValueError):
    """Sessions, limits or requests the kernels cannot use; the message names the value."""


def loaded_kernels(numba_module: str, twin: str = "forecaster.numpy_kernels") -> ModuleType:
    """The compiled kernels of `numba_module` in a process that has numba loaded already (the
    forecast worker, backtests, benchmarks), else their numpy twins (`forecaster.numpy_kernels`):
    the agent's own process never loads numba for these few-millisecond calls, and both give
    equal results (property-tested), so which one runs changes nothing but the cost."""
    import importlib

    return importlib.import_module(numba_module if "numba" in sys.modules else twin)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True)
class SessionSet:
    """N sessions on a target grid: ``arrival`` (first ISP it can charge in; <= 0 means it is
    plugged in already), ``departure`` (exclusive ISP index; beyond the horizon is fine),
    energy still needed in Wh, minimum (the 0-or->=min rule) and maximum power in W."""

    arrival: Int64Array
    departure: Int64Array
    energy_wh: Float64Array
    pmin_w: Float64Array
    pmax_w: Float64Array

    def __post_init__(self) -> None:
        arrays = {
            "arrival": np.ascontiguousarray(self.arrival, dtype=np.int64),
            "departure": np.ascontiguousarray(self.departure, dtype=np.int64),
            "energy_wh": np.ascontiguousarray(self.energy_wh, dtype=np.float64),
            "pmin_w": np.ascontiguousarray(self.pmin_w, dtype=np.float64),
            "pmax_w": np.ascontiguousarray(self.pmax_w, dtype=np.float64),
        }
        shapes = {name: a.shape for name, a in arrays.items()}
        if len(set(shapes.values())) != 1 or arrays["arrival"].ndim != 1:
            raise FlexInputError(f"session arrays must be 1-D of one length, got {shapes}")
        for name in ("energy_wh", "pmin_w", "pmax_w"):
            a = arrays[name]
            bad = ~np.isfinite(a) | (a < 0)
            if bad.any():
                i = _first_bad(bad)
                raise FlexInputError(f"session {i}: {name} {float(a[i])} must be finite and >= 0")
        bad = arrays["pmax_w"] <= 0
        if bad.any():
            i = _first_bad(bad)
            raise FlexInputError(f"session {i}: pmax_w {float(arrays['pmax_w'][i])} must be > 0")
        bad = arrays["pmin_w"] > arrays["pmax_w"]
        if bad.any():
            i = _first_bad(bad)
            raise FlexInputError(
                f"session {i}: pmin_w {float(arrays['pmin_w'][i])} exceeds pmax_w "
                f"{float(arrays['pmax_w'][i])}"
            )
        bad = arrays["departure"] < arrays["arrival"]
        if bad.any():
            i = _first_bad(bad)
            raise FlexInputError(
                f"session {i}: departure ISP {arrays['departure'][i]} is before arrival ISP "
                f"{arrays['arrival'][i]}"
            )
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    @property
    def count(self) -> int:
        return int(self.arrival.size)

    @classmethod
    def from_instants(
        cls,
        grid_start: datetime,
        isp_minutes: int,
        arrival: Sequence[datetime] | npt.NDArray[np.datetime64],
        departure: Sequence[datetime] | npt.NDArray[np.datetime64],
        energy_wh: Sequence[float] | Float64Array,
        pmin_w: Sequence[float] | Float64Array,
        pmax_w: Sequence[float] | Float64Array,
    ) -> SessionSet:
        """Sessions from UTC instants: arrival rounds up, departure down, to ISP starts."""
        isp = isp_minutes * 60
        origin = epoch_seconds([grid_start])[0]
        arr = epoch_seconds(arrival) - origin
        dep = epoch_seconds(departure) - origin
        first = np.maximum(-(-arr // isp), 0)
        last = np.maximum(dep // isp, first)
        return cls(first, last, np.asarray(energy_wh), np.asarray(pmin_w), np.asarray(pmax_w))

    def kernel_arrays(
        self,
    ) -> tuple[Int64Array, Int64Array, Float64Array, Float64Array, Float64Array]:
        """(start, end, energy, pmin, pmax) as the kernels take them: start clipped to 0."""
        return (
            np.maximum(self.arrival, 0),
            np.maximum(self.departure, 0),
            self.energy_wh,
            self.pmin_w,
            self.pmax_w,
        )


def site_limit(limit_w: float | Sequence[float] | Float64Array, horizon: int) -> Float64Array:
    """The site limit per ISP: a scalar or (H,) W, finite and >= 0 (never "unlimited")."""
    if horizon <= 0:
        raise FlexInputError(f"horizon {horizon} must be at least one ISP")
    arr = np.asarray(limit_w, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(horizon, float(arr))
    if arr.shape != (horizon,):
        raise FlexInputError(f"site limit must be a scalar or ({horizon},), got {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        t = _first_bad(bad)
        raise FlexInputError(f"site limit {float(arr[t])} W at ISP {t} must be finite and >= 0")
    return np.ascontiguousarray(arr)


def _dt_hours(isp_minutes: int) -> float:
    if isp_minutes <= 0:
        raise FlexInputError(f"ISP length {isp_minutes} min must be positive")
    return isp_minutes / 60.0


@dataclass(frozen=True)
class Envelope:
    """Per ISP (H,) the lowest and highest site power, in W, that keep every session
    deliverable; `short` (N,) marks sessions that cannot be completed even at full power."""

    lower_w: Float64Array
    upper_w: Float64Array
    short: npt.NDArray[np.bool_]

    @property
    def flexibility_w(self) -> Float64Array:
        return self.upper_w - self.lower_w


def flexibility_envelope(
    sessions: SessionSet,
    limit_w: float | Sequence[float] | Float64Array,
    horizon: int,
    isp_minutes: int = 15,
) -> Envelope:
    limit = site_limit(limit_w, horizon)
    dt_h = _dt_hours(isp_minutes)
    flex = loaded_kernels("forecaster.kernels.flex")
    lower, upper, short = flex.envelope(*sessions.kernel_arrays(), limit, dt_h)
    return Envelope(lower, upper, short)


@dataclass(frozen=True)
class Allocation:
    """Per-session setpoints (N, H) in W, their site total (H,), the energy (N,) Wh still
    needed after the horizon and the part of it that cannot be delivered at all (unmet)."""

    schedule_w: Float64Array
    site_w: Float64Array
    remaining_wh: Float64Array
    unmet_wh: Float64Array

    @property
    def complete(self) -> bool:
        return bool(np.all(self.unmet_wh == 0.0))


def allocate(
    sessions: SessionSet,
    target_w: Sequence[float] | Float64Array,
    limit_w: float | Sequence[float] | Float64Array,
    isp_minutes: int = 15,
) -> Allocation:
    """Per-session schedules that follow the site target as closely as the sessions allow.

    Feasibility first: a session that needs power now to finish by its departure gets it even
    above the target; never above the site limit. Energy that cannot be delivered is reported
    in `unmet_wh`, never dropped silently.
    """
    target = np.ascontiguousarray(target_w, dtype=np.float64)
    if target.ndim != 1 or target.size == 0:
        raise FlexInputError(f"target must be (H,) W, got shape {target.shape}")
    bad = ~np.isfinite(target) | (target < 0)
    if bad.any():
        t = _first_bad(bad)
        raise FlexInputError(f"target {float(target[t])} W at ISP {t} must be finite and >= 0")
    limit = site_limit(limit_w, target.size)
    dt_h = _dt_hours(isp_minutes)
    flex = loaded_kernels("forecaster.kernels.flex")
    schedule, remaining, unmet = flex.allocate(*sessions.kernel_arrays(), limit, target, dt_h)
    return Allocation(schedule, schedule.sum(axis=0), remaining, unmet)


@dataclass(frozen=True)
class RequestSizing:
    """What the sessions can do for a request to change site power in some ISPs.

    baseline_w: site power when every session charges as early as it can (no flexibility used).
    achieved_w: site power with the request applied as far as it is feasible.
    change_w: achieved - baseline in the requested ISPs (0 elsewhere); negative is a reduction.
    max_change_w: the largest feasible change in the requested ISPs (all of them at once).
    shifted_w: achieved - baseline outside the requested ISPs: where the energy went (after a
    reduction the sessions catch up, before a raise they had less left to take).
    """

    requested: npt.NDArray[np.bool_]
    baseline_w: Float64Array
    achieved_w: Float64Array
    change_w: Float64Array
    max_change_w: Float64Array
    shifted_w: Float64Array
    allocation: Allocation


def size_request(
    sessions: SessionSet,
    limit_w: float | Sequence[float] | Float64Array,
    change_w: Sequence[float] | Float64Array,
    isp_minutes: int = 15,
) -> RequestSizing:
    """Size a request: `change_w` (H,) W, negative to reduce and positive to raise site power
    in that ISP, NaN for ISPs outside the request (free to absorb the shifted energy)."""
    change = np.ascontiguousarray(change_w, dtype=np.float64)
    if change.ndim != 1 or change.size == 0:
        raise FlexInputError(f"request must be (H,) W, got shape {change.shape}")
    bad = np.isinf(change)
    if bad.any():
        t = _first_bad(bad)
        raise FlexInputError(f"requested change {float(change[t])} W at ISP {t} is not finite")
    horizon = change.size
    limit = site_limit(limit_w, horizon)
    requested = ~np.isnan(change)
    envelope = flexibility_envelope(sessions, limit, horizon, isp_minutes)
    free = envelope.upper_w
    baseline = allocate(sessions, free, limit, isp_minutes).site_w
    wanted = np.where(requested, np.clip(baseline + np.nan_to_num(change), 0.0, limit), free)
    extreme = np.where(requested, np.where(np.nan_to_num(change) < 0, 0.0, limit), free)
    result = allocate(sessions, wanted, limit, isp_minutes)
    most = allocate(sessions, extreme, limit, isp_minutes).site_w
    delta = result.site_w - baseline
    return RequestSizing(
        requested=requested,
        baseline_w=baseline,
        achieved_w=result.site_w,
        change_w=np.where(requested, delta, 0.0),
        max_change_w=np.where(requested, most - baseline, 0.0),
        shifted_w=np.where(requested, 0.0, delta),
        allocation=result,
    )


__all__ = [
    "Allocation",
    "Envelope",
    "FlexInputError",
    "RequestSizing",
    "SessionSet",
    "allocate",
    "flexibility_envelope",
    "loaded_kernels",
    "site_limit",
    "size_request",
]
