"""The site link over a real SQLite file and an in-memory bus with JetStream's delivery rules:
every rule of exactly-once at the site's end (outbox, publish, receive, apply, ack)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.apply import ack_id
from agent.fleet.link import SiteLink
from agent.runtime.loops import Backoff
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from tests.support.fleet_memory_bus import MemoryBus

T = TypeVar("T")
SITE = "site-a"
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
CMD = protocol.cmd_subject(SITE)
DURABLE = protocol.site_consumer(SITE)


class FakeClock:
    """Simulated now, real (short) sleeps."""

    def __init__(self) -> None:
        self.moment = T0

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.05))


@dataclass
class Harness:
    db: Database
    bus: MemoryBus
    clock: FakeClock
    link: SiteLink
    changes: list[datetime] = field(default_factory=list)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.db.read(fn)


async def until(check: Callable[[], Awaitable[bool] | bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    db = Database(tmp_path / "site.sqlite", SCHEMA)
    await db.start()
    bus = MemoryBus()
    bus.add_consumer(protocol.CMD_STREAM, DURABLE, CMD)
    clock = FakeClock()
    changes: list[datetime] = []
    link = SiteLink(
        db,
        bus,
        SITE,
        clock,
        lambda: changes.append(clock.now()),
        fetch_timeout_s=0.05,
        backoff=Backoff(first_s=0.02, max_s=0.1),
    )
    await link.start()
    yield Harness(db, bus, clock, link, changes)
    await link.stop()
    await db.stop()


def heartbeat(n: int) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        id=f"{SITE}.hb.{n}",
        site=SITE,
        sent_at=T0,
        chargers_connected=n,
        power_w=0.0,
        safe_limit_w=1000.0,
    )


def command(seq: int = 1, *, valid_min: int = 60, site: str = SITE, order: str = "o-1") -> bytes:
    return protocol.encode(
        protocol.Command(
            id=f"c-{order}-{seq}",
            site=site,
            sent_at=T0,
            order_id=order,
            seq=seq,
            valid_until=T0 + timedelta(minutes=valid_min),
            congestion_point="ean.871685900012636543",
            start=T0,
            cap_w=[1000.0 * seq],
        )
    )


async def unpublished(h: Harness) -> int:
    return len(await h.db.read(lambda c: fleet_store.pending(c, 1000)))


# --- sender ----------------------------------------------------------------------------------


async def test_outbox_is_published_in_order_with_its_id_as_msg_id(h: Harness) -> None:
    await h.link.enqueue(*(heartbeat(n) for n in range(5)))
    await until(lambda: len(h.bus.on("fleet.up")) == 5)
    sent = h.bus.on("fleet.up")
    assert [p.msg_id for p in sent] == [f"{SITE}.hb.{n}" for n in range(5)]
    assert all(p.subject == protocol.up_subject(SITE, "heartbeat") for p in sent)
    assert [protocol.decode_upstream(p.payload).id for p in sent] == [p.msg_id for p in sent]
    await until(lambda: _zero(unpublished(h)))


async def test_nothing_is_lost_while_the_bus_is_down_and_order_is_kept(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.bus.available = False
    with caplog.at_level(logging.WARNING, "agent.fleet.link"):
        for n in range(3):
            await h.link.enqueue(heartbeat(n))
        await asyncio.sleep(0.3)
    assert h.bus.published == []
    assert await unpublished(h) == 3
    # One line for the outage, not one per attempt.
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    h.bus.available = True
    await until(lambda: _zero(unpublished(h)))
    assert [p.msg_id for p in h.bus.on("fleet.up")] == [f"{SITE}.hb.{n}" for n in range(3)]


async def test_a_lost_confirmation_publishes_again_under_the_same_id(h: Harness) -> None:
    h.bus.lose_confirmations = True
    await h.link.enqueue(heartbeat(1))
    await until(lambda: len(h.bus.published) >= 2)
    assert await unpublished(h) == 1  # never marked without the stream's confirmation
    h.bus.lose_confirmations = False
    await until(lambda: _zero(unpublished(h)))
    assert {p.msg_id for p in h.bus.published} == {f"{SITE}.hb.1"}
    assert len({p.payload for p in h.bus.published}) == 1


# --- receiver --------------------------------------------------------------------------------


async def test_a_command_is_applied_logged_acked_upstream_then_acked_on_the_stream(
    h: Harness,
) -> None:
    h.bus.put(CMD, command(1))
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"])
    assert len(h.changes) == 1
    [current] = await h.read(fleet_store.active_commands)
    assert (current.order_id, current.seq, current.caps_w) == ("o-1", 1, (1000.0,))
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 1)
    [ack_msg] = h.bus.on(protocol.up_subject(SITE, "ack"))
    assert ack_msg.msg_id == ack_id(SITE, "o-1", 1)
    ack = protocol.decode_upstream(ack_msg.payload)
    assert isinstance(ack, protocol.Ack)
    assert ack.outcome == "applied"


async def test_a_redelivered_command_has_no_second_effect_and_sends_the_same_ack(
    h: Harness,
) -> None:
    h.bus.put(CMD, command(1))
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 1)
    # The same command again (the centre published twice, or an ack got lost on the way).
    h.bus.put(CMD, command(1))
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 2)
    assert h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked", "acked"]
    assert len(h.changes) == 1
    assert (h.link.received["applied"], h.link.repeats) == (1, 1)
    first, again = h.bus.on(protocol.up_subject(SITE, "ack"))
    assert (first.msg_id, first.payload) == (again.msg_id, again.payload)
    assert len(await h.read(fleet_store.command_log)) == 1


async def test_an_ack_lost_on_the_way_to_the_stream_ends_in_a_harmless_redelivery(
    h: Harness,
) -> None:
    h.bus.put(CMD, command(1))
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"])
    # Redelivery as after ack_wait: the message is in flight again.
    h.bus.consumers[(protocol.CMD_STREAM, DURABLE)].entries[0].state = "pending"
    h.bus.wake()
    await until(lambda: h.link.repeats == 1)
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"])
    assert len(h.changes) == 1
    assert len(await h.read(fleet_store.command_log)) == 1


async def test_newer_seq_replaces_older_late_one_is_superseded(h: Harness) -> None:
    h.bus.put(CMD, command(2))
    h.bus.put(CMD, command(1))
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked", "acked"])
    [current] = await h.read(fleet_store.active_commands)
    assert current.seq == 2
    assert h.link.received == {"applied": 1, "superseded": 1, "expired": 0}
    assert len(h.changes) == 1


async def test_a_site_back_from_an_outage_never_applies_the_seq_already_replaced(
    h: Harness,
) -> None:
    """Both seqs waited in the consumer while the site was away: only the newest is applied,
    the older is recorded as superseded, and dispatch hears of one change."""
    h.bus.available = False
    await asyncio.sleep(0.1)
    h.bus.put(CMD, command(1))
    h.bus.put(CMD, command(2))
    h.bus.put(CMD, command(1, order="o-2"))
    h.bus.available = True
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"] * 3)
    log = await h.read(fleet_store.command_log)
    assert {(e.order_id, e.seq, e.outcome) for e in log} == {
        ("o-1", 2, "applied"),
        ("o-1", 1, "superseded"),
        ("o-2", 1, "applied"),
    }
    assert h.link.received == {"applied": 2, "superseded": 1, "expired": 0}


async def test_a_command_at_its_valid_until_is_never_applied(h: Harness) -> None:
    h.clock.moment = T0 + timedelta(minutes=30)
    h.bus.put(CMD, command(1, valid_min=30))
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"])
    assert await h.read(fleet_store.active_commands) == []
    assert h.changes == []
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 1)
    [ack_msg] = h.bus.on(protocol.up_subject(SITE, "ack"))
    ack = protocol.decode_upstream(ack_msg.payload)
    assert isinstance(ack, protocol.Ack)
    assert ack.outcome == "expired"


async def test_garbage_and_other_sites_commands_are_terminated_with_one_line(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "agent.fleet.link"):
        h.bus.put(CMD, b"{not json")
        h.bus.put(CMD, command(1, site="site-b"))
        await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["termed", "termed"])
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.fleet.link"]
    assert len(lines) == 2
    assert "undecodable" in lines[0]
    assert "site-b" in lines[1]
    assert await h.read(fleet_store.command_log) == []
    assert h.bus.on("fleet.up") == []


async def test_fetching_backs_off_while_the_bus_is_down(h: Harness) -> None:
    h.bus.available = False
    await asyncio.sleep(0.3)
    h.bus.available = True
    h.bus.put(CMD, command(1))
    await until(lambda: h.bus.states(protocol.CMD_STREAM, DURABLE) == ["acked"])
    assert len(h.changes) == 1


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_published_rows_are_forgotten_after_a_while_and_an_ack_comes_back_the_same(
    h: Harness,
) -> None:
    h.bus.put(CMD, command(1))
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 1)
    await until(lambda: _zero(unpublished(h)))
    h.clock.moment = T0 + timedelta(days=3)
    await h.link.enqueue(heartbeat(1))  # the next marking prunes what is older than 2 days
    await until(lambda: len(h.bus.on("fleet.up")) == 2)

    async def only_the_heartbeat() -> bool:
        return [r.id for r in await h.read(fleet_store.outbox)] == [f"{SITE}.hb.1"]

    await until(only_the_heartbeat)
    # The command again, days later: no effect, the same Ack (rebuilt from the record).
    h.bus.put(CMD, command(1))
    await until(lambda: len(h.bus.on(protocol.up_subject(SITE, "ack"))) == 2)
    first, again = h.bus.on(protocol.up_subject(SITE, "ack"))
    assert (first.msg_id, first.payload) == (again.msg_id, again.payload)
    assert len(h.changes) == 1
