"""The operator's HTTP endpoint over real HTTP: the JSON API, /metrics, /health, and the bearer
token in front of everything that changes state."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.storage import trades
from tests.support.agent_env import CHARGERS, CP, connection
from tests.support.trade_history import MEASURED_W, ORDERED_W, TOKEN, trading_agent
from uftp.dso import Received
from uftp.models import DPrognosis, FlexOfferRevocation

pytestmark = pytest.mark.integration

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def get_json(session: aiohttp.ClientSession, url: str, status: int = 200) -> object:
    async with session.get(url) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def test_json_api_shows_site_chargers_trade_delivery_and_chart(tmp_path: Path) -> None:
    async with trading_agent(tmp_path) as t, aiohttp.ClientSession() as http:
        status = await get_json(http, f"{t.url}/api/status")
        assert isinstance(status, dict)
        assert status["info"]["schema"] == 1
        assert status["health"] == []
        assert status["site"]["id"] == "test"
        assert status["site"]["chargers_total"] == len(CHARGERS)
        assert [c["id"] for c in status["chargers"]] == CHARGERS
        assert status["fleet"] is None  # a stand-alone site: no link to a centre
        trade = status["trade"]
        assert trade["current_isp"] == t.current_isp
        (prognosis,) = trade["prognoses"]
        assert prognosis["congestion_point"] == CP
        assert prognosis["revision"] >= 1
        assert [o["message_id"] for o in trade["offers"]] == [t.offer.message_id]
        assert "ORD-TODAY" in [o["order_reference"] for o in trade["orders"]]
        (delivery,) = [d for d in trade["delivery"] if d["order_reference"] == "ORD-TODAY"]
        finished = [i for i in delivery["isps"] if i["complete"] and i["isp"] < t.current_isp]
        assert finished, "the order starts four ISPs before now"
        for isp in finished:
            assert isp["measured_w"] == MEASURED_W
            assert isp["ordered_w"] == ORDERED_W
            assert isp["target_w"] == max(0, isp["baseline_w"] + ORDERED_W)
            assert isp["delivered"] == (isp["target_w"] >= MEASURED_W)

        chart = await get_json(http, f"{t.url}/api/chart")
        assert isinstance(chart, dict)
        isps = chart["isps"]
        assert all(i["prognosis_w"] is not None for i in isps)
        past = [i for i in isps if i["isp"] < t.current_isp]
        assert [i["measured_w"] for i in past] == [MEASURED_W] * len(past)
        # The running ISP: its average so far (no charger draws here); later ones: nothing.
        assert [i["measured_w"] for i in isps if i["isp"] == t.current_isp] == [0.0]
        assert all(i["measured_w"] is None for i in isps if i["isp"] > t.current_isp)
        ordered = {i["isp"] for i in isps if i["ordered_w"] == ORDERED_W}
        first = t.order.isps[0][0]
        assert ordered == set(range(first, first + 8)) & {i["isp"] for i in isps}

        charger = await get_json(http, f"{t.url}/api/chargers/CP-01")
        assert isinstance(charger, dict)
        assert charger["online"] is False
        assert charger["status"] == "unknown"
        # Never connected: no word from the charger about any limit.
        assert charger["limit_source"] is None
        assert charger["limit_w"] is None
        assert charger["controllable"] is None
        await get_json(http, f"{t.url}/api/chargers/NOPE", 404)
        error = await get_json(http, f"{t.url}/api/chart?period=31-12-2026", 400)
        assert error == {"error": "period '31-12-2026' is not a date YYYY-MM-DD"}
        await get_json(http, f"{t.url}/api/chart?congestion_point=ean.1", 404)
        assert await get_json(http, f"{t.url}/health") == {"status": "ok", "problems": []}
        async with http.get(f"{t.url}/chart.svg") as response:
            assert response.content_type == "image/svg+xml"
            svg = await response.text()
            assert 'class="series-prognosis"' in svg
            assert 'class="series-site-cap"' in svg
        # The order caps the site at its target: the chart's site cap says so.
        capped = [i for i in isps if i["isp"] in ordered]
        assert all(i["site_cap_w"] < 150_000 for i in capped)
        # Yesterday's chart stays reachable from the page after midnight.
        yesterday = (date.fromisoformat(chart["period"]) - timedelta(days=1)).isoformat()
        async with http.get(f"{t.url}/?period={yesterday}") as response:
            assert response.status == 200
            assert f"{yesterday} per ISP" in await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_in_prometheus_text_format(tmp_path: Path) -> None:
    async with trading_agent(tmp_path) as t, aiohttp.ClientSession() as http:
        await t.agent.dispatcher.round_now()
        conn = connection(t.env.config)
        try:
            baseline = trades.prognosis_by_message(conn, t.order.baseline_message_id or "")
        finally:
            conn.close()
        assert baseline is not None
        # The order runs now: the cap is its baseline plus the ordered change.
        cap_now = max(0, baseline.power_w[t.current_isp - 1] + ORDERED_W)
        async with http.get(f"{t.url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            values = samples(await response.text())

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("flexbridge_build_info", site="test", version=__import__("agent").__version__)
    assert value("flexbridge_chargers", state="offline") == len(CHARGERS)
    assert value("flexbridge_chargers", state="online") == 0
    assert value("flexbridge_site_capacity_watts") == 150_000
    assert value("flexbridge_store_records", table="flex_order", status="accepted") == 1
    assert value("flexbridge_store_records", table="flex_offer", status="accepted") == 1
    assert value("flexbridge_uftp_inbox_messages", message_type="FlexRequest", status="processed")
    assert value("flexbridge_uftp_outbox_messages", message_type="FlexOffer", status="sent") == 1
    assert value("flexbridge_uftp_inbound_handling_seconds_count", message_type="FlexRequest")
    assert value("flexbridge_store_transaction_seconds_count", kind="transaction") >= 3
    assert value("flexbridge_store_transaction_seconds_count", kind="read") >= 3
    assert value("flexbridge_dispatch_round_seconds_count") >= 1
    assert value("flexbridge_dispatch_rounds_total") >= 1
    assert value("flexbridge_dispatch_cap_watts") == cap_now
    # No charger is online here, so nothing was read back, but the series exist for alerting.
    for result in ("ok", "excess", "unavailable"):
        assert values[("flexbridge_dispatch_readbacks_total", (("result", result),))] == 0
    assert value("flexbridge_store_database_bytes") > 0
    assert value("flexbridge_uftp_outbox_oldest_pending_seconds") >= 0
    assert value("process_resident_memory_bytes") > 0


async def test_state_changes_need_the_bearer_token(tmp_path: Path) -> None:
    async with trading_agent(tmp_path, token=TOKEN) as t, aiohttp.ClientSession() as http:
        offer_id = t.offer.message_id
        posts = ["/api/dispatch", "/api/prognosis/resend", f"/api/offers/{offer_id}/revoke"]
        for path in posts:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.post(f"{t.url}{path}", headers=headers) as response:
                    assert response.status == 401, (path, headers)
                    assert response.headers["WWW-Authenticate"] == 'Bearer realm="flexbridge"'
            async with http.get(f"{t.url}{path}") as response:
                assert response.status == 405

        rounds = t.agent.dispatcher.rounds
        async with http.post(f"{t.url}/api/dispatch", headers=BEARER) as response:
            assert response.status == 200
            body = await response.json()
        assert body["round"] > rounds
        last = t.agent.dispatcher.last_round
        assert last is not None
        assert body["at"] == last.at.isoformat()
        assert body["cap_w"] == last.cap_w[0]

        async with http.post(
            f"{t.url}/api/prognosis/resend", headers=BEARER, json={"congestion_point": CP}
        ) as response:
            assert response.status == 200, await response.text()
            resent = await response.json()
        outcome = await t.dso.wait_handled(
            lambda o: (
                isinstance(o, Received)
                and isinstance(o.message, DPrognosis)
                and o.message.revision == resent["revision"]
            ),
            30,
        )
        assert isinstance(outcome, Received)
        assert outcome.accepted
        async with http.post(
            f"{t.url}/api/prognosis/resend", headers=BEARER, json={"period": "2020-01-01"}
        ) as response:
            assert response.status == 400

        async with http.post(f"{t.url}/api/offers/{offer_id}/revoke", headers=BEARER) as response:
            assert response.status == 200, await response.text()
        revocation = await t.dso.wait_handled(
            lambda o: isinstance(o, Received) and isinstance(o.message, FlexOfferRevocation), 30
        )
        assert isinstance(revocation, Received)
        assert isinstance(revocation.message, FlexOfferRevocation)
        assert revocation.message.flex_offer_message_id == offer_id
        conn = connection(t.env.config)
        try:
            offer = trades.find_offer(conn, offer_id)
        finally:
            conn.close()
        assert offer is not None
        assert offer.status == "revoked"
        assert offer.reason == "revoked by the operator"
        async with http.post(f"{t.url}/api/offers/{offer_id}/revoke", headers=BEARER) as response:
            assert response.status == 409
        async with http.post(f"{t.url}/api/offers/unknown/revoke", headers=BEARER) as response:
            assert response.status == 404


async def test_without_a_token_state_changes_are_disabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.interfaces.web")
    async with trading_agent(tmp_path) as t, aiohttp.ClientSession() as http:
        rounds = t.agent.dispatcher.rounds
        for path in ["/api/dispatch", "/api/prognosis/resend", "/api/offers/x/revoke"]:
            async with http.post(f"{t.url}{path}", headers=BEARER) as response:
                assert response.status == 403
                assert "configure http.token" in (await response.json())["error"]
        # An allowed POST answers once its work is done (a round finished, a prognosis
        # queued) and says so: refused ones did nothing, apart from the dispatcher's timer.
        assert t.agent.dispatcher.rounds <= rounds + 1
        assert not [r for r in caplog.records if "request of the operator" in r.getMessage()]
