"""The aggregator's migrations on a real PostgreSQL: two processes starting together migrate
once, each migration whole with its version, a newer schema refused."""

from __future__ import annotations

import asyncio

import pytest

from agent.central import db
from tests.support.ports import free_port
from tests.support.postgres import (
    PostgresServer,
    postgres,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration


async def test_concurrent_starts_migrate_once(postgres: PostgresServer) -> None:  # noqa: F811
    dsn = postgres.dsn("flexbridge")
    connections = [await db.connect(dsn) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(db.migrate(c) for c in connections))
        assert versions == [len(db.MIGRATIONS)] * 4
        cursor = await connections[0].execute(
            "SELECT version, count(*) FROM central_schema_version GROUP BY version ORDER BY 1"
        )
        assert await cursor.fetchall() == [(m.version, 1) for m in db.MIGRATIONS]
    finally:
        for conn in connections:
            await conn.close()


async def test_a_failing_migration_leaves_the_previous_version(
    postgres: PostgresServer,  # noqa: F811
) -> None:
    conn = await db.connect(postgres.dsn("flexbridge"))
    try:
        broken = (
            *db.MIGRATIONS,
            db.Migration(
                len(db.MIGRATIONS) + 1,
                "half of it fails",
                "CREATE TABLE half_done (x INT); SELECT no_such_function();",
            ),
        )
        with pytest.raises(Exception, match="no_such_function"):
            await db.migrate(conn, broken)
        assert await db.schema_version(conn) == len(db.MIGRATIONS)
        cursor = await conn.execute("SELECT to_regclass('half_done') IS NULL")
        assert await cursor.fetchone() == (True,)
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused(postgres: PostgresServer) -> None:  # noqa: F811
    conn = await db.connect(postgres.dsn("flexbridge"))
    try:
        await db.migrate(conn)
        with pytest.raises(db.SchemaTooNew, match="newer than this code knows"):
            await db.migrate(conn, db.MIGRATIONS[:-1])  # this code knows one migration less
    finally:
        await conn.close()


async def test_an_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(db.DatabaseError, match="cannot connect to PostgreSQL"):
        await db.connect(f"postgresql://flexbridge@127.0.0.1:{free_port()}/none")
