"""Whether an open offer of the aggregator can still be delivered (pure: no I/O, time is a
parameter).

An offer is sized on the envelopes the sites pushed when the FlexRequest came; envelopes change
(an EV leaves early, a site goes silent). A DSO expects an aggregator to revoke an offer it can
no longer honour rather than let it be ordered and fall short, so the centre looks again at
every open offer with the sites' latest envelopes, and judges with the same rule as the
stand-alone trader (`agent.trading.offers.falls_short`).

Deliverable is judged on the whole congestion point, not site by site: an order is split over
the contributors and an offline site's share is moved to the others (`agent.central.split`), so
what matters is the room all the heard-from sites have together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.central.portfolio import SiteContribution, envelope_room, usable_flex
from agent.fleet.protocol import Flex
from agent.trading.offers import falls_short


@dataclass(frozen=True)
class Shortfall:
    """The first ISP in which an offer cannot be delivered any more (magnitudes, W)."""

    isp: datetime
    offered_w: float
    achievable_w: float

    @property
    def missing_w(self) -> float:
        return self.offered_w - self.achievable_w


def heard_from(
    flexes: Mapping[str, Flex],
    last_seen: Mapping[str, datetime],
    now: datetime,
    silent_after: timedelta,
) -> dict[str, Flex]:
    """The envelopes of the sites heard from within `silent_after`.

    A site's envelope may rightly be older than that (sites push one every
    `fleet.flex_interval_s` and heartbeats between): a site is silent when neither its latest
    envelope nor any later message (`last_seen`) is that recent, and a silent site offers
    nothing, whatever its last envelope said."""
    out: dict[str, Flex] = {}
    for site, flex in flexes.items():
        heard = max(flex.made_at, last_seen.get(site, flex.made_at))
        if now - heard <= silent_after:
            out[site] = flex
    return out


def offer_shortfall(
    congestion_point: str,
    shares: Mapping[str, Mapping[datetime, SiteContribution]],
    flexes: Mapping[str, Flex],
    reserved: Mapping[str, Mapping[datetime, float]],
    last_seen: Mapping[str, datetime],
    now: datetime,
    *,
    silent_after: timedelta,
) -> Shortfall | None:
    """The first ISP where the offer falls short (`falls_short`), or None while it can still
    be delivered, or once its first ISP has begun (an offer is never revoked then).

    `shares` are the offer's per-site contributions as stored with it; `flexes` each site's
    latest envelope; `reserved` the signed change other outstanding offers and accepted orders
    already take per site and ISP (not this offer's own); `last_seen` when each site was last
    heard from. Per ISP the offered change is the sum of the contributions, and what is
    achievable the room (`envelope_room`) of every usable, heard-from site in that direction,
    whether it contributed or not."""
    per_isp: dict[datetime, float] = {}
    for contributions in shares.values():
        for isp, contribution in contributions.items():
            per_isp[isp] = per_isp.get(isp, 0.0) + contribution.change_w
    if not per_isp or min(per_isp) <= now:
        return None
    usable, _ = usable_flex(heard_from(flexes, last_seen, now, silent_after), congestion_point, now)
    for isp in sorted(per_isp):
        change = per_isp[isp]
        raises = change > 0
        rooms = []
        for site, flex in usable.items():
            room = envelope_room(flex, isp, reserved.get(site, {}).get(isp, 0.0), raises)
            if room is not None:
                rooms.append(room.room_w)
        achievable = math.fsum(rooms)
        if falls_short(abs(change), achievable):
            return Shortfall(isp, abs(change), achievable)
    return None
