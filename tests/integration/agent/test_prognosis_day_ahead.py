"""One first revision per day, however many parts of the agent ask for the day's prognosis at
once (the prognosis loop's day-ahead, offers that need the day's baseline)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.storage import trades
from tests.support.agent_env import CP, connection, make_env, running_agent, seed_history

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_concurrent_askers_get_one_first_revision(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    now = datetime.now(UTC)
    seed_history(env.config, now.date(), days=28)
    async with running_agent(env) as (agent, _dso):
        assert agent.prognosis is not None
        # Two days ahead: the prognosis loop itself never sends that day.
        later = agent.prognosis.market.today(now) + timedelta(days=2)
        rows = await asyncio.gather(*(agent.prognosis.ensure(CP, later) for _ in range(5)))
        assert {(r.revision, r.message_id) for r in rows} == {(1, rows[0].message_id)}
        conn = connection(env.config)
        try:
            assert trades.highest_revision(conn, CP, later) == 1
        finally:
            conn.close()
