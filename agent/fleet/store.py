"""The site's fleet records in its SQLite file: the outbox to the centre and the commands.

Tables (migration 5 of `agent.storage.store.SCHEMA`): `fleet_outbox` (every upstream message,
committed before it is published, so nothing is lost while the bus or the WAN is down),
`fleet_commands` (the command in force per order) and `fleet_command_log` (the outcome of each
(order, seq), once). Functions take a connection and never commit: `receive_command` is the
body of the one transaction that decides a command, applies it, records the outcome and queues
the upstream Ack, so after a crash the file holds all of that or none of it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.fleet import protocol
from agent.fleet.apply import ActiveCommand, Outcome, ack_id, decide
from agent.storage.store import ts


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# --- outbox --------------------------------------------------------------------------------------

UpstreamMessage = (
    protocol.Forecast | protocol.Flex | protocol.Metering | protocol.Ack | protocol.Heartbeat
)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    subject: str
    kind: str
    payload: bytes
    created_at: datetime
    published_at: datetime | None


def enqueue(conn: sqlite3.Connection, message: UpstreamMessage, now: datetime) -> None:
    """Queue `message` for the centre. Queued again under the same id (an Ack for a
    redelivered command), it is published again with its first payload: the receiver's
    unique key on the id absorbs the copy."""
    conn.execute(
        "INSERT INTO fleet_outbox (id, subject, kind, payload, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET published_at = NULL",
        (
            message.id,
            protocol.up_subject(message.site, message.kind),
            message.kind,
            protocol.encode(message),
            ts(now),
        ),
    )


def pending(conn: sqlite3.Connection, limit: int) -> list[OutboxRow]:
    """The oldest unpublished messages, in the order they were first queued."""
    rows = conn.execute(
        "SELECT * FROM fleet_outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,)
    )
    return [_outbox(r) for r in rows]


def mark_published(conn: sqlite3.Connection, ids: list[str], now: datetime) -> None:
    conn.executemany(
        "UPDATE fleet_outbox SET published_at = ? WHERE id = ?", [(ts(now), i) for i in ids]
    )


def outbox(conn: sqlite3.Connection) -> list[OutboxRow]:
    return [_outbox(r) for r in conn.execute("SELECT * FROM fleet_outbox ORDER BY seq")]


def prune_published(conn: sqlite3.Connection, before: datetime) -> int:
    """Forget messages published before `before` (the centre has them)."""
    cur = conn.execute(
        "DELETE FROM fleet_outbox WHERE published_at IS NOT NULL AND published_at < ?",
        (ts(before),),
    )
    return cur.rowcount


def _outbox(row: sqlite3.Row) -> OutboxRow:
    published = row["published_at"]
    return OutboxRow(
        seq=row["seq"],
        id=row["id"],
        subject=row["subject"],
        kind=row["kind"],
        payload=bytes(row["payload"]),
        created_at=_dt(row["created_at"]),
        published_at=None if published is None else _dt(published),
    )


@dataclass(frozen=True)
class OutboxBacklog:
    waiting: int
    oldest_at: datetime | None
    last_published_at: datetime | None


def backlog(conn: sqlite3.Connection) -> OutboxBacklog:
    """What waits for the bus, for the operator: a growing backlog is a link that is down."""
    waiting, oldest = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM fleet_outbox WHERE published_at IS NULL"
    ).fetchone()
    (last,) = conn.execute("SELECT MAX(published_at) FROM fleet_outbox").fetchone()
    return OutboxBacklog(
        waiting, None if oldest is None else _dt(oldest), None if last is None else _dt(last)
    )


# --- commands ------------------------------------------------------------------------------------


def active_commands(conn: sqlite3.Connection) -> list[ActiveCommand]:
    rows = conn.execute("SELECT * FROM fleet_commands ORDER BY order_id")
    return [_command(r) for r in rows]


def active_command(conn: sqlite3.Connection, order_id: str) -> ActiveCommand | None:
    row = conn.execute("SELECT * FROM fleet_commands WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else _command(row)


def _command(row: sqlite3.Row) -> ActiveCommand:
    return ActiveCommand(
        order_id=row["order_id"],
        seq=row["seq"],
        valid_until=_dt(row["valid_until"]),
        congestion_point=row["congestion_point"],
        start=_dt(row["start"]),
        isp_s=row["isp_s"],
        caps_w=tuple(json.loads(row["caps"])),
        applied_at=_dt(row["applied_at"]),
    )


@dataclass(frozen=True)
class LogEntry:
    order_id: str
    seq: int
    outcome: Outcome
    at: datetime


def command_log(conn: sqlite3.Connection) -> list[LogEntry]:
    rows = conn.execute("SELECT * FROM fleet_command_log ORDER BY rowid")
    return [LogEntry(r["order_id"], r["seq"], r["outcome"], _dt(r["at"])) for r in rows]


def _logged(conn: sqlite3.Connection, order_id: str, seq: int) -> LogEntry | None:
    row = conn.execute(
        "SELECT * FROM fleet_command_log WHERE order_id = ? AND seq = ?", (order_id, seq)
    ).fetchone()
    return (
        None
        if row is None
        else LogEntry(row["order_id"], row["seq"], row["outcome"], _dt(row["at"]))
    )


@dataclass(frozen=True)
class Received:
    """What one delivery of a command did: its outcome (the first delivery's, for a repeat),
    whether this delivery changed the commands in force, and the Ack queued for the centre."""

    outcome: Outcome
    changed: bool
    repeat: bool
    ack: protocol.Ack


def receive_command(conn: sqlite3.Connection, command: protocol.Command, now: datetime) -> Received:
    """Decide, apply, record and queue the Ack of one delivered command (inside the caller's
    transaction). A command already recorded changes nothing and queues its same Ack again."""
    entry = _logged(conn, command.order_id, command.seq)
    if entry is not None:
        ack = _ack(command.site, entry)
        enqueue(conn, ack, now)
        return Received(entry.outcome, changed=False, repeat=True, ack=ack)
    outcome = decide(command, active_command(conn, command.order_id), now)
    if outcome == "applied":
        conn.execute(
            "INSERT INTO fleet_commands (order_id, seq, valid_until, congestion_point, start, "
            "isp_s, caps, applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO "
            "UPDATE SET seq = excluded.seq, valid_until = excluded.valid_until, "
            "congestion_point = excluded.congestion_point, start = excluded.start, "
            "isp_s = excluded.isp_s, caps = excluded.caps, applied_at = excluded.applied_at",
            (
                command.order_id,
                command.seq,
                ts(command.valid_until),
                command.congestion_point,
                int(ts(command.start)),
                command.isp_s,
                json.dumps(command.cap_w),
                ts(now),
            ),
        )
    conn.execute(
        "INSERT INTO fleet_command_log (order_id, seq, outcome, at) VALUES (?, ?, ?, ?)",
        (command.order_id, command.seq, outcome, ts(now)),
    )
    entry = LogEntry(command.order_id, command.seq, outcome, _dt(ts(now)))
    ack = _ack(command.site, entry)
    enqueue(conn, ack, now)
    return Received(outcome, changed=outcome == "applied", repeat=False, ack=ack)


def _ack(site: str, entry: LogEntry) -> protocol.Ack:
    # Built from the record alone, so every delivery of the command yields the same message.
    return protocol.Ack(
        id=ack_id(site, entry.order_id, entry.seq),
        site=site,
        sent_at=entry.at,
        order_id=entry.order_id,
        seq=entry.seq,
        outcome=entry.outcome,
        applied_at=entry.at,
    )
