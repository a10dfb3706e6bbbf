"""A running agent with history and trade records, for the status page, API and metrics tests.

Real records where the agent makes them (today's D-prognosis sent to and answered by the
simulated DSO, a FlexRequest answered with a FlexOffer), and written into the store where only
time could make them: today's measured energy up to now and an accepted order around the ISP
running now, relative to today's prognosis.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.storage import store, trades
from agent.trading.market import Market
from tests.support.agent_env import (
    CP,
    DSO,
    TZ,
    Env,
    connection,
    make_env,
    order_row,
    running_agent,
)
from tests.support.agent_env import seed_history as seed_days
from tests.support.uftp import eventually
from uftp import calendar
from uftp.dso import DsoParticipant, Received
from uftp.models import (
    AvailableRequested,
    DPrognosis,
    FlexOffer,
    FlexRequest,
    FlexRequestISP,
)

if TYPE_CHECKING:
    from agent.app import Agent

MEASURED_W = 10_000  # what the site drew in every finished ISP of today
ORDERED_W = -4_000
TOKEN = "operator-token-for-tests-0123456789"


@dataclass
class Trading:
    env: Env
    agent: Agent
    dso: DsoParticipant
    offer: FlexOffer
    order: trades.OrderRow
    current_isp: int

    @property
    def url(self) -> str:
        assert self.agent.web is not None
        assert self.agent.web.port is not None
        return f"http://127.0.0.1:{self.agent.web.port}"


def flex_request(period: Any, first: int, last: int) -> FlexRequest:
    count = calendar.isp_count(period, TZ, 15)
    available = AvailableRequested.AVAILABLE
    return FlexRequest(
        sender_domain=DSO,
        recipient_domain="agr.flexbridge-test.org",
        isp_duration="PT15M",
        time_zone=TZ,
        period=period,
        congestion_point=CP,
        revision=1,
        expiration_date_time=datetime.now(UTC) + timedelta(hours=2),
        isps=[
            FlexRequestISP(
                disposition=available, min_power=0, max_power=60_000, start=1, duration=first - 1
            ),
            FlexRequestISP(
                disposition=AvailableRequested.REQUESTED,
                min_power=-60_000,
                max_power=-5_000,
                start=first,
                duration=last - first + 1,
            ),
            FlexRequestISP(
                disposition=available,
                min_power=0,
                max_power=60_000,
                start=last + 1,
                duration=count - last,
            ),
        ],
    )


def _is(kind: type, **where: Any) -> Any:
    def match(outcome: object) -> bool:
        return (
            isinstance(outcome, Received)
            and isinstance(outcome.message, kind)
            and all(getattr(outcome.message, k) == v for k, v in where.items())
        )

    return match


def write_today(env: Env, now: datetime) -> tuple[trades.OrderRow, int]:
    """Measured energy for today's finished ISPs and an accepted order around now."""
    market = Market(TZ, 15)
    today, current = market.locate(now)
    conn = connection(env.config)
    try:
        # IMMEDIATE: the running agent writes too, and a read turned write would not wait.
        conn.execute("BEGIN IMMEDIATE")
        prognosis = trades.latest_prognosis(conn, CP, today)
        assert prognosis is not None, "today's prognosis must exist first"
        day_start, _ = market.bounds(today)
        store.record_alive(conn, day_start - timedelta(seconds=1), now)
        store.add_isp_energy(
            conn,
            [
                ("CP-01", int(isp.start.timestamp()), CP, MEASURED_W / 4)
                for isp in market.isps(today)
                if isp.end <= now
            ],
        )
        first = max(1, current - 4)
        order = order_row(
            today,
            [[first, 8, ORDERED_W]],
            reference="ORD-TODAY",
            baseline_message_id=prognosis.message_id,
            received_at=now,
        )
        trades.insert_order(conn, order)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return order, current


@contextlib.asynccontextmanager
async def trading_agent(tmp_path: Path, **http: Any) -> AsyncIterator[Trading]:
    env = make_env(tmp_path, http=http)
    now = datetime.now(UTC)
    market = Market(TZ, 15)
    seed_days(env.config, market.today(now))
    async with running_agent(env) as (agent, dso):
        today = market.today(now)
        first = await dso.wait_handled(_is(DPrognosis, period=today), 60)
        assert isinstance(first, Received)
        assert first.accepted, first.rejections
        tomorrow = today + timedelta(days=1)
        await dso.send(flex_request(tomorrow, 37, 40))
        outcome = await dso.wait_handled(_is(FlexOffer), 60)
        assert isinstance(outcome, Received)
        assert isinstance(outcome.message, FlexOffer)
        offer_id = outcome.message.message_id

        def offer_accepted() -> bool:
            # The DSO answers the offer asynchronously: the tests read the agent's records
            # once that FlexOfferResponse has been processed, not while it is on its way.
            conn = connection(env.config)
            try:
                row = trades.find_offer(conn, offer_id)
            finally:
                conn.close()
            return row is not None and row.status == "accepted"

        await eventually(offer_accepted, 30)
        order, current = write_today(env, datetime.now(UTC))
        yield Trading(env, agent, dso, outcome.message, order, current)
