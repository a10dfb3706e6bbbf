"""The AGR's trade records: D-prognoses, FlexRequests, FlexOffers, FlexOrders, settlements and
the Metering sent.

Like `agent.storage.store`, functions take a connection and never commit. A record's status
changes only through `apply`: the event's transition from `agent.storage.records` as one guarded
UPDATE, so a record is never moved from a status the table does not allow (an order never turns a
revoked offer into an ordered one), and a refusal names the record, both statuses and the event.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from agent.storage.records import (
    OPEN_OFFER,
    REQUEST_VERDICT,
    TRANSITIONS,
    Event,
    OrderStatus,
    Record,
    RequestStatus,
    SettlementResult,
    TransitionRefused,
    check_new,
)
from agent.storage.store import to_json, ts

log = logging.getLogger(__name__)


# --- status transitions --------------------------------------------------------------------------


def apply(conn: sqlite3.Connection, event: Event, key: str, **columns: str | None) -> None:
    """Take the record `key` through `event`: one UPDATE guarded by the allowed predecessors.

    `columns` are set alongside (a reason, a revocation's MessageID) unless None. Raises
    `TransitionRefused` and changes nothing when the record is in any other status.
    """
    transition = TRANSITIONS[event]
    if transition.creates:
        raise ValueError(f"{event.value!r} creates a {transition.record}: insert it")
    record = transition.record
    sources = sorted(transition.sources)
    for name in columns:
        if not name.isidentifier() or name in (record.key, record.column):
            raise ValueError(f"{record}: {name!r} is not a column `apply` may set")
    extra = "".join(f", {name} = COALESCE(?, {name})" for name in columns)
    cursor = conn.execute(
        f"UPDATE {record.table} SET {record.column} = ?{extra} WHERE {record.key} = ? "
        f"AND {record.column} IN ({', '.join('?' * len(sources))})",
        (transition.target, *columns.values(), key, *sources),
    )
    if cursor.rowcount != 1:
        raise TransitionRefused(event, key, _status(conn, record, key))


def attempt(conn: sqlite3.Connection, event: Event, key: str, **columns: str | None) -> bool:
    """`apply` for an event that may come too late (a race, an answer after the fact): a
    refusal is logged, changes nothing and returns False."""
    try:
        apply(conn, event, key, **columns)
    except TransitionRefused as refused:
        log.warning(
            "status change refused: %s",
            refused,
            extra={
                "record": str(refused.record),
                "key": key,
                "status": refused.current or "-",
                "target": refused.target,
                "event": event.value,
            },
        )
        return False
    return True


def _status(conn: sqlite3.Connection, record: Record, key: str) -> str | None:
    row = conn.execute(
        f"SELECT {record.column} FROM {record.table} WHERE {record.key} = ?", (key,)
    ).fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True)
class PrognosisRow:
    congestion_point: str
    period: date
    revision: int
    message_id: str
    conversation_id: str
    dso_domain: str
    created_at: datetime
    reason: str  # why this revision: day-ahead, intraday, order, resend
    power_w: list[int]  # per ISP, what we sent
    baseline_w: list[int]  # per ISP, the forecast without orders
    orders: list[str]  # FlexOrder MessageIDs this revision includes
    status: str  # sent, accepted, rejected
    rejection_reason: str | None


def _prognosis(row: sqlite3.Row) -> PrognosisRow:
    return PrognosisRow(
        congestion_point=row["congestion_point"],
        period=date.fromisoformat(row["period"]),
        revision=int(row["revision"]),
        message_id=row["message_id"],
        conversation_id=row["conversation_id"],
        dso_domain=row["dso_domain"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        reason=row["reason"],
        power_w=json.loads(row["power_w"]),
        baseline_w=json.loads(row["baseline_w"]),
        orders=json.loads(row["orders"]),
        status=row["status"],
        rejection_reason=row["rejection_reason"],
    )


def highest_revision(conn: sqlite3.Connection, congestion_point: str, period: date) -> int:
    row = conn.execute(
        "SELECT MAX(revision) FROM prognosis WHERE congestion_point = ? AND period = ?",
        (congestion_point, period.isoformat()),
    ).fetchone()
    return int(row[0] or 0)


def insert_prognosis(conn: sqlite3.Connection, p: PrognosisRow) -> None:
    check_new(Event.PROGNOSIS_QUEUED, p.status)
    conn.execute(
        "INSERT INTO prognosis (congestion_point, period, revision, message_id, conversation_id, "
        "dso_domain, created_at, reason, power_w, baseline_w, orders, status) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            p.congestion_point,
            p.period.isoformat(),
            p.revision,
            p.message_id,
            p.conversation_id,
            p.dso_domain,
            ts(p.created_at),
            p.reason,
            to_json(p.power_w),
            to_json(p.baseline_w),
            to_json(p.orders),
            p.status,
        ),
    )


def latest_prognosis(
    conn: sqlite3.Connection, congestion_point: str, period: date, *, accepted: bool = False
) -> PrognosisRow | None:
    where = " AND status = 'accepted'" if accepted else " AND status != 'rejected'"
    row = conn.execute(
        "SELECT * FROM prognosis WHERE congestion_point = ? AND period = ?"
        + where
        + " ORDER BY revision DESC LIMIT 1",
        (congestion_point, period.isoformat()),
    ).fetchone()
    return None if row is None else _prognosis(row)


def prognosis_by_message(conn: sqlite3.Connection, message_id: str) -> PrognosisRow | None:
    row = conn.execute("SELECT * FROM prognosis WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _prognosis(row)


def prognoses_since(conn: sqlite3.Connection, period: date) -> list[PrognosisRow]:
    rows = conn.execute(
        "SELECT * FROM prognosis WHERE period >= ? ORDER BY period, congestion_point, revision",
        (period.isoformat(),),
    )
    return [_prognosis(r) for r in rows]


# --- FlexRequests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRow:
    message_id: str
    conversation_id: str
    dso_domain: str
    congestion_point: str
    period: date
    revision: int
    expires_at: datetime
    received_at: datetime
    # [start, duration, requested (bool), min_power, max_power] per ISP element
    isps: list[list[int]]
    status: str  # accepted, rejected
    reason: str | None
    offer_state: str  # todo, offered, none (no offer: see reason), n/a


def _request(row: sqlite3.Row) -> RequestRow:
    return RequestRow(
        message_id=row["message_id"],
        conversation_id=row["conversation_id"],
        dso_domain=row["dso_domain"],
        congestion_point=row["congestion_point"],
        period=date.fromisoformat(row["period"]),
        revision=int(row["revision"]),
        expires_at=datetime.fromtimestamp(row["expires_at"], UTC),
        received_at=datetime.fromtimestamp(row["received_at"], UTC),
        isps=json.loads(row["isps"]),
        status=row["status"],
        reason=row["reason"],
        offer_state=row["offer_state"],
    )


def insert_request(conn: sqlite3.Connection, r: RequestRow) -> None:
    event = Event.REQUEST_ACCEPTED if r.status == RequestStatus.ACCEPTED else Event.REQUEST_REJECTED
    if REQUEST_VERDICT[event] != r.status:
        raise ValueError(f"flex_request {r.message_id}: no verdict {r.status!r}")
    check_new(event, r.offer_state)
    conn.execute(
        "INSERT INTO flex_request (message_id, conversation_id, dso_domain, congestion_point, "
        "period, revision, expires_at, received_at, isps, status, reason, offer_state) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.message_id,
            r.conversation_id,
            r.dso_domain,
            r.congestion_point,
            r.period.isoformat(),
            r.revision,
            ts(r.expires_at),
            ts(r.received_at),
            to_json(r.isps),
            r.status,
            r.reason,
            r.offer_state,
        ),
    )


def find_request(conn: sqlite3.Connection, message_id: str) -> RequestRow | None:
    row = conn.execute("SELECT * FROM flex_request WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _request(row)


def highest_request_revision(
    conn: sqlite3.Connection, dso_domain: str, congestion_point: str, period: date
) -> int | None:
    row = conn.execute(
        "SELECT MAX(revision) FROM flex_request WHERE dso_domain = ? AND congestion_point = ? "
        "AND period = ? AND status = 'accepted'",
        (dso_domain, congestion_point, period.isoformat()),
    ).fetchone()
    return None if row[0] is None else int(row[0])


def requests_to_offer(conn: sqlite3.Connection) -> list[RequestRow]:
    rows = conn.execute(
        "SELECT * FROM flex_request WHERE offer_state = 'todo' ORDER BY received_at"
    )
    return [_request(r) for r in rows]


def requests_for(conn: sqlite3.Connection, congestion_point: str, period: date) -> list[RequestRow]:
    """The accepted FlexRequests of one congestion point and day, oldest first."""
    rows = conn.execute(
        "SELECT * FROM flex_request WHERE congestion_point = ? AND period = ? "
        "AND status = 'accepted' ORDER BY received_at, revision",
        (congestion_point, period.isoformat()),
    )
    return [_request(r) for r in rows]


# --- FlexOffers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferRow:
    message_id: str
    conversation_id: str
    request_message_id: str | None
    dso_domain: str
    congestion_point: str
    period: date
    created_at: datetime
    expires_at: datetime
    currency: str
    # {"reference", "price", "min_activation_factor", "isps": [[start, duration, power]]}
    options: list[dict[str, Any]]
    reserved_w: dict[int, int]  # ISP index -> change reserved while the offer is open
    prognosis_message_id: str | None
    status: str  # sent, accepted, rejected, ordered, revoked, expired
    reason: str | None
    revocation_message_id: str | None


def _offer(row: sqlite3.Row) -> OfferRow:
    return OfferRow(
        message_id=row["message_id"],
        conversation_id=row["conversation_id"],
        request_message_id=row["request_message_id"],
        dso_domain=row["dso_domain"],
        congestion_point=row["congestion_point"],
        period=date.fromisoformat(row["period"]),
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
        expires_at=datetime.fromtimestamp(row["expires_at"], UTC),
        currency=row["currency"],
        options=json.loads(row["options"]),
        reserved_w={int(k): int(v) for k, v in json.loads(row["reserved_w"]).items()},
        prognosis_message_id=row["prognosis_message_id"],
        status=row["status"],
        reason=row["reason"],
        revocation_message_id=row["revocation_message_id"],
    )


def insert_offer(conn: sqlite3.Connection, o: OfferRow) -> None:
    check_new(Event.OFFER_QUEUED, o.status)
    conn.execute(
        "INSERT INTO flex_offer (message_id, conversation_id, request_message_id, dso_domain, "
        "congestion_point, period, created_at, expires_at, currency, options, reserved_w, "
        "prognosis_message_id, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            o.message_id,
            o.conversation_id,
            o.request_message_id,
            o.dso_domain,
            o.congestion_point,
            o.period.isoformat(),
            ts(o.created_at),
            ts(o.expires_at),
            o.currency,
            to_json(o.options),
            to_json({str(k): v for k, v in o.reserved_w.items()}),
            o.prognosis_message_id,
            o.status,
        ),
    )


def find_offer(conn: sqlite3.Connection, message_id: str) -> OfferRow | None:
    row = conn.execute("SELECT * FROM flex_offer WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _offer(row)


def open_offers(
    conn: sqlite3.Connection,
    now: datetime,
    congestion_point: str | None = None,
    period: date | None = None,
) -> list[OfferRow]:
    """Offers the DSO may still order: sent or accepted, not expired, not revoked or ordered."""
    query = (
        f"SELECT * FROM flex_offer WHERE status IN ({', '.join('?' * len(OPEN_OFFER))}) "
        "AND expires_at > ?"
    )
    args: list[Any] = [*OPEN_OFFER, ts(now)]
    if congestion_point is not None:
        query += " AND congestion_point = ?"
        args.append(congestion_point)
    if period is not None:
        query += " AND period = ?"
        args.append(period.isoformat())
    return [_offer(r) for r in conn.execute(query + " ORDER BY created_at", args)]


def expire_offers(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Close the open offers whose ExpirationDateTime has passed; returns their MessageIDs."""
    rows = conn.execute(
        f"SELECT message_id FROM flex_offer WHERE status IN ({', '.join('?' * len(OPEN_OFFER))}) "
        "AND expires_at <= ?",
        (*OPEN_OFFER, ts(now)),
    ).fetchall()
    ids = [str(r[0]) for r in rows]
    for message_id in ids:
        apply(conn, Event.OFFER_EXPIRED, message_id)
    return ids


def recent_offers(conn: sqlite3.Connection, limit: int = 50) -> list[OfferRow]:
    rows = conn.execute("SELECT * FROM flex_offer ORDER BY created_at DESC LIMIT ?", (limit,))
    return [_offer(r) for r in rows]


# --- FlexOrders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRow:
    message_id: str
    conversation_id: str
    offer_message_id: str | None
    dso_domain: str
    congestion_point: str
    period: date
    order_reference: str
    option_reference: str | None
    activation_factor: float
    price: str  # decimal text, as ordered
    currency: str
    isps: list[list[int]]  # [start, duration, power]
    baseline_message_id: str | None
    received_at: datetime
    status: str  # accepted, rejected
    reason: str | None

    def change_per_isp(self) -> dict[int, int]:
        return {i: p for s, d, p in self.isps for i in range(s, s + d)}


def _order(row: sqlite3.Row) -> OrderRow:
    return OrderRow(
        message_id=row["message_id"],
        conversation_id=row["conversation_id"],
        offer_message_id=row["offer_message_id"],
        dso_domain=row["dso_domain"],
        congestion_point=row["congestion_point"],
        period=date.fromisoformat(row["period"]),
        order_reference=row["order_reference"],
        option_reference=row["option_reference"],
        activation_factor=float(row["activation_factor"]),
        price=row["price"],
        currency=row["currency"],
        isps=json.loads(row["isps"]),
        baseline_message_id=row["baseline_message_id"],
        received_at=datetime.fromtimestamp(row["received_at"], UTC),
        status=row["status"],
        reason=row["reason"],
    )


def insert_order(conn: sqlite3.Connection, o: OrderRow) -> None:
    accepted = o.status == OrderStatus.ACCEPTED
    check_new(Event.ORDER_ACCEPTED if accepted else Event.ORDER_REJECTED, o.status)
    conn.execute(
        "INSERT INTO flex_order (message_id, conversation_id, offer_message_id, dso_domain, "
        "congestion_point, period, order_reference, option_reference, activation_factor, price, "
        "currency, isps, baseline_message_id, received_at, status, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            o.message_id,
            o.conversation_id,
            o.offer_message_id,
            o.dso_domain,
            o.congestion_point,
            o.period.isoformat(),
            o.order_reference,
            o.option_reference,
            o.activation_factor,
            o.price,
            o.currency,
            to_json(o.isps),
            o.baseline_message_id,
            ts(o.received_at),
            o.status,
            o.reason,
        ),
    )


def accepted_orders(
    conn: sqlite3.Connection,
    *,
    congestion_point: str | None = None,
    period: date | None = None,
    since: date | None = None,
    until: date | None = None,
    dso_domain: str | None = None,
) -> list[OrderRow]:
    query = "SELECT * FROM flex_order WHERE status = 'accepted'"
    args: list[Any] = []
    for column, value, op in (
        ("congestion_point", congestion_point, "="),
        ("period", None if period is None else period.isoformat(), "="),
        ("period", None if since is None else since.isoformat(), ">="),
        ("period", None if until is None else until.isoformat(), "<="),
        ("dso_domain", dso_domain, "="),
    ):
        if value is not None:
            query += f" AND {column} {op} ?"
            args.append(value)
    return [_order(r) for r in conn.execute(query + " ORDER BY received_at", args)]


# --- settlements and metering --------------------------------------------------------------------


def insert_settlement(
    conn: sqlite3.Connection,
    message_id: str,
    dso_domain: str,
    period_start: date,
    period_end: date,
    received_at: datetime,
    result: str,
    items: list[dict[str, Any]],
) -> None:
    accepted = result == SettlementResult.ACCEPTED
    check_new(Event.SETTLEMENT_ACCEPTED if accepted else Event.SETTLEMENT_REJECTED, result)
    conn.execute(
        "INSERT INTO flex_settlement (message_id, dso_domain, period_start, period_end, "
        "received_at, result, items) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            dso_domain,
            period_start.isoformat(),
            period_end.isoformat(),
            ts(received_at),
            result,
            to_json(items),
        ),
    )


def settled_already(
    conn: sqlite3.Connection, dso_domain: str, period_start: date, period_end: date
) -> bool:
    """Whether an accepted settlement of this DSO already covers part of the range."""
    row = conn.execute(
        "SELECT 1 FROM flex_settlement WHERE dso_domain = ? AND result = 'Accepted' "
        "AND period_start <= ? AND period_end >= ? LIMIT 1",
        (dso_domain, period_end.isoformat(), period_start.isoformat()),
    ).fetchone()
    return row is not None


def recent_settlements(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM flex_settlement ORDER BY received_at DESC LIMIT ?", (limit,))
    return [
        {
            "message_id": r["message_id"],
            "dso_domain": r["dso_domain"],
            "period_start": r["period_start"],
            "period_end": r["period_end"],
            "received_at": datetime.fromtimestamp(r["received_at"], UTC).isoformat(),
            "result": r["result"],
            "items": json.loads(r["items"]),
        }
        for r in rows
    ]


def highest_metering_revision(conn: sqlite3.Connection, ean: str, period: date) -> int:
    row = conn.execute(
        "SELECT MAX(revision) FROM metering_sent WHERE ean = ? AND period = ?",
        (ean, period.isoformat()),
    ).fetchone()
    return int(row[0] or 0)


def record_metering(
    conn: sqlite3.Connection, ean: str, period: date, revision: int, message_id: str, now: datetime
) -> None:
    conn.execute(
        "INSERT INTO metering_sent (ean, period, revision, message_id, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (ean, period.isoformat(), revision, message_id, ts(now)),
    )
