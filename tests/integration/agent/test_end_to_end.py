"""The whole agent against shapeshifter-uftp as the DSO and simulated stations of both OCPP
versions, on simulated time: prognosis, request, offer, order, the revision that includes it,
and the site held under the ordered cap. Run on an ordinary day and on the autumn DST day
(100 ISPs)."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from nacl.signing import SigningKey
from shapeshifter_uftp import FlexOrder as LibFlexOrder
from shapeshifter_uftp import FlexOrderISP as LibFlexOrderISP
from shapeshifter_uftp import FlexRequest as LibFlexRequest
from shapeshifter_uftp import FlexRequestISP as LibFlexRequestISP
from shapeshifter_uftp.uftp.enums import AvailableRequested as LibAvailableRequested
from xsdata.models.datatype import XmlDate

from agent.app import build_agent
from agent.demo.defaults import seed_history
from agent.demo.simulation import (
    DEFAULT_PASSWORD,
    SessionGenerator,
    SimulatedSite,
    charger_config,
    default_fleet,
)
from agent.runtime.clock import ScaledClock
from agent.runtime.config import Config
from agent.storage import trades
from agent.trading.market import Market
from tests.support.agent_env import connection
from tests.support.ports import free_port
from tests.support.shapeshifter_peer import ShapeshifterDso
from uftp import calendar, keys

pytestmark = pytest.mark.integration

AGR = "agr.flexbridge-e2e.org"
DSO = "dso.flexbridge-e2e.org"
CP = "ean.871685900012636543"
TZ = "Europe/Amsterdam"
SPEED = 480.0
ZONE = ZoneInfo(TZ)


def config_for(tmp_path: Path, fleet: list[Any], dso_key: SigningKey, dso_port: int) -> Config:
    state = tmp_path / "state"
    state.mkdir()
    key_file = state / "agr.key"
    keys.write_signing_key(key_file, keys.generate_signing_key())
    return Config.model_validate(
        {
            "site": {
                "id": "e2e",
                "timezone": TZ,
                "connection_capacity_w": 100_000,
                "safe_limit_w": 60_000,
            },
            "ocpp": {
                "host": "127.0.0.1",
                "port": free_port(),
                "chargers": charger_config(fleet, DEFAULT_PASSWORD),
            },
            "uftp": {
                "domain": AGR,
                "signing_key_file": str(key_file),
                "host": "127.0.0.1",
                "port": free_port(),
                "market_timezone": TZ,
                "peers": [
                    {
                        "domain": DSO,
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": f"http://127.0.0.1:{dso_port}/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [{"entity_address": CP, "dso_domain": DSO}],
            "storage": {"state_directory": str(state)},
            "trading": {"offer_lead_time_min": 15, "offer_validity_min": 120},
            # The status page on its own free port: never the default 8080 another run may hold.
            "http": {"host": "127.0.0.1", "port": free_port()},
        }
    )


@pytest.mark.parametrize(
    ("day", "isps", "occupancy"),
    # European DST changes fall on Sundays, the garage's quiet days: more drivers there.
    [(date(2026, 10, 28), 96, 3.0), (date(2026, 10, 25), 100, 8.0)],
    ids=["ordinary-day", "dst-fall-back"],
)
async def test_a_day_with_shapeshifter_as_the_dso(
    tmp_path: Path, day: date, isps: int, occupancy: float
) -> None:
    fleet = default_fleet(6, prefix="E2E-", meter_interval_s=120.0)
    dso_key = SigningKey.generate()
    dso_port = free_port()
    config = config_for(tmp_path, fleet, dso_key, dso_port)
    generator = SessionGenerator(fleet, TZ, seed=3, occupancy=occupancy)
    seed_history(config, generator, day, congestion_point=CP)
    agr_key = keys.load_signing_key(config.uftp.signing_key_file)
    dso = ShapeshifterDso(
        DSO,
        dso_key,
        port=dso_port,
        peer_keys={(AGR, "AGR"): keys.public_key_b64(agr_key)},
        peer_endpoints={
            (AGR, "AGR"): f"http://127.0.0.1:{config.uftp.port}/shapeshifter/api/v3/message"
        },
    )
    clock = ScaledClock(datetime.combine(day, time(6, 0), ZONE), SPEED)
    agent = build_agent(config, clock)
    agent.dispatcher.control_s = 300.0
    agent.trader.housekeeping_s = 900.0
    market = Market(TZ, 15)
    started: list[Any] = []
    await asyncio.to_thread(dso.run_in_thread)
    site = SimulatedSite(
        f"ws://127.0.0.1:{config.ocpp.port}/ocpp", fleet, clock, password=DEFAULT_PASSWORD
    )
    player: asyncio.Task[None] | None = None
    try:
        for component in agent.components:
            await component.start()
            started.append(component)
        await site.start()
        await asyncio.wait_for(site.wait_ready(), 60)
        player = asyncio.create_task(site.play(generator.plan(day)))

        prognosis = await asyncio.to_thread(
            dso.wait_for, "DPrognosis", 60, lambda m: m.period.to_date() == day
        )
        assert sum(i.duration or 1 for i in prognosis.isps) == isps
        forecast = calendar.expand_runs((i.start, i.duration or 1, i.power) for i in prognosis.isps)

        # Congestion at the prognosis' peak hour between 08:00 and 12:00 (on the 100-ISP
        # day every local time after 03:00 has an index four higher).
        _, morning = market.locate(datetime.combine(day, time(8, 0), ZONE))
        _, afternoon = market.locate(datetime.combine(day, time(12, 0), ZONE))
        first = max(
            range(morning, afternoon - 3),
            key=lambda i: sum(forecast.get(k, 0) for k in range(i, i + 4)),
        )
        requested = range(first, first + 4)
        request = LibFlexRequest(
            isp_duration="PT15M",
            time_zone=TZ,
            period=XmlDate.from_date(day),
            congestion_point=CP,
            revision=1,
            expiration_date_time=(clock.now() + timedelta(hours=2)).isoformat(),
            isps=[
                LibFlexRequestISP(
                    disposition=LibAvailableRequested.AVAILABLE,
                    min_power=0,
                    max_power=60_000,
                    start=1,
                    duration=first - 1,
                ),
                LibFlexRequestISP(
                    disposition=LibAvailableRequested.REQUESTED,
                    min_power=-40_000,
                    max_power=-1_000,
                    start=first,
                    duration=4,
                ),
                LibFlexRequestISP(
                    disposition=LibAvailableRequested.AVAILABLE,
                    min_power=0,
                    max_power=60_000,
                    start=first + 4,
                    duration=isps - first - 3,
                ),
            ],
        )
        await asyncio.to_thread(dso.client(AGR).send_flex_request, request)
        response = await asyncio.to_thread(dso.wait_for, "FlexRequestResponse", 30)
        assert str(response.result) in ("Accepted", "AcceptedRejected.ACCEPTED"), response

        try:
            offer = await asyncio.to_thread(dso.wait_for, "FlexOffer", 60)
        except AssertionError:
            conn = connection(config)
            row = trades.find_request(conn, request.message_id)
            conn.close()
            raise AssertionError(
                f"no offer: {row and row.offer_state} {row and row.reason}; forecast "
                f"{[forecast.get(i) for i in requested]}"
            ) from None
        option = offer.offer_options[0]
        assert [(i.start, i.duration) for i in option.isps] == [(first, 4)]
        assert -40_000 <= option.isps[0].power <= -1_000
        assert offer.flex_request_message_id == request.message_id

        order = LibFlexOrder(
            conversation_id=offer.conversation_id,
            flex_offer_message_id=offer.message_id,
            isp_duration=offer.isp_duration,
            time_zone=offer.time_zone,
            period=offer.period,
            congestion_point=offer.congestion_point,
            isps=[
                LibFlexOrderISP(power=i.power, start=i.start, duration=i.duration)
                for i in option.isps
            ],
            price=option.price,
            currency=offer.currency,
            order_reference="ORD-E2E",
            option_reference=option.option_reference,
        )
        await asyncio.to_thread(dso.client(AGR).send_flex_order, order)
        answer = await asyncio.to_thread(dso.wait_for, "FlexOrderResponse", 30)
        assert "ccept" in str(answer.result), answer.rejection_reason
        revision = await asyncio.to_thread(
            dso.wait_for,
            "DPrognosis",
            60,
            lambda m: m.period.to_date() == day and m.revision >= 2,
        )
        revised = calendar.expand_runs((i.start, i.duration or 1, i.power) for i in revision.isps)
        assert sum(i.duration or 1 for i in revision.isps) == isps

        # In the ordered hour the site stays under the cap, measured on the stations.
        await clock.sleep_until(market.start_of(day, first) + timedelta(minutes=20))
        conn = connection(config)
        try:
            (ours,) = trades.accepted_orders(conn, period=day)
            baseline = trades.prognosis_by_message(conn, ours.baseline_message_id or "")
        finally:
            conn.close()
        assert baseline is not None
        cap = baseline.power_w[first] + option.isps[0].power
        samples = []
        for _ in range(10):
            samples.append(site.power_w())
            await clock.sleep(60)
        assert max(samples) <= max(cap, 0) * 1.05 + 500, (samples, cap)
        # The revision carries the order: ordered ISPs at most the target.
        for index in requested:
            target = baseline.power_w[index - 1] + option.isps[0].power
            assert revised[index] <= max(0, target) + 1
    finally:
        if player is not None:
            player.cancel()
        await site.stop()
        for component in reversed(started):
            await component.stop()
        await asyncio.to_thread(dso.stop)
