"""uftp's tables: migrations, de-duplication, pending order, one answer per message, FIFO
outbox heads, and the group commit that makes a 200 durable."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tests.support import uftp as build
from uftp import codec, sealing, store
from uftp.database import Database, connect, run_in_transaction
from uftp.models import Role

NOW = build.NOW
KEY = SigningKey.generate()


def record() -> store.InboundRecord:
    request = build.flex_request()
    xml = codec.to_xml(request)
    return store.InboundRecord(
        sender_domain=build.DSO,
        sender_role=Role.DSO,
        message_id=request.message_id,
        conversation_id=request.conversation_id,
        message_type="FlexRequest",
        reference_id=None,
        sealed=sealing.sign(xml, KEY),
    )


def prepared(
    message_id: str, recipient: str = build.DSO, result: str | None = None
) -> store.PreparedOutbound:
    return store.PreparedOutbound(
        message_id=message_id,
        conversation_id=message_id,
        message_type="TestMessage",
        reference_id=None,
        recipient_domain=recipient,
        recipient_role=Role.DSO,
        result=result,
        xml=b"<TestMessage/>",
        body=b"<SignedMessage/>",
    )


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    connection = connect(tmp_path / "state.sqlite")
    run_in_transaction(connection, store.migrate)
    return connection


def test_migration_is_versioned_and_idempotent(conn: sqlite3.Connection) -> None:
    assert store.schema_version(conn) == len(store.MIGRATIONS)
    assert run_in_transaction(conn, store.migrate) == len(store.MIGRATIONS)
    conn.execute("UPDATE uftp_schema_version SET version = 99")
    with pytest.raises(store.StoreError, match="99"):
        store.migrate(conn)


def test_migrations_leave_other_tables_alone(tmp_path: Path) -> None:
    connection = connect(tmp_path / "shared.sqlite")
    connection.execute("CREATE TABLE agent_orders (id INTEGER PRIMARY KEY)")
    run_in_transaction(connection, store.migrate)
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "agent_orders" in tables
    assert {t for t in tables if t.startswith("uftp_")} == {
        "uftp_inbox",
        "uftp_outbox",
        "uftp_schema_version",
    }


def test_functions_do_not_commit(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    store.admit_inbound(conn, record(), NOW)
    store.enqueue_outbound(conn, prepared("a"), NOW)
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert store.pending_inbound(conn) == []
    assert store.outbox_heads(conn) == []


def test_duplicates_already_submitted_and_duplicate_identifier(conn: sqlite3.Connection) -> None:
    first = record()
    assert store.admit_inbound(conn, first, NOW).admission is store.Admission.NEW
    again = store.admit_inbound(conn, first, NOW)
    assert again == store.Admitted(store.Admission.ALREADY_SUBMITTED, None)
    changed = sealing.sign(codec.to_xml(build.flex_request(revision=2)), KEY)
    other_content = dataclasses.replace(first, sealed=changed)
    assert (
        store.admit_inbound(conn, other_content, NOW).admission
        is store.Admission.DUPLICATE_IDENTIFIER
    )
    assert len(store.inbound_messages(conn)) == 1


def test_pending_in_arrival_order_until_processed(conn: sqlite3.Connection) -> None:
    ids = [store.admit_inbound(conn, record(), NOW).inbox_id for _ in range(3)]
    assert [m.id for m in store.pending_inbound(conn)] == ids
    pending = store.pending_inbound(conn)[0]
    assert pending.message().message_id == pending.message_id
    assert ids[0] is not None
    store.mark_processed(conn, ids[0], NOW)
    assert [m.id for m in store.pending_inbound(conn)] == ids[1:]
    with pytest.raises(store.StoreError, match="not pending"):
        store.mark_processed(conn, ids[0], NOW)


def test_rejected_and_auto_answered_messages_are_never_pending(conn: sqlite3.Connection) -> None:
    store.admit_inbound(
        conn, record(), NOW, rejection_reason="ISP conflict", replies=[prepared("r1")]
    )
    store.admit_inbound(conn, record(), NOW, processed=True, replies=[prepared("r2")])
    assert store.pending_inbound(conn) == []
    statuses = [m.status for m in store.inbound_messages(conn)]
    assert statuses == [store.InboundStatus.REJECTED, store.InboundStatus.PROCESSED]
    assert [m.reply_to for m in store.outbound_messages(conn)] == [1, 2]


def test_an_inbound_message_gets_one_answer(conn: sqlite3.Connection) -> None:
    inbox_id = store.admit_inbound(conn, record(), NOW).inbox_id
    store.enqueue_outbound(conn, prepared("answer-1"), NOW, reply_to=inbox_id)
    with pytest.raises(sqlite3.IntegrityError):
        store.enqueue_outbound(conn, prepared("answer-2"), NOW, reply_to=inbox_id)


def test_outbox_is_fifo_per_peer(conn: sqlite3.Connection) -> None:
    for message_id, peer in (
        ("a1", "a.example.com"),
        ("b1", "b.example.com"),
        ("a2", "a.example.com"),
    ):
        store.enqueue_outbound(conn, prepared(message_id, peer), NOW)
    heads = store.outbox_heads(conn)
    assert [h.message_id for h in heads] == ["a1", "b1"]
    store.record_attempt_failed(conn, heads[0].id, "HTTP 503", retry_at=NOW + timedelta(seconds=5))
    retried = store.find_outbound(conn, "a1")
    assert retried is not None
    assert (retried.attempts, retried.last_error, retried.next_attempt_at) == (
        1,
        "HTTP 503",
        NOW + timedelta(seconds=5),
    )
    assert [h.message_id for h in store.outbox_heads(conn)] == ["a1", "b1"]  # a2 waits behind
    store.record_delivered(conn, heads[0].id, NOW)
    assert [h.message_id for h in store.outbox_heads(conn)] == ["b1", "a2"]
    store.record_attempt_failed(conn, heads[1].id, "HTTP 400", retry_at=None)
    failed = store.outbound_messages(conn, status=store.OutboundStatus.FAILED)
    assert [m.message_id for m in failed] == ["b1"]


def test_group_commit_batches_and_isolates_failures(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        database = Database(tmp_path / "group.sqlite")
        await database.open()
        try:

            def insert(i: int) -> object:
                def work(c: sqlite3.Connection) -> int:
                    if i == 3:
                        raise ValueError("this one fails")
                    return store.enqueue_outbound(c, prepared(f"m{i}"), NOW)

                return work

            results = await asyncio.gather(
                *(database.write(insert(i)) for i in range(8)), return_exceptions=True
            )
            stored = await database.read(
                lambda c: [m.message_id for m in store.outbound_messages(c)]
            )
            return [results, stored]
        finally:
            await database.close()

    results, stored = asyncio.run(scenario())
    assert isinstance(results, list)
    assert isinstance(results[3], ValueError)
    assert stored == [f"m{i}" for i in range(8) if i != 3]
    # The file is durable and readable by another connection (the agent's).
    other = connect(tmp_path / "group.sqlite")
    assert len(store.outbound_messages(other)) == 7


def test_connection_settings_for_durability(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
