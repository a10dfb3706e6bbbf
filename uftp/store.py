"""uftp's tables in a shared SQLite file: inbox, outbox, and their versioned migrations.

Every function takes the caller's `sqlite3.Connection` and never commits. That is the point:
the agent persists its business change, enqueues the signed answer (`enqueue_outbound`) and
marks the inbound message processed (`mark_processed`) in ONE transaction on its own
connection, so across a kill -9 no order is lost or applied twice and no response is queued
twice (a unique index on `reply_to` refuses a second answer to the same inbound message).

Tables are prefixed ``uftp_`` and migrated by `migrate` with their own version table, independent
of the agent's migrations. Times are stored as UTC unix seconds (REAL).

Inbox rows keep the sealed body (signature ‖ XML) as received, for audit and non-repudiation.
Outbox rows keep the exact SignedMessage document, so retries resend identical bytes and the
peer's MessageID de-duplication sees an identical copy ("Already Submitted").
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from uftp.codec import from_xml
from uftp.migrations import Migration, Schema, SchemaTooNew, VersionCounter
from uftp.models import PayloadMessage, Role
from uftp.sealing import SIGNATURE_BYTES

SCHEMA_VERSION_TABLE = "uftp_schema_version"

# Append only: migration i brings the tables from version i - 1 to i.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "inbox and outbox",
        """
    CREATE TABLE uftp_inbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
        sender_domain    TEXT NOT NULL,
        sender_role      TEXT NOT NULL,
        message_id       TEXT NOT NULL,
        conversation_id  TEXT NOT NULL,
        message_type     TEXT NOT NULL,
        reference_id     TEXT,               -- the MessageID this message refers to
        content_sha256   BLOB NOT NULL,      -- of the inner XML, for "Already Submitted"
        sealed           BLOB NOT NULL,      -- signature || inner XML, as received
        received_at      REAL NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'processed', 'rejected')),
        rejection_reason TEXT,
        processed_at     REAL,
        UNIQUE (sender_domain, message_id)
    );
    CREATE INDEX uftp_inbox_pending ON uftp_inbox (id) WHERE status = 'pending';
    CREATE INDEX uftp_inbox_reference ON uftp_inbox (reference_id);
    CREATE INDEX uftp_inbox_type ON uftp_inbox (message_type, status);
    CREATE TABLE uftp_outbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id       TEXT NOT NULL UNIQUE,
        conversation_id  TEXT NOT NULL,
        message_type     TEXT NOT NULL,
        reference_id     TEXT,
        recipient_domain TEXT NOT NULL,
        recipient_role   TEXT NOT NULL,
        reply_to         INTEGER UNIQUE REFERENCES uftp_inbox (id),  -- at most one answer each
        result           TEXT,               -- Accepted/Rejected for responses
        xml              BLOB NOT NULL,      -- the signed inner XML
        body             BLOB NOT NULL,      -- the SignedMessage document we POST
        created_at       REAL NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL,
        last_error       TEXT,
        sent_at          REAL
    );
    CREATE INDEX uftp_outbox_pending ON uftp_outbox (recipient_domain, recipient_role, id)
        WHERE status = 'pending';
    CREATE INDEX uftp_outbox_reference ON uftp_outbox (reference_id);
    CREATE INDEX uftp_outbox_type ON uftp_outbox (message_type, status);
    """,
    ),
    # Processing attempts: a message whose handling failed stays pending and is tried again
    # at next_attempt_at; last_error is for the operator and never leaves this database.
    Migration(
        2,
        "inbox processing attempts",
        """
    ALTER TABLE uftp_inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE uftp_inbox ADD COLUMN next_attempt_at REAL;
    ALTER TABLE uftp_inbox ADD COLUMN last_error TEXT;
    """,
    ),
)


class StoreError(RuntimeError):
    """The database is not usable by this version of uftp."""


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone; UTC-aware datetimes only")
    return moment.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _filters(
    message_type: str | None, reference_id: str | None, status: StrEnum | None
) -> tuple[str, list[str]]:
    clauses, args = [], []
    for column, value in (
        ("message_type", message_type),
        ("reference_id", reference_id),
        ("status", None if status is None else str(status)),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), args


def schema() -> Schema:
    """uftp's tables as data, for an application that migrates the shared file itself; the
    version lives in its own one-row table, apart from the application's."""
    return Schema("uftp", MIGRATIONS, VersionCounter(SCHEMA_VERSION_TABLE))


def schema_version(conn: sqlite3.Connection) -> int:
    return VersionCounter(SCHEMA_VERSION_TABLE).current(conn)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring uftp's tables to the current version (`uftp.migrations.migrate`: each migration
    in its own transaction, or savepoint inside the caller's). Refuses a database written by a
    newer uftp rather than guessing. Returns the version."""
    try:
        return schema()(conn)
    except SchemaTooNew as exc:
        raise StoreError(
            f"the database has uftp schema version {exc.found}; this uftp knows up to {exc.known}"
        ) from exc


# --- inbox --------------------------------------------------------------------------------------


class Admission(StrEnum):
    """What the inbox made of a verified, schema-valid message."""

    NEW = "new"
    # Same sender, same MessageID, same content: a retry. Success, but nothing is processed or
    # answered again (UFTP message validation, "Already Submitted").
    ALREADY_SUBMITTED = "already submitted"
    # Same sender and MessageID, different content: rejected as "Duplicate Identifier".
    DUPLICATE_IDENTIFIER = "duplicate identifier"


class InboundStatus(StrEnum):
    PENDING = "pending"  # stored, waiting for the application
    PROCESSED = "processed"  # handled (answered, where it needs an answer)
    REJECTED = "rejected"  # failed validation; the rejection was answered where possible


@dataclass(frozen=True)
class InboundRecord:
    """A verified inbound message about to be stored."""

    sender_domain: str
    sender_role: Role
    message_id: str
    conversation_id: str
    message_type: str
    reference_id: str | None
    sealed: bytes

    @property
    def xml(self) -> bytes:
        return self.sealed[SIGNATURE_BYTES:]

    @property
    def content_sha256(self) -> bytes:
        return hashlib.sha256(self.xml).digest()


@dataclass(frozen=True)
class InboundMessage:
    """A stored inbound message."""

    id: int
    sender_domain: str
    sender_role: Role
    message_id: str
    conversation_id: str
    message_type: str
    reference_id: str | None
    sealed: bytes
    received_at: datetime
    status: InboundStatus
    rejection_reason: str | None
    attempts: int = 0
    last_error: str | None = None

    @property
    def xml(self) -> bytes:
        return self.sealed[SIGNATURE_BYTES:]

    def message(self) -> PayloadMessage:
        return from_xml(self.xml)


@dataclass(frozen=True)
class Admitted:
    admission: Admission
    inbox_id: int | None


# The column order `inbound_from_row` reads.
INBOX_COLUMNS = (
    "id, sender_domain, sender_role, message_id, conversation_id, message_type, reference_id, "
    "sealed, received_at, status, rejection_reason, attempts, last_error"
)


def _from_timestamp(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def inbound_from_row(
    row: Sequence[Any], moment: Callable[[Any], datetime] = _from_timestamp
) -> InboundMessage:
    """An inbox row selected as `INBOX_COLUMNS`; `moment` reads a stored time (here unix
    seconds; a database with a timestamp type passes its own)."""
    return InboundMessage(
        id=int(row[0]),
        sender_domain=str(row[1]),
        sender_role=Role(row[2]),
        message_id=str(row[3]),
        conversation_id=str(row[4]),
        message_type=str(row[5]),
        reference_id=None if row[6] is None else str(row[6]),
        sealed=bytes(row[7]),
        received_at=moment(row[8]),
        status=InboundStatus(row[9]),
        rejection_reason=None if row[10] is None else str(row[10]),
        attempts=int(row[11]),
        last_error=None if row[12] is None else str(row[12]),
    )


def admission_status(rejection_reason: str | None, processed: bool) -> InboundStatus:
    """How an admitted message is stored: rejected, handled at once, or pending."""
    if rejection_reason is not None:
        return InboundStatus.REJECTED
    return InboundStatus.PROCESSED if processed else InboundStatus.PENDING


def inbox_values(record: InboundRecord) -> tuple[Any, ...]:
    """The columns sender_domain .. sealed of a new inbox row, in that order."""
    return (
        record.sender_domain,
        str(record.sender_role),
        record.message_id,
        record.conversation_id,
        record.message_type,
        record.reference_id,
        record.content_sha256,
        record.sealed,
    )


def admission_of_repeat(existing_sha256: bytes | None, record: InboundRecord) -> Admission:
    """A MessageID this sender used before: the same content is a retry, other content a
    duplicate identifier."""
    if existing_sha256 is not None and bytes(existing_sha256) == record.content_sha256:
        return Admission.ALREADY_SUBMITTED
    return Admission.DUPLICATE_IDENTIFIER


def admit_inbound(
    conn: sqlite3.Connection,
    record: InboundRecord,
    now: datetime,
    *,
    rejection_reason: str | None = None,
    processed: bool = False,
    replies: Sequence[PreparedOutbound] = (),
) -> Admitted:
    """Store an inbound message unless its MessageID was seen from this sender before.

    `rejection_reason` stores it as rejected (kept for audit and so a retry is recognised);
    `processed` stores it as already handled (a TestMessage answered by the transport); otherwise
    it is pending for the application. `replies` (the rejection or the automatic answer) are
    enqueued in the same transaction, linked to the new row, and only for a NEW message.
    """
    status = admission_status(rejection_reason, processed)
    processed_at = None if status is InboundStatus.PENDING else _ts(now)
    # One statement in the common case; the unique (sender_domain, message_id) index decides.
    cursor = conn.execute(
        "INSERT INTO uftp_inbox (sender_domain, sender_role, message_id, conversation_id, "
        "message_type, reference_id, content_sha256, sealed, received_at, status, "
        "rejection_reason, processed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sender_domain, message_id) DO NOTHING",
        (*inbox_values(record), _ts(now), str(status), rejection_reason, processed_at),
    )
    if cursor.rowcount == 0:
        existing = conn.execute(
            "SELECT content_sha256 FROM uftp_inbox WHERE sender_domain = ? AND message_id = ?",
            (record.sender_domain, record.message_id),
        ).fetchone()
        return Admitted(
            admission_of_repeat(None if existing is None else existing[0], record), None
        )
    inbox_id = int(cursor.lastrowid or 0)
    for reply in replies:
        enqueue_outbound(conn, reply, now, reply_to=inbox_id)
    return Admitted(Admission.NEW, inbox_id)


def pending_inbound(
    conn: sqlite3.Connection,
    limit: int = 100,
    *,
    due_at: datetime | None = None,
    horizon_s: float = 0.0,
) -> list[InboundMessage]:
    """Stored messages the application has not handled yet, in arrival order. After a crash
    they are still here: handling is only recorded by `mark_processed` in the application's
    own transaction.

    With `due_at`, a message whose handling failed is left out until its next attempt is due.
    A next attempt more than `horizon_s` after `due_at` cannot have been scheduled by this
    clock (it was set before the clock stepped back): it counts as due."""
    if due_at is None:
        rows = conn.execute(
            f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE status = 'pending' ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
    else:
        now = _ts(due_at)
        rows = conn.execute(
            f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE status = 'pending' AND "
            "(next_attempt_at IS NULL OR next_attempt_at <= ? OR next_attempt_at > ?) "
            "ORDER BY id LIMIT ?",
            (now, now + horizon_s, limit),
        ).fetchall()
    return [inbound_from_row(r) for r in rows]


def record_inbound_failure(
    conn: sqlite3.Connection, inbox_id: int, error: str, retry_at: datetime
) -> int:
    """Count a failed attempt to handle a pending message and schedule the next one; returns
    the attempts so far. The message stays pending: a failure to process is ours, not the
    sender's, so it is no reason to reject the message."""
    row = conn.execute(
        "UPDATE uftp_inbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
        "WHERE id = ? AND status = 'pending' RETURNING attempts",
        (_ts(retry_at), error, inbox_id),
    ).fetchone()
    if row is None:
        raise StoreError(f"inbound message {inbox_id} is not pending")
    return int(row[0])


def next_inbound_attempt(conn: sqlite3.Connection) -> datetime | None:
    """When the earliest deferred pending message is due again (None: none is deferred)."""
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM uftp_inbox "
        "WHERE status = 'pending' AND next_attempt_at IS NOT NULL"
    ).fetchone()
    return _dt(None if row[0] is None else float(row[0]))


def stuck_inbound(conn: sqlite3.Connection, min_attempts: int) -> int:
    """Pending messages that failed at least `min_attempts` times (an operator's alarm)."""
    row = conn.execute(
        "SELECT COUNT(*) FROM uftp_inbox WHERE status = 'pending' AND attempts >= ?",
        (min_attempts,),
    ).fetchone()
    return int(row[0])


def mark_processed(
    conn: sqlite3.Connection,
    inbox_id: int,
    now: datetime,
    *,
    rejection_reason: str | None = None,
) -> None:
    """Record that the application handled a pending message (or rejected it)."""
    status = InboundStatus.REJECTED if rejection_reason is not None else InboundStatus.PROCESSED
    cursor = conn.execute(
        "UPDATE uftp_inbox SET status = ?, rejection_reason = ?, processed_at = ?, "
        "next_attempt_at = NULL WHERE id = ? AND status = 'pending'",
        (str(status), rejection_reason, _ts(now), inbox_id),
    )
    if cursor.rowcount != 1:
        raise StoreError(f"inbound message {inbox_id} is not pending (handled twice?)")


def find_inbound(
    conn: sqlite3.Connection, message_id: str, sender_domain: str | None = None
) -> InboundMessage | None:
    sql = f"SELECT {INBOX_COLUMNS} FROM uftp_inbox WHERE message_id = ?"
    args: tuple[str, ...] = (message_id,)
    if sender_domain is not None:
        sql += " AND sender_domain = ?"
        args += (sender_domain,)
    row = conn.execute(sql + " ORDER BY id LIMIT 1", args).fetchone()
    return None if row is None else inbound_from_row(row)


def inbound_messages(
    conn: sqlite3.Connection,
    *,
    message_type: str | None = None,
    reference_id: str | None = None,
    status: InboundStatus | None = None,
) -> list[InboundMessage]:
    """Stored inbound messages in arrival order, filtered (for roles that query their history)."""
    where, args = _filters(message_type, reference_id, status)
    rows = conn.execute(f"SELECT {INBOX_COLUMNS} FROM uftp_inbox{where} ORDER BY id", args)
    return [inbound_from_row(r) for r in rows.fetchall()]


# --- outbox -------------------------------------------------------------------------------------


class OutboundStatus(StrEnum):
    PENDING = "pending"  # not yet confirmed by the peer (HTTP 200)
    SENT = "sent"
    FAILED = "failed"  # a final HTTP error, or retries exhausted: needs an operator


@dataclass(frozen=True)
class PreparedOutbound:
    """A validated, signed message ready for the outbox (see `Participant.prepare`)."""

    message_id: str
    conversation_id: str
    message_type: str
    reference_id: str | None
    recipient_domain: str
    recipient_role: Role
    result: str | None
    xml: bytes
    body: bytes


@dataclass(frozen=True)
class OutboundMessage:
    id: int
    message_id: str
    conversation_id: str
    message_type: str
    reference_id: str | None
    recipient_domain: str
    recipient_role: Role
    reply_to: int | None
    result: str | None
    xml: bytes
    body: bytes
    created_at: datetime
    status: OutboundStatus
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    sent_at: datetime | None

    def message(self) -> PayloadMessage:
        return from_xml(self.xml)


# The column order `outbound_from_row` reads.
OUTBOX_COLUMNS = (
    "id, message_id, conversation_id, message_type, reference_id, recipient_domain, "
    "recipient_role, reply_to, result, xml, body, created_at, status, attempts, "
    "next_attempt_at, last_error, sent_at"
)


def outbound_from_row(
    row: Sequence[Any], moment: Callable[[Any], datetime] = _from_timestamp
) -> OutboundMessage:
    """An outbox row selected as `OUTBOX_COLUMNS` (`moment` as for `inbound_from_row`)."""
    return OutboundMessage(
        id=int(row[0]),
        message_id=str(row[1]),
        conversation_id=str(row[2]),
        message_type=str(row[3]),
        reference_id=None if row[4] is None else str(row[4]),
        recipient_domain=str(row[5]),
        recipient_role=Role(row[6]),
        reply_to=None if row[7] is None else int(row[7]),
        result=None if row[8] is None else str(row[8]),
        xml=bytes(row[9]),
        body=bytes(row[10]),
        created_at=moment(row[11]),
        status=OutboundStatus(row[12]),
        attempts=int(row[13]),
        next_attempt_at=moment(row[14]),
        last_error=None if row[15] is None else str(row[15]),
        sent_at=None if row[16] is None else moment(row[16]),
    )


def outbox_values(prepared: PreparedOutbound, reply_to: int | None) -> tuple[Any, ...]:
    """The columns message_id .. body of a new outbox row, in that order."""
    return (
        prepared.message_id,
        prepared.conversation_id,
        prepared.message_type,
        prepared.reference_id,
        prepared.recipient_domain,
        str(prepared.recipient_role),
        reply_to,
        prepared.result,
        prepared.xml,
        prepared.body,
    )


def enqueue_outbound(
    conn: sqlite3.Connection,
    prepared: PreparedOutbound,
    now: datetime,
    *,
    reply_to: int | None = None,
) -> int:
    """Put a signed message in the outbox (due now). `reply_to` links an answer to the inbox row
    it answers; a second answer to the same row violates a unique index and raises
    sqlite3.IntegrityError, so a crash-and-retry can never queue two responses."""
    cursor = conn.execute(
        "INSERT INTO uftp_outbox (message_id, conversation_id, message_type, reference_id, "
        "recipient_domain, recipient_role, reply_to, result, xml, body, created_at, status, "
        "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        (*outbox_values(prepared, reply_to), _ts(now), _ts(now)),
    )
    return int(cursor.lastrowid or 0)


def outbox_heads(conn: sqlite3.Connection) -> list[OutboundMessage]:
    """The oldest pending message per recipient: delivery is FIFO per peer, so a D-Prognosis
    revision never overtakes the previous one and an answer never overtakes its request."""
    rows = conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE id IN ("
        "SELECT MIN(id) FROM uftp_outbox WHERE status = 'pending' "
        "GROUP BY recipient_domain, recipient_role) ORDER BY id"
    ).fetchall()
    return [outbound_from_row(r) for r in rows]


def record_delivered(conn: sqlite3.Connection, outbox_id: int, now: datetime) -> None:
    conn.execute(
        "UPDATE uftp_outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1, "
        "last_error = NULL WHERE id = ? AND status = 'pending'",
        (_ts(now), outbox_id),
    )


def record_attempt_failed(
    conn: sqlite3.Connection,
    outbox_id: int,
    error: str,
    *,
    retry_at: datetime | None,
) -> None:
    """A failed attempt: retry at `retry_at`, or give up (status failed) when it is None."""
    if retry_at is None:
        conn.execute(
            "UPDATE uftp_outbox SET status = 'failed', attempts = attempts + 1, last_error = ? "
            "WHERE id = ? AND status = 'pending'",
            (error, outbox_id),
        )
    else:
        conn.execute(
            "UPDATE uftp_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (error, _ts(retry_at), outbox_id),
        )


def find_outbound(conn: sqlite3.Connection, message_id: str) -> OutboundMessage | None:
    row = conn.execute(
        f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox WHERE message_id = ?", (message_id,)
    ).fetchone()
    return None if row is None else outbound_from_row(row)


def outbound_messages(
    conn: sqlite3.Connection,
    *,
    message_type: str | None = None,
    reference_id: str | None = None,
    status: OutboundStatus | None = None,
) -> list[OutboundMessage]:
    where, args = _filters(message_type, reference_id, status)
    rows = conn.execute(f"SELECT {OUTBOX_COLUMNS} FROM uftp_outbox{where} ORDER BY id", args)
    return [outbound_from_row(r) for r in rows.fetchall()]
