"""What the log says about a D-prognosis is what happened to it: queued when it is written,
then failing (with the next attempt's time) while the DSO is down, then delivered."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.app import build_agent
from tests.support.agent_env import TZ, make_env, seed_history
from tests.support.uftp import eventually
from uftp import calendar

pytestmark = pytest.mark.integration


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def _until(caplog: pytest.LogCaptureFixture, message: str, within_s: float) -> None:
    try:
        await eventually(lambda: _records(caplog, message), within_s, f"a {message!r} log")
    except AssertionError as exc:
        seen = sorted({r.getMessage() for r in caplog.records})
        raise AssertionError(f"{exc}; seen: {seen}") from None


async def test_prognosis_is_logged_queued_then_failing_then_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    env = make_env(tmp_path)
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    agent = build_agent(env.config)
    dso = env.dso()
    started = []
    try:
        # The DSO is not up yet: its port refuses connections.
        for component in agent.components:
            await component.start()
            started.append(component)
        await _until(caplog, "D-Prognosis queued", 60)
        await _until(caplog, "delivery failed, will retry", 30)
        assert not _records(caplog, "D-Prognosis sent")
        queued = _records(caplog, "D-Prognosis queued")[0]
        message_id = queued.__dict__["message_id"]
        failing = [
            r
            for r in _records(caplog, "delivery failed, will retry")
            if r.__dict__["message_id"] == message_id
        ]
        assert failing, "the failed attempt names the prognosis' message id"
        assert failing[0].__dict__["message_type"] == "D-Prognosis"
        retry_at = datetime.fromisoformat(failing[0].__dict__["retry_at"])
        assert retry_at > datetime.fromtimestamp(failing[0].created, UTC)

        await dso.start()
        await _until(caplog, "delivered", 60)
        delivered = [
            r for r in _records(caplog, "delivered") if r.__dict__["message_id"] == message_id
        ]
        assert delivered
        assert delivered[0].__dict__["message_type"] == "D-Prognosis"
    finally:
        for component in reversed(started):
            await component.stop()
        await dso.stop()
