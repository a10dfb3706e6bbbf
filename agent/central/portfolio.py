"""A congestion point's numbers from its sites' messages (pure: no I/O, time is a parameter).

The central aggregator is one UFTP participant for many sites, so what it tells a DSO about a
congestion point is built from what the sites pushed over the fleet bus: the D-prognosis from
their forecasts (`aggregate_prognosis`), an offer from their flexibility envelopes
(`offer_from_flex`), settlement checks from their meter data (`congestion_point_metering`,
`check_settlement`). Nothing here asks a site anything: a site that is offline is represented
by what it sent last, flagged as such, so the operator view and the logs can show it.

Power in watts, positive = consumption; ISPs are named by their UTC start (`agent.central.grid`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from agent.central.grid import ISP, check_isp, position
from agent.fleet.protocol import Flex, Forecast, Metering
from agent.trading.settlement import dispute_by_metering
from uftp import calendar
from uftp.models import FlexOrderSettlement, FlexOrderSettlementStatus, FlexRequest

DAY = timedelta(days=1)

# --- D-prognosis -------------------------------------------------------------------------------

SiteState = Literal["fresh", "substituted", "missing"]


@dataclass(frozen=True)
class SiteForecastUse:
    """How one site entered a congestion point's prognosis: the operator's view of its data.

    `state` is the worst over the ISPs: `missing` if any ISP had nothing to use, `substituted`
    if any was filled from an older day, else `fresh`. `age` is `now` minus the `made_at` of
    the oldest forecast a substituted ISP came from; `shift_days` the largest day shift used.
    """

    site: str
    state: SiteState
    substituted: tuple[datetime, ...] = ()
    missing: tuple[datetime, ...] = ()
    age: timedelta | None = None
    shift_days: int = 0


@dataclass(frozen=True)
class PrognosisIsp:
    start: datetime
    p10_w: float
    p50_w: float
    p90_w: float
    # Sites whose value here is a substitute, and sites with no value (left out of the sums).
    substituted: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prognosis:
    congestion_point: str
    isps: tuple[PrognosisIsp, ...]
    sites: Mapping[str, SiteForecastUse]

    @property
    def substituted_sites(self) -> tuple[str, ...]:
        return tuple(s for s, use in self.sites.items() if use.state == "substituted")

    @property
    def missing_sites(self) -> tuple[str, ...]:
        return tuple(s for s, use in self.sites.items() if use.state == "missing")

    @property
    def complete(self) -> bool:
        """Every site had a value (fresh or substituted) in every ISP."""
        return not self.missing_sites


def combine_deviation(deviations: Sequence[float], correlation: float) -> float:
    """The spread of a sum of site loads from the sites' own spreads (each >= 0).

    With a common pairwise correlation rho between the sites' forecast errors, the variance
    of the sum is sum(d_i^2) + rho * sum_{i != j} d_i d_j = (1 - rho) sum(d_i^2) +
    rho (sum d_i)^2. rho = 0 (independent sites) gives the square root of the sum of squares,
    rho = 1 (perfectly correlated) the plain sum. Quantile spreads are treated like standard
    deviations, which is exact for normal errors and a fair approximation otherwise.
    """
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation {correlation} must be within [0, 1]")
    if any(d < 0 or not math.isfinite(d) for d in deviations):
        raise ValueError("deviations must be finite and non-negative")
    squares = math.fsum(d * d for d in deviations)
    total = math.fsum(deviations)
    variance = (1.0 - correlation) * squares + correlation * total * total
    # Never wider than the fully correlated sum, never narrower than the widest site.
    return min(total, max(math.sqrt(max(variance, 0.0)), max(deviations, default=0.0)))


def _order_key(forecast: Forecast) -> tuple[datetime, datetime, str]:
    return (forecast.made_at, forecast.sent_at, forecast.id)


def _value(forecast: Forecast, isp: datetime) -> tuple[float, float, float] | None:
    at = position(forecast.start, len(forecast.p50_w), isp)
    if at is None:
        return None
    return forecast.p10_w[at], forecast.p50_w[at], forecast.p90_w[at]


def _shifts(max_days: int) -> list[int]:
    """Day shifts to try, nearest first, the past before the future at equal distance."""
    out: list[int] = []
    for days in range(1, max_days + 1):
        out += [-days, days]
    return out


def aggregate_prognosis(
    congestion_point: str,
    sites: Collection[str],
    forecasts: Mapping[str, Sequence[Forecast]],
    isps: Sequence[datetime],
    now: datetime,
    *,
    correlation: float = 0.0,
    max_shift_days: int = 7,
) -> Prognosis:
    """The congestion point's baseline per ISP from the forecasts its sites pushed.

    `forecasts` holds each site's known forecasts (the latest, or the latest few); those for
    another congestion point are not used (a site moved). Per site and ISP:

    - fresh: the newest forecast (by `made_at`) that covers the ISP gives its value;
    - substituted: else the newest forecast that covers the same UTC time of day on a day at
      most `max_shift_days` away gives that day's value, the nearest day first and an earlier
      day before a later one at equal distance (yesterday's evening stands in for today's);
    - missing: else the site has no value there and is left out of the sums, named per ISP.

    p50 is the sum of the sites' p50. p10 and p90 are p50 minus/plus the sites' spreads
    (p50 - p10 below, p90 - p50 above) combined by `combine_deviation` with `correlation`:
    0 (the default) treats the sites' errors as independent, the square root of the sum of
    squares, so the band of many sites is narrower than the sum of their bands; raise it
    where the sites share a driver the forecasts do not capture (the same employer's car
    park, say). The aggregate band never exceeds the sum of the sites' bands, so its p10 is
    never below the sum of their p10s.
    """
    for start in isps:
        check_isp(start)
    if len(set(isps)) != len(isps):
        raise ValueError("the ISPs of a prognosis must be distinct")
    if max_shift_days < 0:
        raise ValueError("max_shift_days must be >= 0")
    ordered_sites = sorted(set(sites))
    shifts = _shifts(max_shift_days)
    per_isp: dict[datetime, list[tuple[str, tuple[float, float, float], bool]]] = {
        t: [] for t in isps
    }
    uses: dict[str, SiteForecastUse] = {}
    for site in ordered_sites:
        own = sorted(
            (f for f in forecasts.get(site, ()) if f.congestion_point == congestion_point),
            key=_order_key,
            reverse=True,
        )
        substituted: list[datetime] = []
        missing: list[datetime] = []
        oldest: datetime | None = None
        widest = 0
        for t in isps:
            found: tuple[float, float, float] | None = None
            for forecast in own:
                found = _value(forecast, t)
                if found is not None:
                    break
            if found is not None:
                per_isp[t].append((site, found, False))
                continue
            for forecast in own:
                for days in shifts:
                    found = _value(forecast, t + days * DAY)
                    if found is not None:
                        oldest = (
                            forecast.made_at if oldest is None else min(oldest, forecast.made_at)
                        )
                        widest = max(widest, abs(days))
                        break
                if found is not None:
                    break
            if found is None:
                missing.append(t)
            else:
                substituted.append(t)
                per_isp[t].append((site, found, True))
        state: SiteState = "missing" if missing else "substituted" if substituted else "fresh"
        uses[site] = SiteForecastUse(
            site=site,
            state=state,
            substituted=tuple(substituted),
            missing=tuple(missing),
            age=None if oldest is None else max(now - oldest, timedelta(0)),
            shift_days=widest,
        )
    out: list[PrognosisIsp] = []
    for t in isps:
        values = per_isp[t]
        p50 = math.fsum(v[1] for _, v, _ in values)
        below = combine_deviation([v[1] - v[0] for _, v, _ in values], correlation)
        above = combine_deviation([v[2] - v[1] for _, v, _ in values], correlation)
        present = {site for site, _, _ in values}
        out.append(
            PrognosisIsp(
                start=t,
                p10_w=p50 - below,
                p50_w=p50,
                p90_w=p50 + above,
                substituted=tuple(site for site, _, sub in values if sub),
                missing=tuple(s for s in ordered_sites if s not in present),
            )
        )
    return Prognosis(congestion_point, tuple(out), uses)


# --- Offers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestElement:
    """One ISP element of a FlexRequest on the UTC grid: `isps` ISPs from `start`.

    `min_power_w`/`max_power_w` bound the change from the baseline the DSO takes there. A
    Requested element lies on one side of zero: MinPower >= 0 asks for more load, MaxPower
    <= 0 for less (MaxPower -6000 = "at least 6 kW less")."""

    start: datetime
    isps: int
    requested: bool
    min_power_w: int
    max_power_w: int

    @property
    def starts(self) -> tuple[datetime, ...]:
        return tuple(self.start + i * ISP for i in range(self.isps))

    @property
    def raises(self) -> bool:
        return self.min_power_w >= 0 and self.max_power_w > 0

    @property
    def one_sided(self) -> bool:
        return self.min_power_w <= self.max_power_w and (
            self.min_power_w >= 0 or self.max_power_w <= 0
        )

    @property
    def least_w(self) -> int:
        """The smallest change (magnitude) the DSO accepts here."""
        return abs(self.min_power_w) if self.raises else abs(self.max_power_w)

    @property
    def most_w(self) -> int:
        """The largest change (magnitude) the DSO takes here."""
        return abs(self.max_power_w) if self.raises else abs(self.min_power_w)


def request_elements(request: FlexRequest) -> tuple[RequestElement, ...]:
    """A FlexRequest's ISP elements on the UTC grid: the UFTP edge, where the market's time
    zone and ISP numbering turn into UTC starts. Raises `uftp.calendar.CalendarError` for an
    element outside the period; the fleet grid is 15 minutes, so another ISP-Duration is a
    `ValueError` (the inbound validation rejects both before this is reached)."""
    if request.isp_minutes != 15:
        raise ValueError(f"the fleet grid is 15-minute ISPs, the request has {request.isp_minutes}")
    out = []
    for isp in request.isps:
        start, _ = calendar.isp_interval(request.period, request.time_zone, 15, isp.start)
        calendar.isp_interval(request.period, request.time_zone, 15, isp.start + isp.duration - 1)
        out.append(
            RequestElement(
                start=start,
                isps=isp.duration,
                requested=isp.requested,
                min_power_w=isp.min_power,
                max_power_w=isp.max_power,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class SiteContribution:
    """One site's part of an offer in one ISP, with the envelope it was sized on (so an
    order can be split later without the envelope, which may have changed or expired)."""

    change_w: float  # signed, same sign as the offered change
    baseline_w: float  # the envelope's baseline, taken into [min_w, max_w]
    min_w: float
    max_w: float


@dataclass(frozen=True)
class OfferedElement:
    element: RequestElement
    change_w: int  # signed change offered in each ISP of the element


@dataclass(frozen=True)
class PortfolioOffer:
    congestion_point: str
    elements: tuple[OfferedElement, ...]
    # site -> ISP start -> contribution (only non-zero contributions are listed)
    contributions: Mapping[str, Mapping[datetime, SiteContribution]]
    # Requested elements not offered: (element start, why)
    not_offered: tuple[tuple[datetime, str], ...] = ()
    # Sites whose envelope was not used at all, and why (expired, another congestion point)
    sites_left_out: Mapping[str, str] = field(default_factory=dict)

    def change_per_isp(self) -> dict[datetime, int]:
        return {t: e.change_w for e in self.elements for t in e.element.starts}

    def reserved_w(self) -> dict[str, dict[datetime, float]]:
        """What this offer reserves per site and ISP while it is outstanding."""
        return {
            site: {t: c.change_w for t, c in per.items()}
            for site, per in self.contributions.items()
        }


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@dataclass(frozen=True)
class _Room:
    site: str
    room_w: float
    baseline_w: float
    min_w: float
    max_w: float


def envelope_room(
    flex: Flex, isp: datetime, reserved_w: float, raises: bool, *, level_w: float | None = None
) -> _Room | None:
    """What a site's envelope leaves in one ISP for a change in one direction, after what
    outstanding offers already reserved there; None where the envelope does not cover it.

    The site can be held anywhere in [min_w, max_w]. Its baseline is taken into that range
    (it cannot be outside), the reservations are added (they must stay deliverable at the
    same time), and the room is the distance from there to the bound in the wanted direction.
    `level_w` replaces the baseline as the starting point where the site already holds a cap.
    """
    if not math.isfinite(reserved_w) or (level_w is not None and not math.isfinite(level_w)):
        # NaN would pass every comparison below and end up in a cap.
        raise ValueError(f"reservation or level of {flex.site} at {isp.isoformat()} is not finite")
    at = position(flex.start, len(flex.baseline_w), isp)
    if at is None:
        return None
    low, high = flex.min_w[at], flex.max_w[at]
    baseline = _clip(flex.baseline_w[at], low, high)
    start = baseline if level_w is None else level_w
    committed = _clip(start + reserved_w, low, high)
    room = high - committed if raises else committed - low
    return _Room(flex.site, max(room, 0.0), baseline, low, high)


def usable_flex(
    flexes: Mapping[str, Flex], congestion_point: str, now: datetime
) -> tuple[dict[str, Flex], dict[str, str]]:
    """The envelopes that may be used now, and why the others may not."""
    usable: dict[str, Flex] = {}
    left_out: dict[str, str] = {}
    for site in sorted(flexes):
        flex = flexes[site]
        if flex.site != site:
            left_out[site] = f"envelope is from site {flex.site}"
        elif flex.congestion_point != congestion_point:
            left_out[site] = f"envelope is for congestion point {flex.congestion_point}"
        elif flex.valid_until <= now:
            left_out[site] = f"envelope expired at {flex.valid_until.isoformat()}"
        else:
            usable[site] = flex
    return usable, left_out


def proportional(amount: float, rooms: Sequence[float]) -> list[float]:
    """`amount` (>= 0) shared in proportion to `rooms` (each >= 0), no share above its room.

    The caller passes at most sum(rooms); any rounding left over is given to the shares with
    room left, in order, so the shares add up to `amount` as exactly as floats allow."""
    total = math.fsum(rooms)
    if amount <= 0 or total <= 0:
        return [0.0 for _ in rooms]
    amount = min(amount, total)
    shares = [min(amount * r / total, r) for r in rooms]
    rest = amount - math.fsum(shares)
    for i, r in enumerate(rooms):
        if rest <= 0:
            break
        extra = min(rest, r - shares[i])
        if extra > 0:
            shares[i] += extra
            rest -= extra
    return shares


def offer_from_flex(
    congestion_point: str,
    request: Sequence[RequestElement],
    flexes: Mapping[str, Flex],
    reservations: Mapping[str, Mapping[datetime, float]],
    now: datetime,
    *,
    lead: timedelta = timedelta(0),
    min_offer_w: int = 1,
) -> PortfolioOffer:
    """What the congestion point's sites can offer for a FlexRequest, from what they pushed.

    `flexes` is each site's latest envelope; `reservations` the signed change outstanding
    offers already promised per site and ISP. Per Requested element, the offered change is
    the smallest over its ISPs of the sites' summed room (`envelope_room`), at most what the
    DSO takes (its MinPower/MaxPower bound) and floored to whole watts; an element whose
    change would stay below the DSO's smallest accepted change (or `min_offer_w`), or that
    starts before `now + lead`, is not offered and says why. Each ISP's change is shared
    between the sites in proportion to their room there, so no site is asked for more than
    its envelope minus its reservations. An envelope past its `valid_until` (at `now`) or for
    another congestion point is never used. Available elements are not used: a site's
    envelope already holds per ISP, whatever it is held to elsewhere.

    Deterministic: the same inputs give the same offer (sites are taken in sorted order).
    Overlapping elements are a caller's bug (`ValueError`): UFTP validation rejects them.
    """
    seen: set[datetime] = set()
    for element in request:
        starts = set(element.starts)
        if starts & seen:
            raise ValueError(
                f"request elements overlap at {min(starts & seen).isoformat()} (the inbound "
                "validation rejects such a request)"
            )
        seen |= starts
    usable, left_out = usable_flex(flexes, congestion_point, now)
    offered: list[OfferedElement] = []
    not_offered: list[tuple[datetime, str]] = []
    contributions: dict[str, dict[datetime, SiteContribution]] = {}
    for element in request:
        check_isp(element.start)
        if not element.requested:
            continue
        if not element.one_sided or element.isps < 1:
            not_offered.append((element.start, "the element is not one-sided"))
            continue
        if element.start < now + lead:
            not_offered.append((element.start, "the element starts before the offer's lead time"))
            continue
        rooms: dict[datetime, list[_Room]] = {}
        for t in element.starts:
            rooms[t] = []
            for site, flex in usable.items():
                room = envelope_room(
                    flex, t, reservations.get(site, {}).get(t, 0.0), element.raises
                )
                if room is not None and room.room_w > 0:
                    rooms[t].append(room)
        reachable = min(math.fsum(r.room_w for r in rooms[t]) for t in element.starts)
        magnitude = math.floor(min(reachable, element.most_w))
        if magnitude < max(element.least_w, min_offer_w, 1):
            not_offered.append(
                (
                    element.start,
                    f"the sites' room ({reachable:.0f} W) does not reach the smallest change "
                    f"requested ({max(element.least_w, min_offer_w, 1)} W)",
                )
            )
            continue
        sign = 1 if element.raises else -1
        for t in element.starts:
            shares = proportional(float(magnitude), [r.room_w for r in rooms[t]])
            for room, share in zip(rooms[t], shares, strict=True):
                if share > 0:
                    contributions.setdefault(room.site, {})[t] = SiteContribution(
                        change_w=sign * share,
                        baseline_w=room.baseline_w,
                        min_w=room.min_w,
                        max_w=room.max_w,
                    )
        offered.append(OfferedElement(element, sign * magnitude))
    return PortfolioOffer(
        congestion_point=congestion_point,
        elements=tuple(offered),
        contributions=contributions,
        not_offered=tuple(not_offered),
        sites_left_out=left_out,
    )


# --- Metering and settlement -------------------------------------------------------------------


@dataclass(frozen=True)
class MeteredIsp:
    start: datetime
    energy_wh: float | None  # None: some site has no measurement here (never summed as 0)
    missing: tuple[str, ...] = ()

    @property
    def average_w(self) -> float | None:
        return None if self.energy_wh is None else self.energy_wh * 3600.0 / ISP.total_seconds()


@dataclass(frozen=True)
class CongestionPointMetering:
    congestion_point: str
    isps: tuple[MeteredIsp, ...]

    def average_w(self) -> dict[datetime, float]:
        """Average power per fully metered ISP; ISPs with a missing site are absent."""
        return {i.start: w for i in self.isps if (w := i.average_w) is not None}


def congestion_point_metering(
    congestion_point: str,
    sites: Collection[str],
    meterings: Mapping[str, Sequence[Metering]],
    isps: Sequence[datetime],
) -> CongestionPointMetering:
    """The congestion point's measured energy per ISP: the sum over its sites.

    Per site and ISP the newest message (by `sent_at`, then `id`) with a value there counts
    (a site re-sends a day once more is known; a value is never withdrawn by a later gap).
    An ISP where any site of the portfolio has no value is None, naming the sites: a sum
    without them would understate the load and could wrongly dispute a DSO's settlement. A
    congestion point without sites has measured nothing: None everywhere.
    """
    for start in isps:
        check_isp(start)
    ordered_sites = sorted(set(sites))
    out: list[MeteredIsp] = []
    newest_first = {
        site: sorted(
            (m for m in meterings.get(site, ()) if m.congestion_point == congestion_point),
            key=lambda m: (m.sent_at, m.id),
            reverse=True,
        )
        for site in ordered_sites
    }
    for t in isps:
        total: list[float] = []
        missing: list[str] = []
        for site in ordered_sites:
            value: float | None = None
            for message in newest_first[site]:
                at = position(message.start, len(message.energy_wh), t)
                if at is not None and message.energy_wh[at] is not None:
                    value = message.energy_wh[at]
                    break
            if value is None:
                missing.append(site)
            else:
                total.append(value)
        out.append(
            MeteredIsp(
                start=t,
                energy_wh=None if missing or not ordered_sites else math.fsum(total),
                missing=tuple(missing),
            )
        )
    return CongestionPointMetering(congestion_point, tuple(out))


@dataclass(frozen=True)
class SettlementCheck:
    status: FlexOrderSettlementStatus
    # ISP indices of the item the congestion point's metering could not judge (a site missing)
    unjudged: tuple[int, ...]


def check_settlement(
    item: FlexOrderSettlement,
    status: FlexOrderSettlementStatus,
    metering: CongestionPointMetering,
    time_zone: str,
    *,
    tolerance_w: float,
    tolerance_fraction: float,
) -> SettlementCheck:
    """A FlexSettlement item checked against the congestion point's summed metering, with the
    site agent's own rule (`agent.trading.settlement.dispute_by_metering`): disputed where
    the DSO's ActualPower differs beyond both tolerances. Only fully metered ISPs are judged;
    the others are listed in `unjudged` (neither accepted on our evidence nor disputed)."""
    measured = metering.average_w()
    measured_by_index: dict[int, float] = {}
    unjudged: list[int] = []
    for isp in item.isps:
        for index in range(isp.start, isp.start + isp.duration):
            try:
                start, _ = calendar.isp_interval(item.period, time_zone, 15, index)
            except calendar.CalendarError:
                continue  # not in the period: the assessment of the message rejects it
            if start in measured:
                measured_by_index[index] = measured[start]
            else:
                unjudged.append(index)
    checked = dispute_by_metering(item, status, measured_by_index, tolerance_w, tolerance_fraction)
    return SettlementCheck(checked, tuple(unjudged))
