"""How the aggregator dates a site's last sign of life: by the site's own time, never later than
the message's arrival (a gateway whose clock runs ahead must not look alive after it fell
silent), on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.central import db
from agent.central.fleet_io import record_upstream
from agent.fleet import protocol
from tests.support.postgres import PostgresServer

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
CP = "ean.871685900012636543"


def heartbeat(n: int, sent_at: datetime) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        id=f"hb-{n}",
        site="s1",
        sent_at=sent_at,
        chargers_connected=2,
        power_w=3_000.0,
        safe_limit_w=8_000.0,
    )


async def test_a_site_clock_ahead_counts_from_arrival_and_an_outbox_backlog_keeps_its_time(
    postgres: PostgresServer,
) -> None:
    conn = await db.connect(postgres.dsn())
    try:
        await db.migrate(conn)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO congestion_point (ean, dso_domain) VALUES (%s, 'dso.example.com')",
                (CP,),
            )
            await conn.execute("INSERT INTO site (id, congestion_point) VALUES ('s1', %s)", (CP,))

        async def status() -> tuple[datetime, datetime]:
            cursor = await conn.execute(
                "SELECT last_seen_at, last_heartbeat_at FROM site_status WHERE site = 's1'"
            )
            row = await cursor.fetchone()
            assert row is not None
            return row[0], row[1]

        # The gateway's clock is an hour ahead: its heartbeat counts from when it arrived.
        async with conn.transaction():
            assert await record_upstream(conn, heartbeat(1, T0 + timedelta(hours=1)), T0)
        assert await status() == (T0, T0)

        # A heartbeat that waited in the site's outbox during an outage arrives late: it keeps
        # the (older) time it was made, and never moves the last sign of life back.
        later = T0 + timedelta(minutes=30)
        async with conn.transaction():
            assert await record_upstream(conn, heartbeat(2, T0 - timedelta(minutes=5)), later)
        assert await status() == (T0, T0)
        async with conn.transaction():
            assert await record_upstream(conn, heartbeat(3, later), later + timedelta(seconds=1))
        assert await status() == (later, later)
    finally:
        await conn.close()
