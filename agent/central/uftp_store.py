"""uftp's inbox and outbox on the aggregator's PostgreSQL database.

The same records and rules as `uftp.store` (whose dataclasses these functions return), on
tables shared by every aggregator process: the unique (sender_domain, message_id) key decides
between a new message, "Already Submitted" and "Duplicate Identifier" even when two processes
receive the same POST at once; a pending message is claimed with `FOR UPDATE SKIP LOCKED`, so
two processes never handle one message; `reply_to` is unique, so a message is answered once.

Functions take the caller's connection and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from agent.central.db import Connection
from uftp.models import Role
from uftp.store import (
    INBOX_COLUMNS,
    OUTBOX_COLUMNS,
    Admission,
    Admitted,
    InboundMessage,
    InboundRecord,
    InboundStatus,
    OutboundMessage,
    PreparedOutbound,
    admission_of_repeat,
    admission_status,
    inbound_from_row,
    inbox_values,
    outbound_from_row,
    outbox_values,
)


def _moment(value: datetime) -> datetime:
    return value  # TIMESTAMPTZ arrives as an aware datetime


def _inbound(row: Sequence[Any]) -> InboundMessage:
    return inbound_from_row(row, _moment)


def _outbound(row: Sequence[Any]) -> OutboundMessage:
    return outbound_from_row(row, _moment)


async def admit_inbound(
    conn: Connection,
    record: InboundRecord,
    now: datetime,
    *,
    rejection_reason: str | None = None,
    processed: bool = False,
    replies: Sequence[PreparedOutbound] = (),
) -> Admitted:
    """Store a verified message unless its MessageID was seen from this sender before (see
    `uftp.store.admit_inbound`); `replies` are queued only for a new message."""
    status = admission_status(rejection_reason, processed)
    processed_at = None if status is InboundStatus.PENDING else now
    cursor = await conn.execute(
        "INSERT INTO uftp_inbox (sender_domain, sender_role, message_id, conversation_id, "
        "message_type, reference_id, content_sha256, sealed, received_at, status, "
        "rejection_reason, processed_at, next_attempt_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (sender_domain, message_id) DO NOTHING RETURNING id",
        (*inbox_values(record), now, str(status), rejection_reason, processed_at, now),
    )
    row = await cursor.fetchone()
    if row is None:
        cursor = await conn.execute(
            "SELECT content_sha256 FROM uftp_inbox WHERE sender_domain = %s AND message_id = %s",
            (record.sender_domain, record.message_id),
        )
        existing = await cursor.fetchone()
        repeat = admission_of_repeat(None if existing is None else existing[0], record)
        return Admitted(repeat, None)
    inbox_id = int(row[0])
    for reply in replies:
        await enqueue_outbound(conn, reply, now, reply_to=inbox_id)
    return Admitted(Admission.NEW, inbox_id)


async def claim_pending(conn: Connection, now: datetime) -> InboundMessage | None:
    """The oldest pending message that is due and that no other transaction holds, locked
    until the caller's transaction ends."""
    cursor = await conn.execute(
        f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE status = 'pending' "
        "AND next_attempt_at <= %s ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        (now,),
    )
    row = await cursor.fetchone()
    return None if row is None else _inbound(row)


async def next_inbound_attempt(conn: Connection) -> datetime | None:
    cursor = await conn.execute(
        "SELECT min(next_attempt_at) FROM uftp_inbox WHERE status = 'pending'"
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def inbound_status(conn: Connection, inbox_id: int) -> InboundStatus | None:
    cursor = await conn.execute("SELECT status FROM uftp_inbox WHERE id = %s", (inbox_id,))
    row = await cursor.fetchone()
    return None if row is None else InboundStatus(row[0])


async def mark_processed(
    conn: Connection, inbox_id: int, now: datetime, *, rejection_reason: str | None = None
) -> None:
    await conn.execute(
        "UPDATE uftp_inbox SET status = 'processed', processed_at = %s, rejection_reason = %s "
        "WHERE id = %s AND status = 'pending'",
        (now, rejection_reason, inbox_id),
    )


async def record_inbound_failure(
    conn: Connection, inbox_id: int, error: str, retry_at: datetime
) -> int:
    cursor = await conn.execute(
        "UPDATE uftp_inbox SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s "
        "WHERE id = %s AND status = 'pending' RETURNING attempts",
        (error, retry_at, inbox_id),
    )
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def inbound_messages(
    conn: Connection, *, message_type: str, reference_id: str | None = None
) -> list[InboundMessage]:
    if reference_id is None:
        cursor = await conn.execute(
            f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE message_type = %s ORDER BY id",
            (message_type,),
        )
    else:
        cursor = await conn.execute(
            f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE message_type = %s "
            "AND reference_id = %s ORDER BY id",
            (message_type, reference_id),
        )
    return [_inbound(r) for r in await cursor.fetchall()]


async def enqueue_outbound(
    conn: Connection, prepared: PreparedOutbound, now: datetime, *, reply_to: int | None = None
) -> int:
    """Queue a signed message (due now); a second answer to one inbox row violates the unique
    `reply_to` and raises, so a retried handling can never queue two responses."""
    cursor = await conn.execute(
        "INSERT INTO uftp_outbox (message_id, conversation_id, message_type, reference_id, "
        "recipient_domain, recipient_role, reply_to, result, xml, body, created_at, status, "
        "next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s) "
        "RETURNING id",
        (*outbox_values(prepared, reply_to), now, now),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def find_outbound(conn: Connection, message_id: str) -> OutboundMessage | None:
    cursor = await conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE message_id = %s", (message_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else _outbound(row)


async def outbound_messages(
    conn: Connection, *, message_type: str, reference_id: str | None = None
) -> list[OutboundMessage]:
    if reference_id is None:
        cursor = await conn.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE message_type = %s ORDER BY id",
            (message_type,),
        )
    else:
        cursor = await conn.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE message_type = %s "
            "AND reference_id = %s ORDER BY id",
            (message_type, reference_id),
        )
    return [_outbound(r) for r in await cursor.fetchall()]


async def pending_recipients(conn: Connection) -> list[tuple[str, Role]]:
    cursor = await conn.execute(
        "SELECT DISTINCT recipient_domain, recipient_role FROM uftp_outbox "
        "WHERE status = 'pending' ORDER BY 1, 2"
    )
    return [(str(r[0]), Role(r[1])) for r in await cursor.fetchall()]


async def outbox_head(conn: Connection, domain: str, role: Role) -> OutboundMessage | None:
    """The oldest pending message to one recipient (FIFO per peer). The caller holds the
    recipient's advisory lock, so no other process sends to that peer meanwhile."""
    cursor = await conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE status = 'pending' "
        "AND recipient_domain = %s AND recipient_role = %s ORDER BY id LIMIT 1",
        (domain, str(role)),
    )
    row = await cursor.fetchone()
    return None if row is None else _outbound(row)


async def record_delivered(conn: Connection, outbox_id: int, now: datetime) -> None:
    await conn.execute(
        "UPDATE uftp_outbox SET status = 'sent', sent_at = %s, attempts = attempts + 1, "
        "last_error = NULL WHERE id = %s AND status = 'pending'",
        (now, outbox_id),
    )


async def record_attempt_failed(
    conn: Connection, outbox_id: int, error: str, *, retry_at: datetime | None
) -> None:
    if retry_at is None:
        await conn.execute(
            "UPDATE uftp_outbox SET status = 'failed', attempts = attempts + 1, last_error = %s "
            "WHERE id = %s AND status = 'pending'",
            (error, outbox_id),
        )
    else:
        await conn.execute(
            "UPDATE uftp_outbox SET attempts = attempts + 1, last_error = %s, "
            "next_attempt_at = %s WHERE id = %s AND status = 'pending'",
            (error, retry_at, outbox_id),
        )
