"""Forecasts run in a worker process; the agent's own process never loads numba.

- A whole agent in a process of its own (the real store, the simulated DSO on loopback) sends
  its day-ahead D-prognosis, computes calibration, scenarios, the allocation of the EVs that
  take no profile and an intraday forecast: numba is not in that process's `sys.modules`.
- The forecasts the worker returns equal those computed in this process.
- A worker that is killed or exits is one logged error; the prognosis loop carries on, the
  last revision stays in effect, and the next round with a sound worker sends a new one.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from agent.site.forecasting import Bands, SiteForecaster, WorkerPause, migrate
from agent.site.model import ActiveSession
from agent.storage import trades
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from forecaster.rounds import day_ahead, profile_forecast
from ocpp_bridge.events import SessionInfo
from tests.support.agent_env import CP, TZ, connection, make_env, running_agent, seed_history
from tests.support.uftp import eventually
from uftp import store as uftp_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "worker-test-token-0123456789"
KILLED = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
EXITS = [sys.executable, "-c", "import sys; sys.exit('LLVM ERROR: out of memory')"]

AGENT_WITHOUT_NUMBA = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.storage import trades
from agent.site.model import ActiveSession
from ocpp_bridge.events import SessionInfo
from tests.support.agent_env import CP, connection, make_env, running_agent, seed_history


async def main(tmp: Path) -> None:
    env = make_env(tmp)
    now = datetime.now(UTC)
    seed_history(env.config, now.date(), days=28)
    async with running_agent(env) as (agent, _dso):
        today = agent.prognosis.market.today(now)
        conn = connection(env.config)
        deadline = asyncio.get_running_loop().time() + 240
        while trades.latest_prognosis(conn, CP, today) is None:
            assert asyncio.get_running_loop().time() < deadline, "no day-ahead prognosis"
            await asyncio.sleep(0.1)
        conn.close()
        epoch = int(now.timestamp())
        origin = datetime.fromtimestamp(epoch - epoch % 900, UTC)
        targets = [origin + timedelta(minutes=15 * k) for k in range(1, 9)]
        plugged = ActiveSession(
            SessionInfo("CP-01/1", "CP-01", 1, "1", None, origin - timedelta(hours=1),
                        energy_wh=5_000.0, requested_energy_wh=30_000.0),
            CP,
            power_w=11_000.0,
        )
        await agent.forecaster.uncontrolled_load(origin, 8, [plugged], now=now)
        await agent.forecaster.scenarios(CP, origin, 8, [plugged], now=now)
        await agent.forecaster.forecast([CP], targets, origin=origin, sessions=[plugged])
    print("numba loaded:", "numba" in sys.modules)


asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_running_agent_never_loads_numba(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", AGENT_WITHOUT_NUMBA, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "numba loaded: False"


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def bands_of(p10: object, p50: object, p90: object, days: int) -> Bands:
    return Bands(
        [float(v) for v in p10],  # type: ignore[attr-defined]
        [float(v) for v in p50],  # type: ignore[attr-defined]
        [float(v) for v in p90],  # type: ignore[attr-defined]
        days,
    )


async def test_forecasts_through_the_worker_equal_those_computed_here(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    config = env.config
    zone = ZoneInfo(TZ)
    today = date(2024, 5, 15)
    seed_history(config, today, days=40)
    db = Database(
        config.storage.database_path, SCHEMA, extra_migrations=[uftp_store.migrate, migrate]
    )
    await db.start()
    try:
        now = datetime.combine(today, time(10, 7), zone).astimezone(UTC)
        forecaster = SiteForecaster(config, db, Clock(now))
        until = datetime.combine(today, time(10), zone).astimezone(UTC)
        tomorrow = datetime.combine(today + timedelta(days=1), time(0), zone).astimezone(UTC)
        day = [tomorrow + timedelta(minutes=15 * k) for k in range(96)]

        # Day-ahead: the structure chosen and its bands.
        history = await forecaster.history([CP], until)
        here = day_ahead([CP], history, forecaster.calendar, until, day, {}, 56)
        there = await forecaster.forecast([CP], day)
        assert there == {CP: Bands(*here.bands[CP])}
        stored = (await forecaster.structures())[CP]
        assert (stored.selection, stored.reason) == here.chosen[CP]
        assert max(there[CP].p50) > 0

        # Intraday with a plugged-in EV and the calibration from the finished sessions.
        origin = until
        targets = [origin + timedelta(minutes=15 * k) for k in range(40)]
        plugged = ActiveSession(
            SessionInfo(
                "CP-01/x",
                "CP-01",
                1,
                "x",
                None,
                origin - timedelta(hours=1),
                energy_wh=6_000.0,
                requested_energy_wh=25_000.0,
                departure_time=origin + timedelta(hours=5),
            ),
            CP,
            power_w=11_000.0,
        )
        calibration = await forecaster.calibration()
        assert calibration.samples is not None
        result = profile_forecast(
            await forecaster.history([CP], origin),
            origin,
            targets,
            forecaster.calendar,
            forecaster._known([CP], [plugged]),
            calibration.samples,
            forecaster.settings,
        )
        assert not isinstance(result, list)
        expected = bands_of(
            result.p10[0], result.p50[0], result.p90[0], int(result.days_pooled[0].max())
        )
        got = await forecaster.forecast([CP], targets, origin=origin, sessions=[plugged])
        assert got[CP] == expected
        assert max(expected.p50) > 0
    finally:
        await db.stop()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (KILLED, r"was killed by SIGKILL"),
        (EXITS, r"exited with status 1 \(LLVM ERROR: out of memory\)"),
    ],
    ids=["killed", "exits"],
)
async def test_a_failed_worker_is_logged_and_the_last_prognosis_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, argv: list[str], said: str
) -> None:
    env = make_env(tmp_path, http={"token": TOKEN})
    now = datetime.now(UTC)
    seed_history(env.config, now.date(), days=28)
    caplog.set_level(logging.INFO, logger="agent")
    conn = connection(env.config)
    try:
        async with running_agent(env) as (agent, _dso):
            today = agent.prognosis.market.today(now)

            def latest() -> trades.PrognosisRow | None:
                return trades.latest_prognosis(conn, CP, today)

            await eventually(lambda: latest() is not None, 240, "the first D-prognosis")
            first = latest()
            assert first is not None

            ticks = [0.0]
            agent.forecaster.worker_pause = WorkerPause(monotonic=lambda: ticks[0])
            agent.forecaster.worker_argv = argv
            agent.prognosis.request(CP, today, "resend")
            await eventually(
                lambda: any(
                    "the last forecast stays in use" in r.getMessage() for r in caplog.records
                ),
                60,
                "the worker failure logged",
            )
            failure = next(r for r in caplog.records if "stays in use" in r.getMessage())
            assert failure.levelno == logging.ERROR
            assert failure.name == SiteForecaster.__module__
            assert "\n" not in failure.getMessage()
            assert re.search(r"^forecast worker \(pid \d+\) " + said, failure.getMessage())
            assert failure.getMessage().endswith("next worker in 60 s at the earliest")
            # Nothing new was sent: the last revision stays in effect, and the loop runs on.
            now_row = latest()
            assert now_row is not None
            assert (now_row.revision, now_row.power_w) == (first.revision, first.power_w)
            loop = agent.prognosis._loop_task
            assert loop is not None
            assert loop.running
            assert loop.failed_total == 0  # a worker failure is no failure of the loop
            # An operator's resend is answered with the reason, and sends nothing either.
            http = env.config.http
            async with (
                aiohttp.ClientSession() as client,
                client.post(
                    f"http://{http.host}:{http.port}/api/prognosis/resend",
                    json={},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response,
            ):
                assert response.status == 503
                # No second worker is started at once: the failed one paused them for 60 s.
                assert (
                    "no forecast, nothing sent: forecast worker paused for another 60 s "
                    "after 1 failure(s) in a row"
                ) in await response.text()
            now_row = latest()
            assert now_row is not None
            assert now_row.revision == first.revision

            agent.forecaster.worker_argv = None
            ticks[0] += 60.0
            agent.prognosis.request(CP, today, "resend")
            await eventually(
                lambda: (row := latest()) is not None and row.revision > first.revision,
                240,
                "a new revision once the worker is sound again",
            )
    finally:
        conn.close()
