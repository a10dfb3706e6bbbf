"""D-prognoses per congestion point from the sites' forecasts, a site without a new forecast
substituted from its last one and flagged; shapeshifter-uftp 2.4.0 receives them."""

from __future__ import annotations

import asyncio
from datetime import date

import psycopg
import pytest

from agent.central import db
from agent.fleet import protocol
from tests.integration.central.conftest import CP_A, CP_B, MARKET, Fleet, eventually
from uftp.models import utc_now

pytestmark = pytest.mark.integration


def forecast(site: str, cp: str, period: date, p50_w: float) -> protocol.Forecast:
    isps = MARKET.isps(period)
    now = utc_now()
    return protocol.Forecast(
        id=f"{site}-fc-{period}",
        site=site,
        sent_at=now,
        start=isps[0].start,
        congestion_point=cp,
        made_at=now,
        p10_w=[p50_w - 100] * len(isps),
        p50_w=[p50_w] * len(isps),
        p90_w=[p50_w + 100] * len(isps),
    )


async def test_a_site_without_todays_forecast_is_substituted_and_flagged(fleet: Fleet) -> None:
    aggregator = await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    today = MARKET.today(utc_now())
    # At start nobody has sent anything: revision 1 of today, every site flagged.
    first = await asyncio.to_thread(
        fleet.dso.wait_for, "DPrognosis", 15.0, lambda m: m.congestion_point == CP_A
    )
    assert first.revision == 1
    await fleet.bus.send_up(forecast("site-a1", CP_A, today, 3000))
    await fleet.bus.send_up(
        forecast("site-a2", CP_A, date.fromordinal(today.toordinal() - 1), 2000)
    )
    await eventually(lambda: fleet.bus.acked() == 2, what="forecasts recorded")
    session = db.Session(fleet.dsn, "test")
    try:
        async with session.transaction() as conn:
            await aggregator.trader.prognosis_step(conn)  # unless the loop was quicker
    finally:
        await session.close()
    aggregator.uftp.wake_outbox()
    now = utc_now()
    future = [isp.index for isp in MARKET.isps(today) if isp.start > now]

    def complete(message: object) -> bool:
        powers = {i.start: i.power for i in message.isps}  # type: ignore[attr-defined]
        return message.congestion_point == CP_A and {powers[i] for i in future} == {5000}  # type: ignore[attr-defined]

    # a1's own forecast plus a2's of yesterday at the same time of day.
    latest = await asyncio.to_thread(fleet.dso.wait_for, "DPrognosis", 15.0, complete)
    assert latest.revision >= 2
    assert len(latest.isps) == MARKET.count(today)
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT DISTINCT ON (congestion_point) congestion_point, substituted_sites, "
                "missing_sites FROM prognosis ORDER BY congestion_point, revision DESC"
            )
        ).fetchall()
    assert rows == [(CP_A, ["site-a2"], []), (CP_B, [], ["site-b1"])]
    await eventually(
        lambda: asyncio.ensure_future(_accepted(fleet.dsn)), what="the DSO's responses recorded"
    )


async def _accepted(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT count(*) FILTER (WHERE status = 'accepted') FROM prognosis")
        ).fetchone()
        return row is not None and row[0] >= 3
