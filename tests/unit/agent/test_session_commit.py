"""Meter energy waits for the periodic flush; the start and end of a session do not."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.app import build_agent
from agent.storage import store
from ocpp_bridge import SessionEnded, SessionInfo, SessionStarted
from tests.support.agent_env import make_env
from tests.support.uftp import eventually

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def info(ended: datetime | None = None) -> SessionInfo:
    return SessionInfo(
        session_id="CP-01/77",
        charger_id="CP-01",
        evse_id=1,
        transaction_id="77",
        id_token="04A1B2C3",
        started_at=T0,
        ended_at=ended,
        energy_wh=None if ended is None else 5_000.0,
        stop_reason=None if ended is None else "EVDisconnected",
    )


async def test_a_session_start_and_end_are_in_the_store_before_the_next_flush(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path, storage={"flush_interval_s": 900})
    agent = build_agent(env.config)
    await agent.db.start()
    await agent.site.start()
    try:

        async def stored() -> store.SessionRow | None:
            rows = await agent.db.read(
                lambda c: (
                    store.finished_sessions(c, T0, T0.replace(hour=23)) + store.open_sessions(c)
                )
            )
            return next((r for r in rows if r.session_id == "CP-01/77"), None)

        await agent.site.handle(SessionStarted(info(), T0))

        async def written() -> bool:
            return await stored() is not None

        await eventually(written, 10, "the session row")
        row = await stored()
        assert row is not None
        assert row.ended_at is None

        ended = T0.replace(hour=11)
        await agent.site.handle(SessionEnded(info(ended), ended))

        async def closed() -> bool:
            row = await stored()
            return row is not None and row.ended_at is not None

        await eventually(closed, 10, "the session's end written")
        row = await stored()
        assert row is not None
        assert row.ended_at == ended
    finally:
        await agent.site.stop()
        await agent.db.stop()
