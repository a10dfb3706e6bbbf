"""What sites send up, recorded once each with its effect, and the operator view of it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import psycopg
import pytest

from agent.fleet import protocol
from tests.integration.central.conftest import CP_A, SITES, Fleet, eventually
from tests.support.ports import free_port
from uftp.models import utc_now

pytestmark = pytest.mark.integration


def heartbeat(site: str, n: int, power_w: float = 1500.0) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        id=f"{site}-hb-{n}",
        site=site,
        sent_at=utc_now(),
        chargers_connected=2,
        power_w=power_w,
        safe_limit_w=11_000,
    )


def outcomes(fleet: Fleet) -> list[str | None]:
    return [d.outcome for d in fleet.bus.delivered]


async def scalar(dsn: str, sql: str, *args: object) -> object:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(sql, args)).fetchone()
        return None if row is None else row[0]


async def test_a_redelivered_message_is_recorded_once_and_acked_again(fleet: Fleet) -> None:
    await fleet.start_aggregator()
    message = heartbeat("site-a1", 1)
    await fleet.bus.send_up(message)
    await fleet.bus.send_up(message)  # the site's publisher retried: same id
    await eventually(lambda: outcomes(fleet) == ["ack", "ack"], what="both acked")
    assert await scalar(fleet.dsn, "SELECT count(*) FROM site_inbox") == 1
    assert fleet.aggregators[0].upstream.recorded == 1
    assert fleet.aggregators[0].upstream.duplicates == 1


async def test_messages_that_can_never_be_handled_are_terminated(fleet: Fleet) -> None:
    await fleet.start_aggregator()
    now = utc_now()
    # A site publishing under another site's subject (its permissions forbid it; the centre
    # checks anyway), a site not in the portfolio, a kind that does not match, garbage.
    forged = heartbeat("site-a2", 1)
    await fleet.bus.publish(
        protocol.up_subject("site-a1", "heartbeat"), forged.id, protocol.encode(forged)
    )
    stranger = heartbeat("site-zz", 1)
    await fleet.bus.send_up(stranger)
    await fleet.bus.publish(
        protocol.up_subject("site-a1", "forecast"), "x1", protocol.encode(heartbeat("site-a1", 2))
    )
    await fleet.bus.publish(protocol.up_subject("site-a1", "heartbeat"), "x2", b"{not json")
    await eventually(lambda: outcomes(fleet) == ["term"] * 4, what="all four terminated")
    assert await scalar(fleet.dsn, "SELECT count(*) FROM site_inbox") == 0
    assert now  # the portfolio is unchanged
    assert await scalar(fleet.dsn, "SELECT count(*) FROM site") == len(SITES)


async def test_the_operator_view_shows_liveness_forecast_age_and_commands(fleet: Fleet) -> None:
    http_port = free_port()
    await fleet.start_aggregator(port=fleet.agr_port, http_port=http_port)  # type: ignore[attr-defined]
    now = utc_now()
    await fleet.bus.send_up(heartbeat("site-a1", 1))
    await fleet.bus.send_up(
        protocol.Forecast(
            id="a1-fc-1",
            site="site-a1",
            sent_at=now,
            start=now.replace(minute=0, second=0, microsecond=0),
            congestion_point=CP_A,
            made_at=now - timedelta(minutes=5),
            p10_w=[1.0] * 4,
            p50_w=[2.0] * 4,
            p90_w=[3.0] * 4,
        )
    )
    await eventually(lambda: outcomes(fleet) == ["ack", "ack"], what="recorded")
    url = f"http://127.0.0.1:{http_port}/api/fleet"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        view = await response.json()
    assert view["sites_total"] == 3
    assert view["sites_online"] == 1
    by_site = {s["site"]: s for s in view["sites"]}
    assert by_site["site-a1"]["online"] is True
    assert by_site["site-a1"]["power_w"] == 1500.0
    assert 300 <= by_site["site-a1"]["forecast_age_s"] < 400
    assert by_site["site-a2"]["online"] is False
    assert by_site["site-a2"]["forecast_age_s"] is None
    assert by_site["site-b1"]["commands_pending"] == 0


async def test_an_ack_is_recorded_on_its_command(fleet: Fleet) -> None:
    from tests.integration.central.test_trading_round_trip import library_request
    from tests.support import uftp as build

    await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    await fleet.push_flex(["site-a1", "site-a2"])
    await eventually(lambda: outcomes(fleet) == ["ack", "ack"], what="envelopes")
    await asyncio.to_thread(
        fleet.dso.client(build.AGR).send_flex_request, library_request(fleet.tomorrow())
    )
    commands = await eventually(lambda: len(fleet.bus.commands()) == 2 and fleet.bus.commands())
    command = next(c for c in commands if c.site == "site-a1")
    ack = protocol.Ack(
        id=f"ack:{command.id}",
        site="site-a1",
        sent_at=utc_now(),
        order_id=command.order_id,
        seq=command.seq,
        outcome="applied",
        applied_at=utc_now(),
    )
    await fleet.bus.send_up(ack)
    await fleet.bus.send_up(ack)
    await eventually(lambda: outcomes(fleet).count("ack") == 4, what="acks recorded")
    rows = await scalar(
        fleet.dsn,
        "SELECT array_agg(site || '=' || coalesce(ack_outcome, '-') ORDER BY site) FROM command",
    )
    assert rows == ["site-a1=applied", "site-a2=-"]
