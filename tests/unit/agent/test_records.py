"""The trade records' life cycle: the transition table on its own, and the same table applied
as guarded UPDATEs on the real schema in SQLite, driven by random event sequences."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.storage import records, store, trades
from agent.storage.db import apply_migrations, connect
from agent.storage.records import (
    FLEX_OFFER,
    PROGNOSIS,
    RECORDS,
    REQUEST_OFFER,
    TRANSITIONS,
    Event,
    OfferStatus,
    OrderStatus,
    PrognosisStatus,
    SettlementResult,
    TransitionRefused,
    next_status,
)

NOW = datetime(2026, 6, 1, 10, tzinfo=UTC)
DAY = date(2026, 6, 2)
CREATING = [e for e, t in TRANSITIONS.items() if t.creates]
CHANGING = [e for e, t in TRANSITIONS.items() if not t.creates]


def schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    apply_migrations(conn, "agent_schema", store.SCHEMA)
    return conn


def create(conn: sqlite3.Connection, event: Event, key: str) -> None:
    """Insert a record the way the agent does when `event` happens."""
    status = TRANSITIONS[event].target
    record = TRANSITIONS[event].record
    if record == PROGNOSIS:
        revision = 1 + int(conn.execute("SELECT COUNT(*) FROM prognosis").fetchone()[0])
        trades.insert_prognosis(
            conn,
            trades.PrognosisRow(
                "ean.1",
                DAY,
                revision,
                key,
                "c",
                "dso",
                NOW,
                "day-ahead",
                [0],
                [0],
                [],
                status,
                None,
            ),
        )
    elif record == REQUEST_OFFER:
        verdict = records.REQUEST_VERDICT[event]
        trades.insert_request(
            conn,
            trades.RequestRow(
                key,
                "c",
                "dso",
                "ean.1",
                DAY,
                1,
                NOW,
                NOW,
                [[1, 4, 1, -1000, 0]],
                verdict,
                None,
                status,
            ),
        )
    elif record == FLEX_OFFER:
        trades.insert_offer(
            conn,
            trades.OfferRow(
                key,
                "c",
                None,
                "dso",
                "ean.1",
                DAY,
                NOW,
                NOW,
                "EUR",
                [],
                {},
                None,
                status,
                None,
                None,
            ),
        )
    elif record == records.FLEX_ORDER:
        trades.insert_order(
            conn,
            trades.OrderRow(
                key,
                "c",
                None,
                "dso",
                "ean.1",
                DAY,
                key,
                None,
                1.0,
                "1",
                "EUR",
                [],
                None,
                NOW,
                status,
                None,
            ),
        )
    else:
        trades.insert_settlement(conn, key, "dso", DAY, DAY, NOW, status, [])


def stored(conn: sqlite3.Connection, record: records.Record, key: str) -> str | None:
    row = conn.execute(
        f"SELECT {record.column} FROM {record.table} WHERE {record.key} = ?", (key,)
    ).fetchone()
    return None if row is None else str(row[0])


# --- the table ------------------------------------------------------------------------------------


def test_every_status_is_reachable_and_every_record_can_end() -> None:
    for record in RECORDS:
        if record == records.FLEX_REQUEST:
            continue  # the verdict: fixed with the request's offer_state (REQUEST_VERDICT)
        reached = set(records.initial(record))
        frontier = set(reached)
        while frontier:
            frontier = {
                t.target
                for t in TRANSITIONS.values()
                if t.record == record and t.sources & frontier and t.target not in reached
            }
            reached |= frontier
        assert reached == set(record.statuses), record
        assert records.terminal(record), record


def test_the_terminal_statuses_are_exactly_those_no_event_leaves() -> None:
    for record in RECORDS:
        assert records.TERMINAL[record] == set(record.statuses) - records.left_by_some_event(record)


def test_the_offer_life_cycle() -> None:
    assert records.initial(FLEX_OFFER) == {"sent"}
    assert records.terminal(FLEX_OFFER) == {"ordered", "revoked", "expired", "rejected"}
    assert set(records.OPEN_OFFER) == {"sent", "accepted"}
    # An order never turns a revoked, expired, rejected or ordered offer into an ordered one.
    for closed in records.terminal(FLEX_OFFER):
        assert next_status(Event.OFFER_ORDERED, closed) is None


@given(st.sampled_from(CHANGING), st.sampled_from([s for r in RECORDS for s in r.statuses]))
def test_a_terminal_status_is_never_left(event: Event, status: str) -> None:
    record = TRANSITIONS[event].record
    if status in records.terminal(record):
        assert next_status(event, status) is None


def test_a_record_is_inserted_only_in_the_status_its_event_creates() -> None:
    conn = schema()
    with pytest.raises(ValueError, match="creates 'sent', not 'ordered'"):
        trades.insert_offer(
            conn,
            trades.OfferRow(
                "O",
                "c",
                None,
                "dso",
                "ean.1",
                DAY,
                NOW,
                NOW,
                "EUR",
                [],
                {},
                None,
                "ordered",
                None,
                None,
            ),
        )
    assert stored(conn, FLEX_OFFER, "O") is None


def test_the_database_refuses_a_status_outside_the_table() -> None:
    conn = schema()
    create(conn, Event.OFFER_QUEUED, "O")
    create(conn, Event.REQUEST_ACCEPTED, "R")
    for sql in (
        "UPDATE flex_offer SET status = 'cancelled'",
        "UPDATE flex_request SET offer_state = 'maybe'",
        "UPDATE flex_request SET status = 'todo'",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(sql)


def test_a_refusal_names_record_statuses_and_event() -> None:
    conn = schema()
    create(conn, Event.OFFER_QUEUED, "O-1")
    trades.apply(conn, Event.OFFER_REVOKED, "O-1", reason="gone", revocation_message_id="REV")
    with pytest.raises(TransitionRefused) as refused:
        trades.apply(conn, Event.OFFER_ORDERED, "O-1")
    assert str(refused.value) == (
        "flex_offer O-1: 'FlexOrder accepted for the offer' cannot make it 'ordered': it is "
        "'revoked' (allowed from: accepted, sent)"
    )
    row = trades.find_offer(conn, "O-1")
    assert row is not None
    assert (row.status, row.reason, row.revocation_message_id) == ("revoked", "gone", "REV")
    assert not trades.attempt(conn, Event.OFFER_ACCEPTED, "O-1")
    assert not trades.attempt(conn, Event.OFFER_EXPIRED, "no-such-offer")


def test_expiry_closes_only_open_offers() -> None:
    conn = schema()
    for key in ("sent", "accepted", "ordered"):
        create(conn, Event.OFFER_QUEUED, key)
    trades.apply(conn, Event.OFFER_ACCEPTED, "accepted")
    trades.apply(conn, Event.OFFER_ORDERED, "ordered")
    assert sorted(trades.expire_offers(conn, NOW)) == ["accepted", "sent"]
    assert [stored(conn, FLEX_OFFER, k) for k in ("sent", "accepted", "ordered")] == [
        "expired",
        "expired",
        "ordered",
    ]


# --- random event sequences through the table and SQLite -----------------------------------------


class TradeRecords(RuleBasedStateMachine):
    """The store and the pure table agree after any sequence of events, refused ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = schema()
        self.model: dict[tuple[records.Record, str], str] = {}
        self.count = 0

    def teardown(self) -> None:
        self.conn.close()

    @rule(event=st.sampled_from(CREATING))
    def create(self, event: Event) -> None:
        self.count += 1
        key = f"M-{self.count}"
        create(self.conn, event, key)
        record = TRANSITIONS[event].record
        self.model[(record, key)] = TRANSITIONS[event].target
        if record == REQUEST_OFFER:
            self.model[(records.FLEX_REQUEST, key)] = records.REQUEST_VERDICT[event]

    @precondition(lambda self: bool(self.model))
    @rule(event=st.sampled_from(CHANGING), data=st.data())
    def happen(self, event: Event, data: st.DataObject) -> None:
        record = TRANSITIONS[event].record
        keys = sorted(k for r, k in self.model if r == record)
        key = data.draw(st.sampled_from([*keys, "unknown"]), label="key")
        before = self.model.get((record, key))
        after = next_status(event, before)
        reason = data.draw(st.sampled_from([None, "why"]), label="reason")
        if after is None:
            with pytest.raises(TransitionRefused) as refused:
                trades.apply(self.conn, event, key, reason=reason)
            assert refused.value.current == before
            assert (refused.value.record, refused.value.event) == (record, event)
            return
        trades.apply(self.conn, event, key, reason=reason)
        assert before in TRANSITIONS[event].sources  # never skips a predecessor
        assert before not in records.terminal(record)
        self.model[(record, key)] = after

    @rule()
    def expire(self) -> None:
        expired = set(trades.expire_offers(self.conn, NOW))
        for (record, key), status in self.model.items():
            if record == FLEX_OFFER and status in records.OPEN_OFFER:
                assert key in expired
                self.model[(record, key)] = OfferStatus.EXPIRED
        assert all(self.model[(FLEX_OFFER, k)] == OfferStatus.EXPIRED for k in expired)

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        for (record, key), status in self.model.items():
            assert stored(self.conn, record, key) == status


TradeRecords.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_trade_records = TradeRecords.TestCase


# --- the migration that added the CHECK constraints ----------------------------------------------

TABLES = ("prognosis", "flex_request", "flex_offer", "flex_order", "flex_settlement")


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3")] for t in TABLES
    }


def test_the_check_migration_keeps_every_row_of_the_previous_schema(tmp_path: Path) -> None:
    conn = connect(tmp_path / "old.sqlite")
    try:
        apply_migrations(conn, "agent_schema", store.SCHEMA[:3])
        # Rows as the previous version wrote them, every status it used.
        for n, status in enumerate(PrognosisStatus):
            conn.execute(
                "INSERT INTO prognosis VALUES ('ean.1', '2026-06-02', ?, ?, 'c', 'dso', 1.5, "
                "'day-ahead', '[1]', '[2]', '[]', ?, ?)",
                (n + 1, f"P-{n}", status.value, "late" if status == "rejected" else None),
            )
        for n, (verdict, state) in enumerate(
            [
                ("accepted", "todo"),
                ("accepted", "offered"),
                ("accepted", "none"),
                ("rejected", "n/a"),
            ]
        ):
            conn.execute(
                "INSERT INTO flex_request VALUES (?, 'c', 'dso', 'ean.1', '2026-06-02', 1, 2.5, "
                "1.5, '[[1,4,1,-1000,0]]', ?, NULL, ?)",
                (f"R-{n}", verdict, state),
            )
        for n, status in enumerate(OfferStatus):
            conn.execute(
                "INSERT INTO flex_offer VALUES (?, 'c', 'R-1', 'dso', 'ean.1', '2026-06-02', 1.5, "
                "2.5, 'EUR', '[]', '{\"37\":-3000}', 'P-0', ?, NULL, NULL)",
                (f"O-{n}", status.value),
            )
        for n, status in enumerate(OrderStatus):
            conn.execute(
                "INSERT INTO flex_order VALUES (?, 'c', 'O-3', 'dso', 'ean.1', '2026-06-02', ?, "
                "'A', 1.0, '3.5', 'EUR', '[[37,4,-3000]]', 'P-0', 1.5, ?, NULL)",
                (f"ORD-{n}", f"REF-{n}", status.value),
            )
        for n, result in enumerate(SettlementResult):
            conn.execute(
                "INSERT INTO flex_settlement VALUES (?, 'dso', '2026-06-01', '2026-06-30', 1.5, "
                "?, '[]')",
                (f"S-{n}", result.value),
            )
        before = dump(conn)

        assert apply_migrations(conn, "agent_schema", store.SCHEMA) == len(store.SCHEMA)

        assert dump(conn) == before
        indexes = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"flex_request_todo", "flex_offer_open", "flex_order_period"} <= indexes
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The migrated rows are usable through the store, and the constraint now holds.
        assert sorted(
            o.message_id for o in trades.open_offers(conn, NOW - timedelta(days=30000))
        ) == [
            "O-0",
            "O-1",
        ]
        trades.apply(conn, Event.OFFER_ORDERED, "O-1")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE flex_order SET status = 'ordered'")
    finally:
        conn.close()
