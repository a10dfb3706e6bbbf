"""Faults inside the agent while it handles UFTP messages: the DSO never pays for them.

- A message whose handling hits a transient fault (the database locked) is tried again and
  answered normally; the DSO sees no rejection and no exception text.
- The agent's database is the one writer on its file: uftp's inbox and outbox go through the
  same connection, so heavy writes from both sides at once never meet "database is locked".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from agent.storage import store
from agent.trading.market import Market
from tests.support import uftp as build
from tests.support.agent_env import AGR, DSO, TZ, make_env, running_agent, seed_history
from tests.support.trade_history import flex_request
from uftp import calendar
from uftp import store as uftp_store
from uftp.dso import Received
from uftp.models import FlexRequestResponse, Role, TestMessage

pytestmark = pytest.mark.integration
XML = {"Content-Type": "text/xml; charset=utf-8"}


async def test_a_locked_database_is_retried_and_the_dso_sees_no_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(tmp_path)
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    async with running_agent(env) as (agent, dso):
        original = agent.trader._handle
        failures: list[str] = []

        def locked_twice(conn: sqlite3.Connection, inbound: uftp_store.InboundMessage) -> None:
            if inbound.message_type == "FlexRequest" and len(failures) < 2:
                failures.append(inbound.message_id)
                raise sqlite3.OperationalError("database is locked")
            original(conn, inbound)

        monkeypatch.setattr(agent.trader, "_handle", locked_twice)
        tomorrow = Market(TZ, 15).today(datetime.now(UTC)) + timedelta(days=1)
        request = flex_request(tomorrow, 40, 44)
        await dso.send(request)

        def answered(outcome: object) -> bool:
            return isinstance(outcome, Received) and isinstance(
                outcome.message, FlexRequestResponse
            )

        outcome = await dso.wait_handled(answered, 60)
        assert isinstance(outcome, Received)
        assert isinstance(outcome.message, FlexRequestResponse)
        assert outcome.message.accepted, outcome.message.rejection_reason
        assert failures == [request.message_id, request.message_id]
        received = await dso.database.read(uftp_store.inbound_messages)
        for message in received:
            assert b"locked" not in message.xml
            assert b"Error" not in message.xml
        (row,) = await agent.db.read(
            lambda c: uftp_store.inbound_messages(c, message_type="FlexRequest")
        )
        assert row.status is uftp_store.InboundStatus.PROCESSED
        assert row.attempts == 2


def descriptors_on(path: Path) -> int:
    """Open file descriptors of this process on `path` (one per SQLite connection)."""
    target = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            continue
    return count


async def test_uftp_and_the_agent_write_through_one_connection(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    async with running_agent(env) as (agent, _dso):
        assert descriptors_on(env.config.storage.database_path) == 1
        url = agent.participant.url

        async def post_tests(http: aiohttp.ClientSession, n: int) -> list[int]:
            statuses = []
            for _ in range(n):
                body = build.signed_body(
                    TestMessage(sender_domain=DSO, recipient_domain=AGR),
                    env.dso_key,
                    DSO,
                    Role.DSO,
                )
                async with http.post(url, data=body, headers=XML) as response:
                    statuses.append(response.status)
            return statuses

        async def agent_writes(n: int) -> None:
            for i in range(n):
                await agent.db.transaction(
                    lambda c, i=i: [
                        store.set_meta(c, f"load-{i}-{j}", "x" * 512) for j in range(20)
                    ]
                )

        async with aiohttp.ClientSession() as http:
            results = await asyncio.gather(
                *(post_tests(http, 40) for _ in range(5)),
                agent_writes(150),
                agent_writes(150),
            )
        statuses = [s for batch in results[:5] for s in batch]
        assert statuses == [200] * 200
        count = await agent.db.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM uftp_inbox WHERE message_type = 'TestMessage'"
            ).fetchone()[0]
        )
        assert count == 200
        assert descriptors_on(env.config.storage.database_path) == 1
