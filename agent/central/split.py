"""An accepted order's change turned into per-site power caps, and moved off offline sites
(pure: no I/O, time is a parameter).

The DSO orders a change at the congestion point; the sites can only be told a cap on their own
power (`agent.fleet.protocol.Command`). A site's cap in an ISP is its baseline plus its share of
the change, the share in proportion to what it contributed to the offer, so the caps deliver
the ordered change when every site keeps to its cap and draws its baseline otherwise. A cap is a
limit on consumption: never negative, never infinite, always within the site's envelope as it
was offered; where the order constrains an ISP a site with a share always gets a number there,
never "no cap". A raise is split the same way, but a cap cannot make a site draw more: it only
stops the site's own limits from holding the raise back.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.central.grid import ISP, check_isp
from agent.central.portfolio import SiteContribution, envelope_room, proportional, usable_flex
from agent.fleet.protocol import Flex
from uftp import calendar
from uftp.models import FlexOrder

TOLERANCE_W = 1e-6  # float rounding in a sum of shares; far below a watt


@dataclass(frozen=True)
class SiteShare:
    """One site's part of an order in one ISP and the cap that holds it to it."""

    baseline_w: float
    min_w: float
    max_w: float
    change_w: float  # this order's share, signed
    held_w: float  # what other active orders already ask of the site here, signed
    cap_w: float


@dataclass(frozen=True)
class Split:
    congestion_point: str
    shares: Mapping[str, Mapping[datetime, SiteShare]]
    # Signed part of the ordered change per ISP that the sites cannot carry (absent: none).
    shortfall_w: Mapping[datetime, float] = field(default_factory=dict)

    def caps(self, site: str) -> dict[datetime, float]:
        return {t: s.cap_w for t, s in self.shares.get(site, {}).items()}

    def change_w(self, isp: datetime) -> float:
        """The sites' summed share of the order in one ISP."""
        return math.fsum(per[isp].change_w for per in self.shares.values() if isp in per)


def _bounds(min_w: float, max_w: float) -> tuple[float, float]:
    """The envelope as a cap can express it: a cap is a consumption limit, never below 0."""
    return max(min_w, 0.0), max(max_w, 0.0)


def _cap(baseline: float, held: float, change: float, min_w: float, max_w: float) -> float:
    low, high = _bounds(min_w, max_w)
    return min(max(baseline + held + change, low), high)


def split_order(
    congestion_point: str,
    contributions: Mapping[str, Mapping[datetime, SiteContribution]],
    ordered_w: Mapping[datetime, float],
    *,
    held_w: Mapping[str, Mapping[datetime, float]] | None = None,
) -> Split:
    """Per-site caps for an accepted order's change per ISP (`ordered_w`, signed W, after the
    activation factor), from the contributions of the offer it accepts.

    Per ISP the sites whose contribution has the order's sign share the change in proportion
    to their contributions; the sum of the shares equals the ordered change whenever the
    contributions reach it, else every such site gives its whole contribution and the rest is
    `shortfall_w`. Sites that contributed in the ISP with nothing to give in this direction get
    a share of 0 (a cap at their baseline: the order constrains the ISP). A cap is the site's
    baseline plus `held_w` (the changes other active orders ask of it there: caps do not add
    up on the site, the strictest binds) plus its share, within [max(min_w, 0), max(max_w,
    0)] of the envelope it offered; what that bound cuts off is shortfall too.
    """
    held = held_w or {}
    shares: dict[str, dict[datetime, SiteShare]] = {}
    shortfall: dict[datetime, float] = {}
    for t in sorted(ordered_w):
        check_isp(t)
        ordered = ordered_w[t]
        if not math.isfinite(ordered):
            raise ValueError(f"ordered change at {t.isoformat()} is not finite")
        here = {site: per[t] for site, per in sorted(contributions.items()) if t in per}
        for site, c in here.items():
            if not all(map(math.isfinite, (c.change_w, c.baseline_w, c.min_w, c.max_w))):
                # A stored contribution gone bad must not turn into an unlimited cap.
                raise ValueError(f"contribution of {site} at {t.isoformat()} is not finite")
        sign = 1.0 if ordered > 0 else -1.0
        givers = [s for s, c in here.items() if ordered != 0 and c.change_w * sign > 0]
        offered = [abs(here[s].change_w) for s in givers]
        amounts = proportional(abs(ordered), offered)
        given = dict(zip(givers, amounts, strict=True))
        placed = 0.0
        for site, contribution in here.items():
            change = sign * given.get(site, 0.0)
            site_held = held.get(site, {}).get(t, 0.0)
            if not math.isfinite(site_held):
                raise ValueError(f"held change of {site} at {t.isoformat()} is not finite")
            cap = _cap(
                contribution.baseline_w, site_held, change, contribution.min_w, contribution.max_w
            )
            # What the envelope lets the cap carry of the share (the held part comes first).
            low, high = _bounds(contribution.min_w, contribution.max_w)
            floor = min(max(contribution.baseline_w + site_held, low), high)
            change = cap - floor
            placed += change
            shares.setdefault(site, {})[t] = SiteShare(
                baseline_w=contribution.baseline_w,
                min_w=contribution.min_w,
                max_w=contribution.max_w,
                change_w=change,
                held_w=site_held,
                cap_w=cap,
            )
        gap = ordered - placed
        if abs(gap) > TOLERANCE_W:
            shortfall[t] = gap
    return Split(congestion_point, shares, shortfall)


def order_changes(order: FlexOrder) -> dict[datetime, float]:
    """A FlexOrder's change per ISP on the UTC grid (the UFTP edge). Its ISP powers already
    carry the activation factor (a partial activation scales them in the order itself), so
    they are the change to split. Raises `uftp.calendar.CalendarError` for an ISP outside the
    period and `ValueError` for another ISP-Duration than the fleet's 15 minutes."""
    if order.isp_minutes != 15:
        raise ValueError(f"the fleet grid is 15-minute ISPs, the order has {order.isp_minutes}")
    out: dict[datetime, float] = {}
    for isp in order.isps:
        for index in range(isp.start, isp.start + isp.duration):
            start, _ = calendar.isp_interval(order.period, order.time_zone, 15, index)
            out[start] = float(isp.power)
    return out


def cap_series(caps: Mapping[datetime, float | None]) -> tuple[datetime, list[float | None]]:
    """A site's caps as a Command carries them: the first ISP and one value per ISP up to the
    last, None in the gaps (no cap from this order there). Needs at least one ISP."""
    if not caps:
        raise ValueError("a command needs at least one ISP")
    first, last = min(caps), max(caps)
    count = (last - first) // ISP + 1
    return first, [caps.get(first + i * ISP) for i in range(count)]


@dataclass(frozen=True)
class Reassignment:
    split: Split  # the order's shares after the move (offline sites without their share)
    # Sites whose caps change, with all their caps for this order (None: no cap there): the
    # centre sends each of them a command with the next seq.
    changed: Mapping[str, Mapping[datetime, float | None]]
    # Signed part of the offline sites' share per ISP that no online site had room for.
    unplaced_w: Mapping[datetime, float]


def reassign(
    split: Split,
    offline: Collection[str],
    flexes: Mapping[str, Flex],
    reservations: Mapping[str, Mapping[datetime, float]],
    now: datetime,
) -> Reassignment:
    """Move the offline sites' share of an order to online sites of the same congestion point.

    For every ISP of the order not over at `now`, the offline sites' summed share moves to
    the online sites with a valid envelope (`flexes`, their latest; never one past its
    `valid_until`, never one for another congestion point), in proportion to the room each
    has left in the order's direction: its current envelope from where this order's cap (or,
    for a site without one, its baseline) and `reservations` (what other outstanding offers
    and orders take from it, not this order) leave it; a cap only ever tightens. What finds
    no room is `unplaced_w`. The
    offline sites keep no cap from this order in those ISPs (when they come back they apply
    the newer command, without their share); ISPs already over are left as they were.
    """
    gone = set(offline)
    usable, _ = usable_flex(flexes, split.congestion_point, now)
    shares: dict[str, dict[datetime, SiteShare]] = {
        site: dict(per) for site, per in split.shares.items()
    }
    before = {site: split.caps(site) for site in split.shares}
    unplaced: dict[datetime, float] = {}
    isps = sorted({t for per in split.shares.values() for t in per})
    for t in isps:
        if t + ISP <= now:
            continue
        moving = math.fsum(
            per[t].change_w for site, per in shares.items() if site in gone and t in per
        )
        for site in gone:
            shares.get(site, {}).pop(t, None)
        if moving == 0:
            continue
        raises = moving > 0
        sign = 1.0 if raises else -1.0
        rooms: list[tuple[str, float, float, float, float]] = []
        for site, flex in usable.items():
            if site in gone:
                continue
            current = shares.get(site, {}).get(t)
            room = envelope_room(
                flex,
                t,
                reservations.get(site, {}).get(t, 0.0),
                raises,
                level_w=None if current is None else current.cap_w,
            )
            if room is None or room.room_w <= 0:
                continue
            level = room.baseline_w if current is None else current.cap_w
            rooms.append((site, room.room_w, level, room.min_w, room.max_w))
        amounts = proportional(abs(moving), [r[1] for r in rooms])
        placed = 0.0
        for (site, _, level, low, high), amount in zip(rooms, amounts, strict=True):
            # The cap moves by the amount, as far as the envelope (and 0 W) lets it; it
            # never loosens, and it is credited with no more than it was asked to take.
            cap = min(max(level + sign * amount, max(low, 0.0)), max(high, 0.0))
            taken = min(max(sign * (cap - level), 0.0), amount)
            if taken <= 0:
                continue
            current = shares.get(site, {}).get(t)
            placed += sign * taken
            shares.setdefault(site, {})[t] = SiteShare(
                baseline_w=level if current is None else current.baseline_w,
                min_w=low,
                max_w=high,
                change_w=sign * taken + (0.0 if current is None else current.change_w),
                held_w=0.0 if current is None else current.held_w,
                cap_w=cap,
            )
        gap = moving - placed
        if abs(gap) > TOLERANCE_W:
            unplaced[t] = gap
    shares = {site: per for site, per in shares.items() if per}
    after = Split(split.congestion_point, shares, dict(split.shortfall_w))
    changed: dict[str, dict[datetime, float | None]] = {}
    for site in sorted(set(before) | set(shares)):
        new = after.caps(site)
        if new != before.get(site, {}):
            changed[site] = {t: new.get(t) for t in isps}
    return Reassignment(after, changed, unplaced)
