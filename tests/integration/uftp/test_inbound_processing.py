"""Pending inbound messages: handled once, in arrival order, still there after a restart; a
handler that fails leaves the message pending and it is tried again with back-off: the sender
never gets a rejection for our own fault, let alone the text of an exception."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.ports import free_port
from uftp import models, store
from uftp.database import connect, run_in_transaction
from uftp.models import Role
from uftp.participant import AgrParticipant
from uftp.settings import InboundRetry

pytestmark = pytest.mark.integration
XML = {"Content-Type": "text/xml; charset=utf-8"}


def agr(
    tmp_path: Path, key: SigningKey, dso_key: SigningKey, peer_port: int, handler: object = None
) -> AgrParticipant:
    settings = build.settings(
        build.AGR, Role.AGR, key, 0, [build.peer(build.DSO, Role.DSO, dso_key, peer_port)]
    )
    return AgrParticipant(settings, tmp_path / "agr.sqlite", handler=handler)  # type: ignore[arg-type]


async def post(url: str, body: bytes) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=XML) as response:
        return response.status


async def test_stored_messages_survive_a_restart_and_are_handled_once(tmp_path: Path) -> None:
    key, dso_key, peer_port = SigningKey.generate(), SigningKey.generate(), free_port()
    peer = build.RecordingPeer(peer_port)
    await peer.start()
    first = agr(tmp_path, key, dso_key, peer_port)  # no handler: the application is down
    await first.start()
    requests = []
    for revision in (1, 2, 3):
        now = first.now()
        request = build.flex_request(now, time_stamp=now, revision=revision)
        requests.append(request)
        assert (
            await post(first.url, build.signed_body(request, dso_key, build.DSO, Role.DSO)) == 200
        )
    await first.stop()

    handled: list[int] = []
    second = agr(tmp_path, key, dso_key, peer_port)

    def handle(conn: sqlite3.Connection, inbound: store.InboundMessage) -> None:
        message = inbound.message()
        assert isinstance(message, models.FlexRequest)
        handled.append(message.revision)
        second.respond(conn, inbound, request=message)

    await second.start()
    try:
        assert [m.message_id for m in await second.pending()] == [r.message_id for r in requests]
        assert await second.process_pending(handle) == 3
        assert await second.process_pending(handle) == 0
        assert handled == [1, 2, 3]
        await build.eventually(lambda: len(peer.bodies) == 3)
        answers = peer.messages(key)
        assert [a.flex_request_message_id for a in answers] == [r.message_id for r in requests]  # type: ignore[attr-defined]
    finally:
        await second.stop()
        await peer.stop()


def agr_retrying(
    tmp_path: Path, key: SigningKey, dso_key: SigningKey, peer_port: int, handler: object
) -> AgrParticipant:
    settings = build.settings(
        build.AGR,
        Role.AGR,
        key,
        0,
        [build.peer(build.DSO, Role.DSO, dso_key, peer_port)],
        inbound_retry=InboundRetry(first_delay_s=0.05, max_delay_s=0.2, alarm_after=3),
    )
    return AgrParticipant(settings, tmp_path / "agr.sqlite", handler=handler)  # type: ignore[arg-type]


async def test_a_transient_failure_is_retried_and_the_sender_sees_no_exception(
    tmp_path: Path,
) -> None:
    key, dso_key, peer_port = SigningKey.generate(), SigningKey.generate(), free_port()
    peer = build.RecordingPeer(peer_port)
    await peer.start()
    calls: list[int] = []
    participant: AgrParticipant

    def locked_twice(conn: sqlite3.Connection, inbound: store.InboundMessage) -> None:
        calls.append(inbound.attempts)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        participant.respond(conn, inbound)

    participant = agr_retrying(tmp_path, key, dso_key, peer_port, locked_twice)
    await participant.start()
    try:
        now = participant.now()
        request = build.flex_request(now, time_stamp=now)
        body = build.signed_body(request, dso_key, build.DSO, Role.DSO)
        assert await post(participant.url, body) == 200
        await build.eventually(lambda: len(peer.bodies) == 1, what="the answer")
        (answer,) = peer.messages(key)
        assert isinstance(answer, models.FlexRequestResponse)
        assert answer.accepted, answer.rejection_reason
        assert calls == [0, 1, 2]
        (row,) = await participant.database.read(store.inbound_messages)
        assert row.status is store.InboundStatus.PROCESSED
        assert row.attempts == 2
        assert "database is locked" in (row.last_error or "")  # ours to read, not the DSO's
        assert b"locked" not in b"".join(peer.bodies)
    finally:
        await participant.stop()
        await peer.stop()


async def test_a_persistent_failure_stays_pending_unanswered_and_raises_the_alarm(
    tmp_path: Path,
) -> None:
    key, dso_key, peer_port = SigningKey.generate(), SigningKey.generate(), free_port()
    peer = build.RecordingPeer(peer_port)
    await peer.start()

    def broken(conn: sqlite3.Connection, inbound: store.InboundMessage) -> None:
        raise RuntimeError("forecast unavailable")

    participant = agr_retrying(tmp_path, key, dso_key, peer_port, broken)
    await participant.start()
    try:
        now = participant.now()
        request = build.flex_request(now, time_stamp=now)
        body = build.signed_body(request, dso_key, build.DSO, Role.DSO)
        assert await post(participant.url, body) == 200

        async def stuck() -> bool:
            return await participant.stuck() == 1

        await build.eventually(stuck, what="the message counted as stuck")
        (row,) = await participant.database.read(store.inbound_messages)
        assert row.status is store.InboundStatus.PENDING
        assert row.attempts >= 3
        assert peer.bodies == []  # no rejection: the message was not wrong, we were
    finally:
        await participant.stop()
        await peer.stop()


def test_retry_delays_double_up_to_the_cap() -> None:
    policy = InboundRetry(first_delay_s=1.0, max_delay_s=300.0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 9, 10, 1000)] == [1, 2, 4, 256, 300, 300]


async def test_the_agent_pattern_one_transaction_on_its_own_connection(tmp_path: Path) -> None:
    """What agent.trading.trader does: business change + answer + processed, committed together."""
    key, dso_key, peer_port = SigningKey.generate(), SigningKey.generate(), free_port()
    peer = build.RecordingPeer(peer_port)
    await peer.start()
    participant = agr(tmp_path, key, dso_key, peer_port)
    await participant.start()
    try:
        now = participant.now()
        request = build.flex_request(now, time_stamp=now)
        assert (
            await post(participant.url, build.signed_body(request, dso_key, build.DSO, Role.DSO))
            == 200
        )
        agent_conn = connect(tmp_path / "agr.sqlite")
        agent_conn.execute("CREATE TABLE agent_requests (message_id TEXT PRIMARY KEY)")

        def crash_midway(conn: sqlite3.Connection) -> None:
            (inbound,) = store.pending_inbound(conn)
            conn.execute("INSERT INTO agent_requests VALUES (?)", (inbound.message_id,))
            participant.respond(conn, inbound)
            raise RuntimeError("power cut")  # nothing of the three may remain

        with pytest.raises(RuntimeError):
            run_in_transaction(agent_conn, crash_midway)
        assert len(store.pending_inbound(agent_conn)) == 1
        assert store.outbound_messages(agent_conn) == []

        def complete(conn: sqlite3.Connection) -> None:
            (inbound,) = store.pending_inbound(conn)
            conn.execute("INSERT INTO agent_requests VALUES (?)", (inbound.message_id,))
            participant.respond(conn, inbound)

        run_in_transaction(agent_conn, complete)
        participant.wake_outbox()
        await build.eventually(lambda: len(peer.bodies) == 1)
        assert store.pending_inbound(agent_conn) == []
        assert agent_conn.execute("SELECT COUNT(*) FROM agent_requests").fetchone()[0] == 1
        # A second answer to the same message is refused by the database itself.
        (processed,) = store.inbound_messages(agent_conn)
        with pytest.raises(sqlite3.IntegrityError):
            run_in_transaction(
                agent_conn,
                lambda c: participant.enqueue(
                    c,
                    models.FlexRequestResponse(
                        sender_domain=build.AGR,
                        recipient_domain=build.DSO,
                        result="Accepted",
                        flex_request_message_id=request.message_id,
                    ),
                    reply_to=processed,
                ),
            )
    finally:
        await participant.stop()
        await peer.stop()
