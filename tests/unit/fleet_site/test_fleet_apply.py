"""Applying the centre's commands: the pure decision, the binding caps, and the one
transaction of agent.fleet.store on a real SQLite database, for any order of deliveries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.apply import ActiveCommand, ack_id, binding_caps, decide
from agent.storage.db import apply_migrations
from agent.storage.store import SCHEMA

T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
SITE = "site-a"


def command(
    order_id: str = "order-1",
    seq: int = 1,
    *,
    valid_min: int = 60,
    caps: list[float | None] | None = None,
    site: str = SITE,
) -> protocol.Command:
    return protocol.Command(
        id=f"cmd-{order_id}-{seq}",
        site=site,
        sent_at=T0,
        order_id=order_id,
        seq=seq,
        valid_until=T0 + timedelta(minutes=valid_min),
        congestion_point="ean.871685900012636543",
        start=T0 + timedelta(hours=1),
        cap_w=[1000.0 * seq, None] if caps is None else caps,
    )


def active(seq: int, *, valid_until: datetime, caps: tuple[float | None, ...]) -> ActiveCommand:
    return ActiveCommand(
        order_id=f"o{seq}",
        seq=seq,
        valid_until=valid_until,
        congestion_point="cp",
        start=T0,
        isp_s=900,
        caps_w=caps,
        applied_at=T0,
    )


@contextmanager
def memory_db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    apply_migrations(conn, "agent_schema", SCHEMA)
    try:
        yield conn
    finally:
        conn.close()


# --- decide --------------------------------------------------------------------------------------


def test_at_valid_until_a_command_is_expired_even_when_newer() -> None:
    cmd = command(seq=1, valid_min=5)
    until = cmd.valid_until
    assert decide(cmd, None, until) == "expired"
    assert decide(cmd, None, until - timedelta(microseconds=1)) == "applied"
    current = active(1, valid_until=until, caps=(1.0,))
    assert decide(command(seq=9, valid_min=5), current, until + timedelta(seconds=1)) == "expired"


def test_same_or_older_seq_is_superseded() -> None:
    current = active(3, valid_until=T0 + timedelta(hours=1), caps=(1.0,))
    assert decide(command(seq=3), current, T0) == "superseded"
    assert decide(command(seq=2), current, T0) == "superseded"
    assert decide(command(seq=4), current, T0) == "applied"


@settings(max_examples=300, deadline=None)
@given(
    valid_min=st.lists(st.integers(1, 40), min_size=5, max_size=5),
    deliveries=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 50)), max_size=30),
)
def test_decide_alone_keeps_the_newest_command_that_arrived_in_time(
    valid_min: list[int], deliveries: list[tuple[int, int]]
) -> None:
    """The pure rule folded over any deliveries of one order (duplicates, any seq order, late
    ones): the state is the highest seq that arrived before its valid_until, and nothing is
    applied at or after valid_until."""
    commands = {s: command(seq=s, valid_min=valid_min[s - 1]) for s in range(1, 6)}
    current: ActiveCommand | None = None
    for seq, minute in sorted(deliveries, key=lambda d: d[1]):
        now = T0 + timedelta(minutes=minute)
        cmd = commands[seq]
        if decide(cmd, current, now) == "applied":
            assert now < cmd.valid_until
            assert current is None or seq > current.seq
            current = active(seq, valid_until=cmd.valid_until, caps=(float(seq),))
    in_time = [s for s, m in deliveries if T0 + timedelta(minutes=m) < commands[s].valid_until]
    assert (current.seq if current else None) == (max(in_time) if in_time else None)


# --- binding caps --------------------------------------------------------------------------------


def test_strictest_valid_cap_binds_and_an_expired_command_binds_nothing() -> None:
    late = T0 + timedelta(hours=2)
    a = active(1, valid_until=late, caps=(5000.0, None, 3000.0))
    b = active(2, valid_until=late, caps=(4000.0, 6000.0))
    gone = active(3, valid_until=T0 + timedelta(minutes=10), caps=(0.0, 0.0, 0.0))
    isp = timedelta(minutes=15)
    assert binding_caps([a, b, gone], T0) == {T0: 0.0, T0 + isp: 0.0, T0 + 2 * isp: 0.0}
    assert binding_caps([a, b, gone], T0 + timedelta(minutes=10)) == {
        T0: 4000.0,
        T0 + isp: 6000.0,
        T0 + 2 * isp: 3000.0,
    }
    # ISPs over before `since` are left out; no cap anywhere is "unlimited": absent.
    assert binding_caps([a], T0 + timedelta(minutes=20), since=T0 + timedelta(minutes=20)) == {
        T0 + 2 * isp: 3000.0
    }
    assert binding_caps([active(4, valid_until=late, caps=(None, None))], T0) == {}


# --- one transaction per delivery ----------------------------------------------------------------


def test_apply_records_and_queues_the_ack_in_one_step() -> None:
    with memory_db() as conn:
        got = fleet_store.receive_command(conn, command(seq=1), T0)
        assert (got.outcome, got.changed, got.repeat) == ("applied", True, False)
        [current] = fleet_store.active_commands(conn)
        assert (current.seq, current.caps_w) == (1, (1000.0, None))
        [entry] = fleet_store.command_log(conn)
        assert (entry.order_id, entry.seq, entry.outcome) == ("order-1", 1, "applied")
        [row] = fleet_store.outbox(conn)
        assert row.id == ack_id(SITE, "order-1", 1) == got.ack.id
        assert row.subject == protocol.up_subject(SITE, "ack")
        ack = protocol.decode_upstream(row.payload)
        assert isinstance(ack, protocol.Ack)
        assert (ack.order_id, ack.seq, ack.outcome) == ("order-1", 1, "applied")


def test_a_repeat_changes_nothing_and_queues_the_same_ack_again() -> None:
    with memory_db() as conn:
        first = fleet_store.receive_command(conn, command(seq=1), T0)
        fleet_store.mark_published(conn, [first.ack.id], T0)
        again = fleet_store.receive_command(conn, command(seq=1), T0 + timedelta(minutes=90))
        assert (again.outcome, again.changed, again.repeat) == ("applied", False, True)
        assert again.ack == first.ack
        [row] = fleet_store.outbox(conn)
        assert row.published_at is None  # to be published again, same id, same payload
        assert protocol.decode_upstream(row.payload) == first.ack
        assert len(fleet_store.command_log(conn)) == 1


def test_a_newer_seq_replaces_the_order_whole_and_an_older_one_is_superseded() -> None:
    with memory_db() as conn:
        fleet_store.receive_command(conn, command(seq=1, caps=[100.0, 200.0, 300.0]), T0)
        fleet_store.receive_command(conn, command(seq=3, caps=[None, 50.0]), T0)
        late = fleet_store.receive_command(conn, command(seq=2, caps=[1.0]), T0)
        assert late.outcome == "superseded"
        [current] = fleet_store.active_commands(conn)
        assert (current.seq, current.caps_w) == (3, (None, 50.0))


def test_an_expired_command_is_recorded_never_applied() -> None:
    with memory_db() as conn:
        got = fleet_store.receive_command(conn, command(valid_min=10), T0 + timedelta(minutes=10))
        assert got.outcome == "expired"
        assert fleet_store.active_commands(conn) == []
        assert got.ack.outcome == "expired"


Delivery = tuple[int, int, int]  # (order index, seq, minutes after T0 it arrives)


@settings(max_examples=150, deadline=None)
@given(
    valid_min=st.lists(st.integers(1, 40), min_size=8, max_size=8),
    deliveries=st.lists(
        st.tuples(st.integers(0, 1), st.integers(1, 4), st.integers(0, 50)), max_size=25
    ),
)
def test_any_deliveries_end_in_the_newest_command_that_arrived_in_time(
    valid_min: list[int], deliveries: list[Delivery]
) -> None:
    """Duplicates, reorders and late arrivals: per order the command in force is the one with
    the highest seq that arrived before its valid_until; nothing is ever applied at or after
    valid_until; each (order, seq) has one outcome and one Ack id, however often it came."""
    deliveries = sorted(deliveries, key=lambda d: d[2])  # arrivals happen in time order
    commands = {
        (o, s): command(f"order-{o}", s, valid_min=valid_min[o * 4 + s - 1], caps=[float(s)])
        for o in range(2)
        for s in range(1, 5)
    }
    with memory_db() as conn:
        first_outcome: dict[tuple[int, int], str] = {}
        for order, seq, minute in deliveries:
            now = T0 + timedelta(minutes=minute)
            cmd = commands[(order, seq)]
            before = fleet_store.active_command(conn, cmd.order_id)
            got = fleet_store.receive_command(conn, cmd, now)
            after = fleet_store.active_command(conn, cmd.order_id)
            if got.changed:
                assert now < cmd.valid_until
                assert after is not None
                assert after.seq == seq
            else:
                assert after == before
            first_outcome.setdefault((order, seq), got.outcome)
            assert got.outcome == first_outcome[(order, seq)]
            assert got.ack.id == ack_id(SITE, cmd.order_id, seq)
        for order in range(2):
            in_time = [
                s
                for o, s, minute in deliveries
                if o == order and T0 + timedelta(minutes=minute) < commands[(o, s)].valid_until
            ]
            state = fleet_store.active_command(conn, f"order-{order}")
            if in_time:
                assert state is not None
                assert state.seq == max(in_time)
                assert state.caps_w == (float(max(in_time)),)
            else:
                assert state is None
        log = fleet_store.command_log(conn)
        assert len(log) == len({(o, s) for o, s, _ in deliveries})
        ack_ids = [r.id for r in fleet_store.outbox(conn)]
        assert sorted(ack_ids) == sorted({ack_id(SITE, f"order-{o}", s) for o, s, _ in deliveries})
