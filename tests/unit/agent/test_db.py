"""The agent database: migrations, transactions, one thread, a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.cli import EX_DATAERR, _start_failure
from agent.storage.db import (
    Database,
    DatabaseError,
    DatabaseOpenError,
    Migration,
    apply_migrations,
    connect,
)
from uftp import store as uftp_store

M1 = Migration(1, "things", "CREATE TABLE thing (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")
M2 = Migration(
    2,
    "thing colour",
    """
    ALTER TABLE thing ADD COLUMN colour TEXT;
    CREATE INDEX thing_colour ON thing (colour);
    """,
)


async def test_migrates_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = Database(path, [M1])
    await db.start()
    await db.transaction(lambda c: c.execute("INSERT INTO thing (name) VALUES ('a')"))
    await db.stop()

    db = Database(path, [M1, M2])
    await db.start()
    rows = await db.read(lambda c: c.execute("SELECT name, colour FROM thing").fetchall())
    assert [tuple(r) for r in rows] == [("a", None)]
    versions = await db.read(lambda c: c.execute("SELECT version FROM agent_schema").fetchall())
    assert [r[0] for r in versions] == [1, 2]
    mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    await db.stop()


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = Database(path, [M1, M2])
    await db.start()
    await db.stop()
    with pytest.raises(DatabaseError, match="newer than this flexbridge knows"):
        await Database(path, [M1]).start()


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite", [M1])
    await db.start()

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO thing (name) VALUES ('half')")
        raise RuntimeError("crash mid-transaction")

    with pytest.raises(RuntimeError, match="crash mid-transaction"):
        await db.transaction(fail)
    count = await db.read(lambda c: c.execute("SELECT COUNT(*) FROM thing").fetchone()[0])
    assert count == 0
    await db.stop()


async def test_connection_is_confined_to_its_thread(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite", [M1])
    await db.start()
    with pytest.raises(DatabaseError, match="only be used on the database thread"):
        _ = db.connection
    await db.stop()


async def test_extra_migration_hooks_share_the_file(tmp_path: Path) -> None:
    def library_schema(conn: sqlite3.Connection) -> None:
        apply_migrations(conn, "lib_schema", [Migration(1, "lib", "CREATE TABLE lib_x (a);")])

    db = Database(tmp_path / "db.sqlite", [M1], extra_migrations=[library_schema])
    await db.start()
    query = "SELECT name FROM sqlite_master WHERE type='table'"
    tables = await db.read(lambda c: sorted(r[0] for r in c.execute(query)))
    assert {"thing", "lib_x", "agent_schema", "lib_schema"} <= set(tables)
    await db.stop()


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    with pytest.raises(DatabaseError, match=r"numbered 1\.\.n"):
        apply_migrations(conn, "s", [M2])
    conn.close()


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    bad = Migration(2, "bad", "ALTER TABLE thing ADD COLUMN x TEXT; SELECT * FROM missing_table;")
    with pytest.raises(DatabaseError, match=r"s migration 2 \(bad\) failed: no such table"):
        apply_migrations(conn, "s", [M1, bad])
    assert conn.execute("SELECT MAX(version) FROM s").fetchone()[0] == 1
    columns = [r[1] for r in conn.execute("PRAGMA table_info(thing)")]
    assert "x" not in columns
    conn.close()


def test_a_migration_may_end_in_a_comment(tmp_path: Path) -> None:
    """Before the shared runner, a comment after the last ';' was an 'incomplete statement'."""
    conn = connect(tmp_path / "db.sqlite")
    assert apply_migrations(conn, "s", [Migration(1, "a", "CREATE TABLE a (x); -- done")]) == 1
    conn.close()


async def test_uftp_tables_migrate_through_the_agents_runner_one_version_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uftp's migrations ran statement by statement in autocommit inside the agent: a failure
    left half a migration behind, and the next start failed on it for good."""
    path = tmp_path / "agent.sqlite"
    broken = Migration(3, "extra", "CREATE TABLE uftp_extra (a); SELECT * FROM missing_table")
    monkeypatch.setattr(uftp_store, "MIGRATIONS", (*uftp_store.MIGRATIONS, broken))
    db = Database(path, [M1], extra_migrations=[uftp_store.schema()])
    with pytest.raises(DatabaseOpenError, match=r"uftp migration 3 \(extra\) failed"):
        await db.start()
    conn = sqlite3.connect(path)
    assert uftp_store.schema_version(conn) == 2
    assert (
        conn.execute("SELECT name FROM sqlite_master WHERE name = 'uftp_extra'").fetchone() is None
    )
    conn.close()

    fixed = Migration(3, "extra", "CREATE TABLE uftp_extra (a)")
    monkeypatch.setattr(uftp_store, "MIGRATIONS", (*uftp_store.MIGRATIONS[:2], fixed))
    db = Database(path, [M1], extra_migrations=[uftp_store.schema()])
    await db.start()
    assert await db.read(uftp_store.schema_version) == 3
    assert (
        await db.read(lambda c: c.execute("SELECT MAX(version) FROM agent_schema").fetchone()[0])
        == 1
    )
    await db.stop()


async def test_a_newer_uftp_schema_stops_the_agent_with_the_database_exit_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.sqlite"
    db = Database(path, [M1], extra_migrations=[uftp_store.schema()])
    await db.start()
    await db.transaction(lambda c: c.execute("UPDATE uftp_schema_version SET version = 99"))
    await db.stop()
    db = Database(path, [M1], extra_migrations=[uftp_store.schema()])
    with pytest.raises(DatabaseOpenError) as caught:
        await db.start()
    assert "uftp version 99) is newer than this flexbridge knows (2)" in str(caught.value)
    message, code = _start_failure(caught.value, "database", tmp_path)
    assert code == EX_DATAERR
    assert "\n" not in message
