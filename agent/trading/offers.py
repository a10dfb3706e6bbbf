"""Sizing and pricing a FlexOffer from the real flexibility of the sessions (pure, no I/O).

The question a FlexRequest asks: by how much can the congestion point's load move, relative to
our D-prognosis, in the Requested ISPs, while every EV still gets its energy by its departure,
everything already promised in outstanding offers can still be delivered, and the energy moved
out lands in the ISPs the DSO marked Available (never beyond their MaxPower)?

We answer it with the forecaster's allocation over one or more *scenarios* of sessions on the
period's ISP grid: the EVs plugged in now plus the arrivals of recent comparable days. For each
scenario the allocation pushes site power in the Requested ISPs as far as the request allows;
what it achieves in the worst scenario is what we offer, so an offer is one we could have
delivered on each of those days. Offered power per request element is the smallest change over
the element's ISPs: an element is one (Start, Duration) pair and gets one power, so the offer
keeps the request's granularity exactly (DSOs compare the pairs element by element).

A cap on site power is what delivers a reduction: capping at prognosis - R guarantees at least R
whatever the EVs would have done, which is why the achievable reduction is measured against the
prognosis and not against a physical "as early as possible" baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

import numpy as np

from forecaster.flexibility import Allocation, SessionSet, allocate

TWO_PLACES = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")

# An open offer whose flexibility fell this far short of what was offered in some ISP, and by
# more than REVOKE_MIN_W there, is revoked: a DSO that orders it would get too little, and a
# small dip within what the sites' own variation moves anyway is not worth a revocation.
REVOKE_SHORTFALL = 0.10
REVOKE_MIN_W = 500.0


def falls_short(offered_w: float, achievable_w: float) -> bool:
    """Whether `achievable_w` (magnitude) is too little to honour `offered_w` (magnitude).

    The stand-alone trader and the fleet's aggregator judge by this one rule, so a site agent
    and the centre revoke the same offers."""
    return (
        achievable_w < offered_w * (1 - REVOKE_SHORTFALL)
        and offered_w - achievable_w > REVOKE_MIN_W
    )


@dataclass(frozen=True)
class RequestElement:
    """One ISP element of a FlexRequest: ISPs start..start+duration-1 (1-based)."""

    start: int
    duration: int
    requested: bool
    min_power: int
    max_power: int

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.duration)

    @property
    def raises(self) -> bool:
        """A Requested element asks for more load (MinPower >= 0) or less (MaxPower <= 0)."""
        return self.min_power >= 0 and self.max_power > 0

    @property
    def least(self) -> int:
        """The smallest change the DSO accepts in this element (the bound nearest zero)."""
        return self.min_power if self.raises else self.max_power


@dataclass(frozen=True)
class Pricing:
    fixed: Decimal
    per_kwh: Decimal

    def price(self, kwh: float) -> Decimal:
        raw = self.fixed + self.per_kwh * Decimal(str(round(kwh, 6)))
        return raw.quantize(FOUR_PLACES, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class OptionPlan:
    reference: str
    price: Decimal
    min_activation_factor: Decimal
    # (start, duration, power W) per Requested element offered
    isps: tuple[tuple[int, int, int], ...]

    def change_per_isp(self) -> dict[int, int]:
        return {i: p for s, d, p in self.isps for i in range(s, s + d)}


@dataclass(frozen=True)
class OfferPlan:
    options: tuple[OptionPlan, ...]
    # Change per ISP index this offer reserves (the largest over its exclusive options).
    reserved_w: dict[int, int]
    # Why there is nothing to offer (None when there is an offer).
    no_offer_reason: str | None = None
    # Achievable change per ISP index before clipping to the request (diagnostics).
    achievable_w: dict[int, float] | None = None


def _energy_kwh(isps: Sequence[tuple[int, int, int]], isp_minutes: int) -> float:
    return sum(abs(p) * d for _, d, p in isps) * isp_minutes / 60.0 / 1000.0


def _min_activation(isps: Sequence[tuple[int, int, int]], least: dict[int, int]) -> Decimal:
    """The smallest factor f such that every element's power x f still meets the request."""
    factor = Decimal("0.01")
    for start, _, power in isps:
        if power == 0:
            continue
        need = Decimal(abs(least[start])) / Decimal(abs(power))
        factor = max(factor, need.quantize(TWO_PLACES, rounding=ROUND_CEILING))
    return min(factor, Decimal("1.00"))


def _deliverable(
    sessions: SessionSet,
    committed: np.ndarray,
    target: np.ndarray,
    room: np.ndarray,
    kind: np.ndarray,
    free: Allocation,
    isp_minutes: int,
) -> Allocation:
    """The allocation that moves site power towards `target` in the Requested ISPs as far as
    the room elsewhere lets every EV still finish: where the full move would leave energy
    undelivered, the move is scaled back (bisection) instead of breaking the DSO's room."""
    allowed = free.unmet_wh.sum() + 1.0
    result = allocate(sessions, target, room, isp_minutes)
    if result.unmet_wh.sum() <= allowed:
        return result
    requested = kind == 2
    low, high = 0.0, 1.0
    best = allocate(sessions, np.where(requested, committed, target), room, isp_minutes)
    for _ in range(8):
        middle = (low + high) / 2
        trial_target = np.where(requested, committed + middle * (target - committed), target)
        trial = allocate(sessions, trial_target, room, isp_minutes)
        if trial.unmet_wh.sum() <= allowed:
            low, best = middle, trial
        else:
            high = middle
    return best


def plan_offer(
    elements: Sequence[RequestElement],
    prognosis_w: Sequence[float],
    scenarios: Sequence[SessionSet],
    limit_w: Sequence[float] | float,
    *,
    reserved_w: Sequence[float] | np.ndarray | None = None,
    first_index: int = 1,
    isp_minutes: int = 15,
    pricing: Pricing,
    min_offer_power_w: int = 0,
    mutex_options: bool = False,
    partial_fractions: Sequence[float] = (),
    uncontrolled_w: Sequence[float] | np.ndarray | None = None,
) -> OfferPlan:
    """Plan the options of a FlexOffer answering `elements` for one period.

    prognosis_w: (N,) our current D-prognosis of the period (ISP i at position i-1).
    scenarios: session sets on the same grid (position 0 = ISP 1); at least one.
    limit_w: the site limit, scalar or (N,).
    reserved_w: (N,) change already promised in outstanding offers (signed W, 0 where none).
    first_index: the first ISP that may still be offered (later than now plus a lead time).
    uncontrolled_w: (N,) load in the prognosis that we cannot steer (EVs on chargers that take
    no charging profile): it is part of neither the scenarios nor what is offered, and it
    takes its share of the site limit.
    """
    n = len(prognosis_w)
    fixed = np.zeros(n) if uncontrolled_w is None else np.asarray(uncontrolled_w, dtype=np.float64)
    fixed = np.clip(fixed, 0.0, None)
    prognosis = np.clip(np.asarray(prognosis_w, dtype=np.float64) - fixed, 0.0, None)
    limit = np.broadcast_to(np.asarray(limit_w, dtype=np.float64), (n,)).copy()
    limit = np.clip(limit - fixed, 0.0, None)
    reserved = np.zeros(n) if reserved_w is None else np.asarray(reserved_w, dtype=np.float64)
    if not scenarios:
        raise ValueError("plan_offer needs at least one scenario of sessions")
    committed = np.clip(prognosis + reserved, 0.0, limit)
    requested = [e for e in elements if e.requested]
    available = [e for e in elements if not e.requested]
    usable = [e for e in requested if e.start >= first_index and e.start + e.duration - 1 <= n]
    if not usable:
        return OfferPlan((), {}, "no Requested ISP lies ahead of the offer's lead time")

    kind = np.zeros(n, dtype=np.int8)  # 0 other, 1 Available, 2 Requested (offered)
    target = committed.copy()
    room = limit.copy()
    for e in available:
        for i in e.indices:
            if 1 <= i <= n:
                kind[i - 1] = 1
                # Energy moved out may land here, up to the DSO's MaxPower for the ISP.
                room[i - 1] = min(limit[i - 1], committed[i - 1] + max(e.max_power, 0))
                target[i - 1] = room[i - 1]
    for e in usable:
        for i in e.indices:
            kind[i - 1] = 2
            want = committed[i - 1] + (e.max_power if e.raises else e.min_power)
            target[i - 1] = min(max(want, 0.0), limit[i - 1])
            room[i - 1] = limit[i - 1]

    worst = np.full(n, np.inf)
    for sessions in scenarios:
        free = allocate(sessions, limit, limit, isp_minutes)
        # Elsewhere no more load than without the offer: the DSO did not offer that room.
        steered = np.where(kind == 0, np.maximum(committed, free.site_w), room)
        result = _deliverable(sessions, committed, target, steered, kind, free, isp_minutes)
        change = result.site_w - committed
        for e in usable:
            for i in e.indices:
                # The worst case is the change closest to zero in the requested direction.
                magnitude = change[i - 1] if e.raises else -change[i - 1]
                worst[i - 1] = min(worst[i - 1], magnitude)

    achievable = {i + 1: float(worst[i]) for i in range(n) if math.isfinite(worst[i])}
    offered: list[tuple[int, int, int]] = []
    least: dict[int, int] = {}
    for e in usable:
        magnitude = min(worst[i - 1] for i in e.indices)
        bound = abs(e.min_power) if not e.raises else abs(e.max_power)
        magnitude = min(magnitude, bound)
        if magnitude < max(abs(e.least), min_offer_power_w, 1):
            continue
        power = math.floor(magnitude)
        offered.append((e.start, e.duration, power if e.raises else -power))
        least[e.start] = e.least
    if not offered:
        return OfferPlan(
            (),
            {},
            "the sessions' flexibility does not reach the smallest change requested "
            "in any Requested ISP",
            achievable,
        )
    full = OptionPlan(
        "A",
        pricing.price(_energy_kwh(offered, isp_minutes)),
        _min_activation(offered, least),
        tuple(offered),
    )
    options = [full]
    if mutex_options:
        for number, fraction in enumerate(sorted(set(partial_fractions), reverse=True), 1):
            scaled = tuple((s, d, int(p * fraction)) for s, d, p in offered)
            if any(abs(p) < max(abs(least[s]), min_offer_power_w, 1) for s, _, p in scaled):
                continue
            options.append(
                OptionPlan(
                    chr(ord("A") + number),
                    pricing.price(_energy_kwh(scaled, isp_minutes)),
                    _min_activation(scaled, least),
                    scaled,
                )
            )
    return OfferPlan(tuple(options), full.change_per_isp(), None, achievable)
