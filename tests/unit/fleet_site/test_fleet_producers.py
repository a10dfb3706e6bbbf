"""What a fleet site publishes: heartbeat, metering and flexibility from the live site model
and its store, each committed to the outbox (with what records it sent) before publishing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from agent.demo.defaults import demo_config
from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.link import SiteLink
from agent.fleet.producers import METERING_SETTLE_S, FleetProducers, metering_series
from agent.runtime.config import Config, FleetConfig
from agent.site.forecasting import Bands, SiteForecaster
from agent.site.model import Site
from agent.storage import store
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from ocpp_bridge import (
    BootInfo,
    ChargerConnected,
    MeterSample,
    ProtocolVersion,
    SessionInfo,
    SessionStarted,
)
from tests.support.fleet_memory_bus import MemoryBus

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
ISP = timedelta(minutes=15)
CP = "ean.871685900012636543"
SITE = "demo"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(3600)  # nothing runs by itself; tests call the producers


def fleet_config(state: Path) -> Config:
    config = demo_config(state)
    return config.model_copy(
        update={
            "uftp_section": None,
            "fleet": FleetConfig(
                servers=["nats://127.0.0.1:4222"], password=SecretStr("test-password-1")
            ),
        }
    )


@dataclass
class Env:
    config: Config
    db: Database
    site: Site
    clock: FixedClock
    bus: MemoryBus
    producers: FleetProducers

    async def outbox(
        self,
    ) -> list[
        protocol.Forecast | protocol.Flex | protocol.Metering | protocol.Ack | protocol.Heartbeat
    ]:
        rows = await self.db.read(fleet_store.outbox)
        return [protocol.decode_upstream(r.payload) for r in rows]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = fleet_config(tmp_path / "state")
    db = Database(tmp_path / "site.sqlite", SCHEMA)
    await db.start()
    clock = FixedClock(T0)
    site = Site(config, db, clock)
    bus = MemoryBus()
    link = SiteLink(db, bus, SITE, clock, lambda: None)
    producers = FleetProducers(config, db, site, SiteForecaster(config, db, clock), link, clock)
    yield Env(config, db, site, clock, bus, producers)
    await db.stop()


def boot(cid: str) -> ChargerConnected:
    return ChargerConnected(cid, T0, BootInfo("Lab", "Sim", "SN1", "1.0", ProtocolVersion.OCPP16))


def meter(cid: str, at: datetime, wh: float, w: float) -> MeterSample:
    return MeterSample(cid, 1, at, f"{cid}/1", w, energy_wh=wh)


@given(
    energy=st.dictionaries(st.integers(0, 7), st.floats(0, 1e5, allow_nan=False)),
    ran=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=3),
)
def test_metering_is_measured_zero_or_unknown_never_guessed(
    energy: dict[int, float], ran: list[tuple[int, int]]
) -> None:
    start = T0
    by_epoch = {int((start + k * ISP).timestamp()): wh for k, wh in energy.items()}
    measured = [(start + a * ISP, start + b * ISP) for a, b in ran]
    series = metering_series(start, 8, by_epoch, measured)
    for k, value in enumerate(series):
        if k in energy:
            assert value == energy[k]
        elif any(a <= k and k + 1 <= b for a, b in ran):
            assert value == 0.0
        else:
            assert value is None


async def test_heartbeat_says_chargers_power_and_safe_limit(env: Env) -> None:
    env.site.apply(boot("DEMO-001"))
    env.site.apply(meter("DEMO-001", T0, 1_000, 7_000))
    sent = await env.producers.heartbeat_once()
    assert (sent.chargers_connected, sent.power_w) == (1, 7_000)
    assert sent.safe_limit_w == env.config.site.effective_safe_limit_w
    assert await env.outbox() == [sent]


async def test_metering_sends_each_finished_isp_once_with_unknown_where_not_measured(
    env: Env,
) -> None:
    site = env.site  # running since T0: what came before is unknown
    site.apply(boot("DEMO-001"))
    site.apply(meter("DEMO-001", T0, 10_000, 4_000))
    site.apply(meter("DEMO-001", T0 + ISP, 11_000, 4_000))
    site.apply(meter("DEMO-001", T0 + 2 * ISP, 11_000, 0))
    key = "fleet.metering.next." + CP
    await env.db.transaction(lambda c: store.set_meta(c, key, str(int((T0 - 2 * ISP).timestamp()))))
    env.clock.moment = T0 + 2 * ISP + timedelta(seconds=METERING_SETTLE_S + 1)
    [first] = await env.producers.metering_once()
    assert first.start == T0 - 2 * ISP
    assert first.energy_wh == [None, None, pytest.approx(1_000.0), 0.0]
    assert await env.producers.metering_once() == []  # nothing new finished
    env.clock.moment = T0 + 3 * ISP + timedelta(seconds=METERING_SETTLE_S + 1)
    [later] = await env.producers.metering_once()
    assert (later.start, later.energy_wh) == (T0 + 2 * ISP, [0.0])
    assert [m.id for m in await env.outbox()] == [first.id, later.id]
    mark = await env.db.read(lambda c: store.get_meta(c, key))
    assert mark == str(int((T0 + 3 * ISP).timestamp()))


async def test_the_first_metering_is_the_isp_just_finished(env: Env) -> None:
    site = env.site
    site.apply(boot("DEMO-001"))
    site.apply(meter("DEMO-001", T0, 10_000, 4_000))
    site.apply(meter("DEMO-001", T0 + ISP, 11_000, 4_000))
    env.clock.moment = T0 + 3 * ISP + timedelta(seconds=METERING_SETTLE_S + 1)
    [sent] = await env.producers.metering_once()
    assert (sent.start, sent.energy_wh) == (T0 + 2 * ISP, [0.0])


async def test_flex_envelope_holds_what_the_evs_need_and_what_they_could_take(env: Env) -> None:
    site = env.site
    site.apply(boot("DEMO-001"))
    info = SessionInfo(
        session_id="DEMO-001/1",
        charger_id="DEMO-001",
        evse_id=1,
        transaction_id="1",
        id_token="04A1B2C3",
        started_at=T0,
        requested_energy_wh=20_000,
        departure_time=T0 + timedelta(hours=2),
    )
    site.apply(SessionStarted(info, T0))
    messages = await env.producers.flex_once()
    [flex] = messages
    assert (flex.start, flex.congestion_point, len(flex.min_w)) == (T0, CP, 96)
    assert all(lo <= hi for lo, hi in zip(flex.min_w, flex.max_w, strict=True))
    charger_max = env.config.ocpp.chargers[0].max_power_w
    assert max(flex.max_w) == pytest.approx(charger_max)
    # 20 kWh in two hours of an 11 kW charger: little slack, so some ISPs must deliver.
    assert sum(flex.min_w) * 0.25 > 5_000
    # Nothing plugged in after its departure can take power.
    assert flex.max_w[-1] == 0.0
    assert await env.outbox() == messages


async def test_an_empty_site_offers_no_flexibility(env: Env) -> None:
    [flex] = await env.producers.flex_once()
    assert set(flex.min_w) == set(flex.max_w) == set(flex.baseline_w) == {0.0}


class StubForecaster(SiteForecaster):
    """The site forecaster with its worker replaced: bands that say which call made them."""

    calls: list[tuple[list[str], list[datetime], datetime | None]]

    async def forecast(  # type: ignore[override]
        self,
        congestion_points: list[str],
        targets: list[datetime],
        *,
        origin: datetime | None = None,
        sessions: object = (),
        select_structure: bool = True,
    ) -> dict[str, Bands]:
        self.calls.append((list(congestion_points), list(targets), origin))
        n = len(targets)
        return {cp: Bands([100.0] * n, [200.0] * n, [300.0] * n, 14) for cp in congestion_points}


async def test_forecasts_day_ahead_for_today_at_once_tomorrow_at_its_time_intraday_between(
    env: Env,
) -> None:
    stub = StubForecaster(env.config, env.db, env.clock)
    stub.calls = []
    env.producers.forecaster = stub
    market = env.producers.market
    today = market.today(T0)
    # At start (10:00 local, past the 08:00 day-ahead time): today has none, so the rest of
    # today goes out at once, and tomorrow's whole day, recorded with it.
    delay = await env.producers._forecast_step()
    (cps, targets, origin), (_, next_day, no_origin) = stub.calls
    assert (cps, origin, no_origin, targets[0]) == ([CP], None, None, T0)
    assert targets[-1] == market.isps(today)[-1].start
    assert next_day == [i.start for i in market.isps(today + timedelta(days=1))]
    sent = [m for m in await env.outbox() if isinstance(m, protocol.Forecast)]
    assert [m.start for m in sent] == [T0, next_day[0]]
    assert (sent[0].p10_w[0], sent[0].p50_w[0], sent[0].p90_w[0]) == (100.0, 200.0, 300.0)
    mark = await env.db.read(lambda c: store.get_meta(c, "fleet.forecast.day_ahead." + CP))
    assert mark == (today + timedelta(days=1)).isoformat()
    fleet = env.config.fleet
    assert fleet is not None
    assert delay == pytest.approx(fleet.intraday_interval_min * 60)
    # Then an intraday forecast each interval: from the current ISP, with the sessions.
    env.clock.moment = T0 + timedelta(minutes=61)
    await env.producers._forecast_step()
    assert len(stub.calls) == 3
    assert stub.calls[-1][2] == T0 + timedelta(hours=1)
    assert stub.calls[-1][1][0] == T0 + timedelta(hours=1, minutes=15)
    # Nothing else is due: no second day-ahead (a restart reads the mark), no intraday yet.
    env.clock.moment = T0 + timedelta(minutes=62)
    await env.producers._forecast_step()
    assert len(stub.calls) == 3
