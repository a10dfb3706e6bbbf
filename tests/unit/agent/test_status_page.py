"""The status page's HTML: well-formed, the live state in it, nothing from a charger as markup."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lxml import html as lxml_html

from agent.app import build_agent
from agent.interfaces.status import DayChart, LiveStatus, TradeSnapshot
from agent.interfaces.web.page import render_status_page
from ocpp_bridge import BootInfo, ChargerConnected, MeterSample, ProtocolVersion
from tests.support.agent_env import CP, make_env

HOSTILE = "<script>alert(1)</script>"


def test_page_shows_chargers_and_chart_and_escapes_what_chargers_send(tmp_path: Path) -> None:
    agent = build_agent(make_env(tmp_path).config)
    now = datetime(2026, 6, 1, 10, 7, tzinfo=UTC)
    boot = BootInfo(HOSTILE, "M<1>", None, None, ProtocolVersion.OCPP201)
    agent.site.apply(ChargerConnected("CP-01", now, boot))
    agent.site.apply(MeterSample("CP-01", 1, now, None, power_w=7_400.0))
    status = LiveStatus(agent)
    starts = [datetime(2026, 5, 31, 22, tzinfo=UTC) + timedelta(minutes=15 * k) for k in range(96)]
    chart = DayChart(
        CP,
        date(2026, 6, 1),
        starts,
        prognosis_w=[5_000.0] * 96,
        baseline_w=[5_000.0] * 96,
        measured_w=[4_000.0] * 48 + [None] * 48,
        ordered_w=[None] * 50 + [-2_000.0] * 4 + [None] * 42,
        revision=3,
    )
    page = render_status_page(
        info=status.info(),
        site=status.site(now),
        chargers=status.chargers(),
        trade=TradeSnapshot(date(2026, 6, 1), 49),
        charts=[chart],
        problems=["ocpp: OCPP listener is not serving"],
        now=now,
    )
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tree = lxml_html.fromstring(page)
    assert tree.findall(".//script") == []
    rows = {
        row.findall("td")[0].text_content(): [td.text_content() for td in row.findall("td")]
        for row in tree.xpath("//h2[starts-with(., 'Chargers')]/following-sibling::table[1]//tr")
        if row.findall("td")
    }
    assert rows["CP-01"][1] == "unknown"  # online, but no EVSE status reported yet
    assert rows["CP-01"][2] == "7.4 kW"
    assert rows["CP-02"][1] == "unknown"
    assert "unhealthy: ocpp: OCPP listener is not serving" in tree.text_content()
    assert f"{CP} on 2026-06-01, revision 3" in tree.text_content()
    assert len(tree.xpath("//*[local-name()='rect'][@class='series-ordered']")) == 4


def test_one_unit_on_the_page_and_the_previous_day_in_reach(tmp_path: Path) -> None:
    agent = build_agent(make_env(tmp_path).config)
    now = datetime(2026, 6, 2, 0, 20, tzinfo=UTC)
    status = LiveStatus(agent)
    trade = TradeSnapshot(date(2026, 6, 2), 9)
    isps = [{"start": 37, "duration": 4, "power_w": -30_600}]
    trade.offers = [
        {
            "message_id": "0123456789",
            "congestion_point": CP,
            "period": "2026-06-02",
            "status": "sent",
            "expires_at": None,
            "currency": "EUR",
            "options": [{"reference": "A", "isps": isps, "price": "12.5"}],
        }
    ]
    trade.orders = [
        {
            "order_reference": "ORD-1",
            "congestion_point": CP,
            "period": "2026-06-02",
            "isps": isps,
            "price": "12.5",
            "currency": "EUR",
            "received_at": None,
        }
    ]
    page = render_status_page(
        info=status.info(),
        site=status.site(now),
        chargers=status.chargers(),
        trade=trade,
        charts=[],
        problems=[],
        now=now,
        period=date(2026, 6, 1),
    )
    tree = lxml_html.fromstring(page)
    text = tree.text_content()
    assert "ISP 37+4 -30.6 kW" in text
    assert "37+4: -30.6 kW" in text
    assert "-30600" not in text
    assert " W," not in text
    links = {a.text_content(): a.get("href") for a in tree.iter("a")}
    assert links["← 2026-05-31"] == "/?period=2026-05-31"
    assert links["2026-06-02 →"] == "/?period=2026-06-02"
    assert links["today"] == "/"
    assert "2026-06-01 per ISP" in text
