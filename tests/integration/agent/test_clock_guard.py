"""A wrong wall clock: no trading, no prognoses, no time-bound profiles, until it is sane.

The whole agent runs in this process on an injected clock (real time plus an offset the test
moves), with a simulated station and the simulated DSO on loopback:

- the clock steps back a day while the station holds a dynamic profile: the clock fault is
  raised, the dynamic profile is taken back (the safe one stays), a FlexRequest from the DSO
  is answered 503 and waits; the clock comes back, the fault clears, the station gets its
  dynamic profile again and the DSO's retried request is answered;
- the agent starts with its clock behind the high-water mark an earlier run recorded: no
  D-prognosis leaves until the clock is right again.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from agent.app import Agent
from agent.runtime.clock import HIGH_WATER_KEY
from agent.runtime.faults import CLOCK
from agent.storage import store
from agent.trading.market import Market
from ocpp_bridge.simulator import ProtocolName, ReconnectPolicy, SimulatedStation, StationSpec
from tests.support.agent_env import (
    TZ,
    Env,
    connection,
    make_env,
    request_answered,
    running_agent,
    seed_history,
)
from tests.support.trade_history import flex_request
from tests.support.uftp import eventually
from uftp import calendar
from uftp.dso import DsoParticipant, Received
from uftp.models import DPrognosis, FlexRequestResponse

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "clock-test-password-0123"
TOKEN = "clock-test-token-0123456789"


class ShiftedClock:
    """The real time plus `offset`: what a gateway with a wrong clock reads."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def clock_env(tmp_path: Path) -> Env:
    return make_env(
        tmp_path,
        ocpp={"chargers": [{"id": "CP-01", "max_current_a": 16, "password": PASSWORD}]},
        clock={"max_step_s": 60, "settle_s": 2},
        http={"token": TOKEN},
    )


def fast_intervals(agent: Agent) -> None:
    assert agent.clock_guard is not None
    agent.clock_guard.interval_s = 0.2
    agent.dispatcher.control_s = 2.0


def running(
    env: Env, clock: ShiftedClock
) -> contextlib.AbstractAsyncContextManager[tuple[Agent, DsoParticipant]]:
    return running_agent(env, clock, fast_intervals)


def levels(station: SimulatedStation) -> set[int]:
    return {p.stack_level for p in station.store.profiles}


async def test_a_clock_stepping_back_holds_everything_time_bound_until_it_is_right(
    tmp_path: Path,
) -> None:
    env = clock_env(tmp_path)
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    clock = ShiftedClock()
    async with running(env, clock) as (agent, dso):
        url = f"ws://127.0.0.1:{env.config.ocpp.port}/ocpp"
        fast = ReconnectPolicy(wait_minimum_s=0.5, random_range_s=0.5, repeat_times=2)
        station = SimulatedStation(
            StationSpec("CP-01", protocol=ProtocolName.OCPP201, meter_interval_s=5.0),
            url,
            password=PASSWORD,
            reconnect=fast,
        )
        await station.start()
        try:
            await station.wait_ready()
            leave = datetime.now(UTC) + timedelta(hours=6)
            station.plug_in(1, 15_000, 11_000, leave, "TOKEN1", stated_departure=leave)
            await eventually(lambda: len(levels(station)) >= 2, 30, "a dynamic profile")
            safe = min(levels(station))

            clock.offset = -timedelta(days=1)
            await eventually(lambda: agent.faults.is_active(CLOCK), 10, "the clock fault")
            await eventually(lambda: levels(station) == {safe}, 15, "only the safe profile")
            assert agent.clock_guard is not None
            assert agent.clock_guard.hold() is not None
            # An operator asking for a round now is told why none runs, not kept waiting.
            http = env.config.http
            async with (
                aiohttp.ClientSession() as client,
                client.post(
                    f"http://{http.host}:{http.port}/api/dispatch",
                    json={},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response,
            ):
                assert response.status == 503
                assert (await response.json())["error"].startswith("dispatch is held: the clock")
            # The site model hears of the withdrawal once the charger's answer is back, which
            # may come after the station already dropped the profile.
            await eventually(
                lambda: agent.site.charger("CP-01").limit_w is None, 10, "no dynamic limit shown"
            )

            tomorrow = Market(TZ, 15).today(datetime.now(UTC)) + timedelta(days=1)
            request = flex_request(tomorrow, 40, 44)
            await dso.send(request)  # answered 503 while held; the DSO's outbox retries
            await asyncio.sleep(3.0)
            assert levels(station) == {safe}  # no dispatch round pushed anything meanwhile
            assert not any(
                isinstance(o, Received) and isinstance(o.message, FlexRequestResponse)
                for o in dso.handled
            )
            pending = await agent.db.read(
                lambda c: c.execute(
                    "SELECT COUNT(*) FROM uftp_inbox WHERE message_type = 'FlexRequest'"
                ).fetchone()[0]
            )
            assert pending == 0  # not even stored: validation needs the time

            clock.offset = timedelta(0)
            await eventually(lambda: not agent.faults.is_active(CLOCK), 15, "the fault cleared")
            await eventually(lambda: len(levels(station)) >= 2, 30, "the dynamic profile back")
            answer = await request_answered(dso, request)
            assert answer.accepted, answer.rejection_reason
        finally:
            await station.stop()


async def test_a_clock_behind_the_recorded_time_sends_no_prognosis_until_it_is_right(
    tmp_path: Path,
) -> None:
    env = clock_env(tmp_path)
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    conn = connection(env.config)
    try:
        conn.execute("BEGIN")
        store.set_meta(conn, HIGH_WATER_KEY, datetime.now(UTC).isoformat())
        conn.execute("COMMIT")
    finally:
        conn.close()
    clock = ShiftedClock()
    clock.offset = -timedelta(days=400)  # booted without a hardware clock
    async with running(env, clock) as (agent, dso):
        assert agent.faults.is_active(CLOCK)
        status = agent.web.status.site(clock.now()) if agent.web is not None else None
        assert status is not None
        assert status["faults"]["clock"] is not None
        await asyncio.sleep(5.0)
        assert not any(
            isinstance(o, Received) and isinstance(o.message, DPrognosis) for o in dso.handled
        )
        clock.offset = timedelta(0)  # NTP synchronised
        prognosis = await dso.wait_handled(
            lambda o: isinstance(o, Received) and isinstance(o.message, DPrognosis), 90
        )
        assert isinstance(prognosis, Received)
        assert not agent.faults.is_active(CLOCK)
    conn = connection(env.config)
    try:
        recorded = store.get_meta(conn, HIGH_WATER_KEY)
    finally:
        conn.close()
    assert recorded is not None
    assert datetime.fromisoformat(recorded) > datetime.now(UTC) - timedelta(minutes=1)
