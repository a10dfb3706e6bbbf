"""The day chart's data and picture: measured only where something was measured, the DSO's
limit from its request, the site cap from the orders, on the market's clock."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from lxml import etree

from agent.app import build_agent
from agent.interfaces.status import day_chart
from agent.interfaces.web.page import chart_svg
from agent.storage import store, trades
from agent.storage.records import Event
from agent.trading.market import Market
from tests.support.agent_env import CP, DSO, TZ, make_env, order_row

DAY = date(2026, 6, 2)
SVG = "{http://www.w3.org/2000/svg}"


def _prognosis(created_at: datetime, power_w: int) -> trades.PrognosisRow:
    return trades.PrognosisRow(
        congestion_point=CP,
        period=DAY,
        revision=1,
        message_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        dso_domain=DSO,
        created_at=created_at,
        reason="day-ahead",
        power_w=[power_w] * 96,
        baseline_w=[power_w] * 96,
        orders=[],
        status="sent",
        rejection_reason=None,
    )


async def test_the_chart_shows_what_was_measured_asked_and_capped(tmp_path: Path) -> None:
    agent = build_agent(make_env(tmp_path).config)
    market = Market(TZ, 15)
    isps = market.isps(DAY)
    start, _ = market.bounds(DAY)
    noon = isps[48].start  # 12:00 local: the agent stops measuring here
    prognosis = _prognosis(start - timedelta(hours=12), 10_000)
    request = trades.RequestRow(
        message_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()),
        dso_domain=DSO,
        congestion_point=CP,
        period=DAY,
        revision=1,
        expires_at=start,
        received_at=start - timedelta(hours=6),
        isps=[[1, 36, 0, 0, 2_000], [37, 4, 1, -8_000, -3_000], [41, 56, 0, 0, 2_000]],
        status="accepted",
        reason=None,
        offer_state="todo",
    )
    order = order_row(
        DAY,
        [[37, 4, -4_000]],
        baseline_message_id=prognosis.message_id,
        received_at=start - timedelta(hours=5),
    )

    def write(conn):  # type: ignore[no-untyped-def]
        trades.insert_prognosis(conn, prognosis)
        trades.apply(conn, Event.PROGNOSIS_ACCEPTED, prognosis.message_id)
        trades.insert_request(conn, request)
        trades.apply(conn, Event.REQUEST_OFFERED, request.message_id)
        trades.insert_order(conn, order)
        # The last batch the site wrote ended at 12:10: ISP 49 holds ten minutes of energy.
        store.record_alive(conn, start, noon + timedelta(minutes=10))
        store.add_isp_energy(
            conn, [("CP-01", int(i.start.timestamp()), CP, 2_500.0) for i in isps[:40]]
        )
        store.add_isp_energy(conn, [("CP-01", int(noon.timestamp()), CP, 1_700.0)])

    await agent.db.start()
    try:
        await agent.db.transaction(write)
        after = start + timedelta(days=1, hours=1)
        chart = await day_chart(agent, CP, DAY, after)
        during = await day_chart(agent, CP, DAY, isps[20].start + timedelta(minutes=5))
    finally:
        await agent.db.stop()

    # Energy where recorded (12:00-12:15 by what its meters reported), 0 while the agent ran
    # without any, nothing for the skipped afternoon and night.
    assert chart.measured_w[:40] == [10_000.0] * 40
    assert chart.measured_w[40:48] == [0.0] * 8
    assert chart.measured_w[48] == 6_800.0
    assert chart.measured_w[49:] == [None] * 47
    # The ISP running now by its average so far (here: its recorded energy over the five
    # minutes it has run); never for what is still to come.
    assert during.measured_w[:20] == [10_000.0] * 20
    assert during.measured_w[20] == 30_000.0
    assert during.measured_w[21:] == [None] * 75
    # The DSO asked for at most prognosis + MaxPower; the order caps the site at its target.
    assert chart.dso_limit_w[:36] == [12_000.0] * 36
    assert chart.dso_limit_w[36:40] == [7_000.0] * 4
    assert chart.site_cap_w[36:40] == [6_000.0] * 4
    assert chart.site_cap_w[0] == 150_000.0
    assert chart.time_zone == TZ

    svg = etree.fromstring(chart_svg(chart, None).encode())
    classes = {e.get("class") for e in svg.iter()}
    assert {"series-DSO-limit", "series-site-cap", "series-measured"} <= classes
    titles = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "axis-title"]
    assert titles == ["power (kW)", f"time of day, {TZ} (market time)"]
    (measured,) = svg.findall(f".//{SVG}path[@class='series-measured']")
    assert measured.get("d", "").count("M") + measured.get("d", "").count("L") == 49
