"""The simulated DSO's judgement in the demo: where its grid is congested and what it asks for.

The DSO's UFTP role (`uftp.dso.DsoParticipant`) validates, answers, orders and settles; what it
wants is the DSO's own business, decided here from the AGR's D-prognosis as a grid operator
would from its load flow: the morning peak over a limit of 80 % of that peak.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.demo.defaults import (
    DEMO_AGR_DOMAIN,
    DEMO_CONGESTION_POINT,
    DEMO_DSO_DOMAIN,
    DEMO_TIMEZONE,
)
from agent.trading.market import Market
from uftp import calendar
from uftp import store as uftp_store
from uftp.dso import DsoParticipant
from uftp.models import (
    AvailableRequested,
    FlexRequest,
    FlexRequestISP,
    FlexSettlementResponse,
)


@dataclass(frozen=True)
class Congestion:
    """ISPs over the DSO's limit, and by how much the peak exceeds it (W)."""

    requested: range
    peak_w: int
    limit_w: int

    @property
    def excess_w(self) -> int:
        """What the DSO needs at least: the excess over its limit (twice that at most)."""
        return max(3_000, (self.peak_w - self.limit_w) // 100 * 100)


def congestion(power_w: list[int], market: Market, day: date, earliest: datetime) -> Congestion:
    """The DSO's view of the prognosis: ISPs of the morning peak above its limit."""
    zone = ZoneInfo(DEMO_TIMEZONE)
    isps = market.isps(day)
    window = [
        i
        for i in isps
        if time(8) <= i.start.astimezone(zone).time() < time(12) and i.start >= earliest
    ]
    if not window:
        window = [i for i in isps if i.start >= earliest][:8]
    peak = max(power_w[i.index - 1] for i in window)
    limit = int(peak * 0.8 // 1000 * 1000)
    over = [i.index for i in window if power_w[i.index - 1] > limit]
    if not over:
        best = max(window, key=lambda i: power_w[i.index - 1]).index
        over = [best, best + 1]
    return Congestion(range(min(over), max(over) + 1), peak, limit)


def flex_request(
    found: Congestion, power_w: list[int], market: Market, day: date, now: datetime
) -> FlexRequest:
    """Reduce the load in the congested ISPs; elsewhere the DSO can take more load only up to
    its limit, so the EVs catch up without making a new peak right after the congestion."""
    requested, limit, excess = found.requested, found.limit_w, found.excess_w
    room = {
        i: max(0, (limit - power_w[i - 1]) // 1000 * 1000)
        for i in range(1, market.count(day) + 1)
        if i not in requested
    }
    elements = [
        FlexRequestISP(
            disposition=AvailableRequested.AVAILABLE,
            min_power=0,
            max_power=run.value,
            start=run.start,
            duration=run.duration,
        )
        for run in calendar.compress_runs(room)
    ]
    elements.append(
        FlexRequestISP(
            disposition=AvailableRequested.REQUESTED,
            min_power=-2 * excess,
            max_power=-excess,
            start=requested.start,
            duration=len(requested),
        )
    )
    elements.sort(key=lambda e: e.start)
    return FlexRequest(
        sender_domain=DEMO_DSO_DOMAIN,
        recipient_domain=DEMO_AGR_DOMAIN,
        time_stamp=now,
        isp_duration=timedelta(minutes=15),
        time_zone=DEMO_TIMEZONE,
        period=day,
        congestion_point=DEMO_CONGESTION_POINT,
        revision=1,
        expiration_date_time=now + timedelta(hours=1),
        isps=tuple(elements),
    )


async def settlement_answer(
    dso: DsoParticipant, settlement_id: str, wait_s: float
) -> FlexSettlementResponse:
    """The AGR's FlexSettlementResponse, once it is in the DSO's inbox."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while asyncio.get_running_loop().time() < deadline:
        rows = await dso.database.read(
            lambda c: uftp_store.inbound_messages(
                c, message_type=FlexSettlementResponse.xml_name, reference_id=settlement_id
            )
        )
        if rows:
            message = rows[0].message()
            assert isinstance(message, FlexSettlementResponse)
            return message
        await asyncio.sleep(0.1)
    raise TimeoutError("no FlexSettlementResponse")
