"""The command outbox is published many sites at once, in order per site; a refused publish
holds back that site's later commands only, and nothing is marked that was not confirmed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb

from agent.central import db
from agent.central.fleet_io import CommandPublisher
from agent.fleet import protocol
from agent.fleet.ports import BusUnavailable
from tests.integration.central.fake_bus import FakeBus
from tests.support.postgres import PostgresServer

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
CP = "ean.871685900012636543"


class RefusingBus(FakeBus):
    """Refuses the first publish of one subject (a lost quorum at that moment)."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse: str | None = refuse

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        if msg_id == self.refuse:
            self.refuse = None
            raise BusUnavailable("no quorum")
        await super().publish(subject, msg_id, payload)


def command(site: str, seq: int) -> protocol.Command:
    return protocol.Command(
        id=f"o-1:{site}:{seq}",
        site=site,
        sent_at=T0,
        order_id="o-1",
        seq=seq,
        valid_until=T0 + timedelta(hours=2),
        congestion_point=CP,
        start=T0,
        cap_w=[1000.0 * seq],
    )


async def test_sites_at_once_in_order_per_site_and_a_refusal_holds_back_only_its_site(
    postgres: PostgresServer,
) -> None:
    dsn = postgres.dsn()
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO congestion_point (ean, dso_domain) VALUES (%s, 'dso.example.com')",
                (CP,),
            )
            sites = [f"s{i:02d}" for i in range(30)]
            for site in sites:
                await conn.execute(
                    "INSERT INTO site (id, congestion_point) VALUES (%s, %s)", (site, CP)
                )
            for seq in (1, 2):
                for site in sites:
                    c = command(site, seq)
                    await conn.execute(
                        "INSERT INTO command (order_id, site, seq, congestion_point, start, "
                        "valid_until, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (
                            "o-1",
                            site,
                            seq,
                            CP,
                            T0,
                            c.valid_until,
                            Jsonb(c.model_dump(mode="json")),
                        ),
                    )
        bus = RefusingBus(refuse="o-1:s07:1")
        publisher = CommandPublisher(bus, dsn, clock=lambda: T0)
        try:
            await publisher.step()
            # Everything but s07's two commands: its seq 2 waits behind the refused seq 1.
            assert sorted(bus.commands("s07"), key=lambda c: c.seq) == []
            assert len(bus.published) == 58
            cursor = await conn.execute(
                "SELECT site, seq FROM command WHERE published_at IS NULL ORDER BY seq"
            )
            assert await cursor.fetchall() == [("s07", 1), ("s07", 2)]
            await publisher.step()
            for site in sites:
                assert [c.seq for c in bus.commands(site)] == [1, 2], site
            cursor = await conn.execute("SELECT count(*) FROM command WHERE published_at IS NULL")
            assert await cursor.fetchone() == (0,)
            assert publisher.published == 60
        finally:
            await publisher.stop()
    finally:
        await conn.close()
