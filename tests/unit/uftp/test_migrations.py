"""uftp.migrations: the one migration runner of uftp and the agent, on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uftp import store
from uftp.database import Database, connect, run_in_transaction
from uftp.migrations import (
    Migration,
    MigrationError,
    Schema,
    SchemaTooNew,
    VersionCounter,
    VersionLog,
    migrate,
    split_statements,
)

TRIGGER = """
CREATE TABLE t_note (id INTEGER PRIMARY KEY, text TEXT NOT NULL DEFAULT 'a;b');
CREATE TABLE t_log (line TEXT);  -- a comment; with a semicolon
CREATE TRIGGER t_note_logged AFTER INSERT ON t_note BEGIN
    INSERT INTO t_log (line) VALUES ('note; ' || NEW.text);
    UPDATE t_note SET text = text || ';' WHERE id = NEW.id;
END;
"""

KEEPERS = [VersionLog("t_schema"), VersionCounter("t_version")]


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return connect(tmp_path / "shared.sqlite")


def test_split_keeps_semicolons_in_literals_comments_and_trigger_bodies() -> None:
    statements = split_statements(TRIGGER)
    assert len(statements) == 3
    assert statements[2].startswith("-- a comment; with a semicolon")
    assert statements[2].rstrip().endswith("END;")


def test_split_takes_a_last_statement_without_semicolon_and_a_trailing_comment() -> None:
    assert split_statements("CREATE TABLE a (x); CREATE TABLE b (y)") == [
        "CREATE TABLE a (x);",
        "CREATE TABLE b (y)",
    ]
    assert split_statements("CREATE TABLE a (x); -- done")[0] == "CREATE TABLE a (x);"


def test_split_refuses_an_incomplete_statement() -> None:
    with pytest.raises(MigrationError, match="incomplete"):
        split_statements("CREATE TRIGGER x AFTER INSERT ON a BEGIN DELETE FROM a;")
    with pytest.raises(MigrationError, match="incomplete"):
        split_statements("INSERT INTO a VALUES ('open;")


literal = st.text(alphabet=st.sampled_from("ab;' -\n"), max_size=12)


@given(values=st.lists(literal, min_size=1, max_size=6))
def test_split_gives_back_each_insert_whatever_its_literal(values: list[str]) -> None:
    script = "\n".join("INSERT INTO t VALUES ('{}');".format(v.replace("'", "''")) for v in values)
    statements = split_statements(script)
    assert len(statements) == len(values)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v TEXT)")
    for statement in statements:
        conn.execute(statement)
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")] == values


@pytest.mark.parametrize("keeper", KEEPERS, ids=lambda k: type(k).__name__)
def test_a_trigger_migration_applies_and_works(
    conn: sqlite3.Connection, keeper: VersionLog | VersionCounter
) -> None:
    schema = Schema("t", [Migration(1, "notes", TRIGGER)], keeper)
    assert migrate(conn, schema) == 1
    conn.execute("INSERT INTO t_note (text) VALUES ('x')")
    assert conn.execute("SELECT text FROM t_note").fetchone()[0] == "x;"
    assert conn.execute("SELECT line FROM t_log").fetchone()[0] == "note; x"
    assert keeper.current(conn) == 1
    assert migrate(conn, schema) == 1  # nothing left to do


@pytest.mark.parametrize("keeper", KEEPERS, ids=lambda k: type(k).__name__)
def test_a_failure_mid_migration_leaves_the_previous_version_intact(
    conn: sqlite3.Connection, keeper: VersionLog | VersionCounter
) -> None:
    first = Migration(1, "a", "CREATE TABLE t_a (x);")
    bad = Migration(2, "b", "CREATE TABLE t_b (x); ALTER TABLE t_a ADD COLUMN y; SELECT nope;")
    with pytest.raises(MigrationError, match=r"t migration 2 \(b\) failed: no such column"):
        migrate(conn, Schema("t", [first, bad], keeper))
    assert not conn.in_transaction
    assert keeper.current(conn) == 1
    assert "t_b" not in tables(conn)
    assert [r[1] for r in conn.execute("PRAGMA table_info(t_a)")] == ["x"]
    # The fixed migration applies on the next start.
    fixed = Migration(2, "b", "CREATE TABLE t_b (x); ALTER TABLE t_a ADD COLUMN y;")
    assert migrate(conn, Schema("t", [first, fixed], keeper)) == 2
    assert keeper.current(conn) == 2


def test_each_migration_commits_with_its_version(conn: sqlite3.Connection) -> None:
    def third(c: sqlite3.Connection) -> None:
        raise RuntimeError("power cut")

    migrations = [
        Migration(1, "a", "CREATE TABLE t_a (x);"),
        Migration(2, "b", "CREATE TABLE t_b (x);"),
        Migration(3, "c", third),
    ]
    with pytest.raises(MigrationError, match="power cut"):
        migrate(conn, Schema("t", migrations, VersionLog("t_schema")))
    assert {"t_a", "t_b"} <= tables(conn)
    versions = [r[0] for r in conn.execute("SELECT version FROM t_schema ORDER BY version")]
    assert versions == [1, 2]


def test_a_callable_migration_runs_in_the_migrations_transaction(
    conn: sqlite3.Connection,
) -> None:
    seen: list[bool] = []

    def backfill(c: sqlite3.Connection) -> None:
        seen.append(c.in_transaction)
        c.executemany("INSERT INTO t_a (x) VALUES (?)", [(1,), (2,)])

    schema = Schema(
        "t",
        [Migration(1, "a", "CREATE TABLE t_a (x);"), Migration(2, "fill", backfill)],
        VersionCounter("t_version"),
    )
    migrate(conn, schema)
    assert seen == [True]
    assert conn.execute("SELECT COUNT(*) FROM t_a").fetchone()[0] == 2


def test_a_migration_that_commits_is_refused(conn: sqlite3.Connection) -> None:
    schema = Schema("t", [Migration(1, "sneaky", "CREATE TABLE t_a (x); COMMIT;")], VersionLog("v"))
    with pytest.raises(MigrationError, match="ended the transaction"):
        migrate(conn, schema)
    assert VersionLog("v").current(conn) == 0


@pytest.mark.parametrize("keeper", KEEPERS, ids=lambda k: type(k).__name__)
def test_a_newer_schema_is_refused_and_left_alone(
    conn: sqlite3.Connection, keeper: VersionLog | VersionCounter
) -> None:
    migrations = [Migration(1, "a", "CREATE TABLE t_a (x);"), Migration(2, "b", "SELECT 1;")]
    migrate(conn, Schema("t", migrations, keeper))
    with pytest.raises(SchemaTooNew, match="t schema version 2 is newer than this code knows"):
        migrate(conn, Schema("t", migrations[:1], keeper))
    assert keeper.current(conn) == 2


def test_migrations_must_be_numbered_from_one() -> None:
    with pytest.raises(MigrationError, match=r"numbered 1\.\.n"):
        Schema("t", [Migration(2, "b", "SELECT 1;")], VersionLog("v"))


def test_inside_a_callers_transaction_migrations_are_savepoints(
    conn: sqlite3.Connection,
) -> None:
    schema = Schema("t", [Migration(1, "a", "CREATE TABLE t_a (x);")], VersionCounter("t_v"))
    conn.execute("BEGIN IMMEDIATE")
    migrate(conn, schema)
    assert conn.in_transaction  # the caller commits
    conn.execute("ROLLBACK")
    assert "t_a" not in tables(conn)


def test_a_schema_migrated_meanwhile_by_another_connection_is_not_applied_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite"
    first, second = connect(path), connect(path)
    schema = Schema("t", [Migration(1, "a", "CREATE TABLE t_a (x);")], VersionLog("t_schema"))
    migrate(first, schema)
    assert migrate(second, schema) == 1
    assert second.execute("SELECT COUNT(*) FROM t_schema").fetchone()[0] == 1


# --- uftp's own tables --------------------------------------------------------------------------


def test_uftp_tables_migrate_one_transaction_per_version(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing third uftp migration keeps version 2 and no trace of itself."""
    bad = Migration(3, "broken", "CREATE TABLE uftp_extra (a); SELECT * FROM missing_table;")
    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, bad))
    with pytest.raises(MigrationError, match="missing_table"):
        store.migrate(conn)
    assert store.schema_version(conn) == 2
    assert "uftp_extra" not in tables(conn)
    assert {"uftp_inbox", "uftp_outbox"} <= tables(conn)


def test_uftp_migration_with_a_trigger_body(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the runner, uftp split migrations on every ';' and this failed."""
    extra = Migration(3, "notes", TRIGGER)
    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, extra))
    assert run_in_transaction(conn, store.migrate) == 3  # inside a caller's transaction too
    assert store.schema_version(conn) == 3


def test_an_existing_uftp_version_table_keeps_counting(conn: sqlite3.Connection) -> None:
    """A file written before the runner: one row in uftp_schema_version, at version 1."""
    for statement in split_statements(str(store.MIGRATIONS[0].change)):
        conn.execute(statement)
    conn.execute("CREATE TABLE uftp_schema_version (version INTEGER)")
    conn.execute("INSERT INTO uftp_schema_version (version) VALUES (1)")
    assert store.migrate(conn) == 2
    assert conn.execute("SELECT version FROM uftp_schema_version").fetchall() == [(2,)]


async def test_standalone_uftp_database_opens_through_the_runner(tmp_path: Path) -> None:
    database = Database(tmp_path / "uftp.sqlite")
    await database.open()
    try:
        version = await database.read(store.schema_version)
    finally:
        await database.close()
    assert version == len(store.MIGRATIONS)
    conn = connect(tmp_path / "uftp.sqlite")
    conn.execute("UPDATE uftp_schema_version SET version = 99")
    conn.close()
    again = Database(tmp_path / "uftp.sqlite")
    with pytest.raises(store.StoreError, match="uftp schema version 99; this uftp knows up to 2"):
        await again.open()
    await again.close()
