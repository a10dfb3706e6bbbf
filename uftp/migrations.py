"""Versioned schema migrations on a SQLite file shared by several owners of tables.

uftp's inbox and outbox, the agent's tables and the agent's forecaster each keep their schema
in the same file, each under its own version (`Schema`): one owner's upgrade never renumbers
another's. One runner applies them all, so they share these rules:

- each migration runs in one transaction together with its version bump: a failure (a bad
  statement, a full disk, a crash) leaves the previous version intact, never half a migration
  recorded as none or a whole one recorded as not done;
- a migration is SQL (a script of several statements) or a callable for what SQL cannot say.
  A script is split into statements with `sqlite3.complete_statement`, so a `;` inside a
  string literal, a comment or a trigger body does not end a statement (`executescript` would
  split it right but COMMITs first, outside the migration's transaction);
- a database whose version is newer than the code knows is refused (`SchemaTooNew`) rather
  than guessed at;
- migrations are numbered 1..n and only appended to.

The module is generic SQLite (no UFTP in it) and lives in uftp because the agent may import
uftp but not the other way round: a standalone uftp participant and the agent share it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

Change = str | Callable[[sqlite3.Connection], object]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    # SQL (one or several statements) or a callable run on the connection, inside the
    # migration's transaction; it must not commit.
    change: Change


class MigrationError(RuntimeError):
    """The migrations cannot be applied (badly numbered, an incomplete script, a failure)."""


class SchemaTooNew(MigrationError):
    """The database was written by a newer version than this code knows."""

    def __init__(self, schema: str, found: int, known: int) -> None:
        super().__init__(f"{schema} schema version {found} is newer than this code knows ({known})")
        self.schema = schema
        self.found = found
        self.known = known


class VersionKeeper(Protocol):
    """Where a schema's version is kept (each owner keeps its own, in its own table)."""

    def current(self, conn: sqlite3.Connection) -> int: ...

    def record(self, conn: sqlite3.Connection, migration: Migration) -> None:
        """Note `migration` as applied, in the migration's transaction."""
        ...


def _table_exists(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


@dataclass(frozen=True)
class VersionLog:
    """One row per applied migration (version, description, applied_at): the agent's way."""

    table: str

    def current(self, conn: sqlite3.Connection) -> int:
        if not _table_exists(conn, self.table):
            return 0
        row = conn.execute(f"SELECT MAX(version) FROM {self.table}").fetchone()
        return int(row[0] or 0)

    def record(self, conn: sqlite3.Connection, migration: Migration) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {self.table} (version, description, applied_at) "
            "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (migration.version, migration.description),
        )


@dataclass(frozen=True)
class VersionCounter:
    """A one-row table holding the version: uftp's way."""

    table: str

    def current(self, conn: sqlite3.Connection) -> int:
        if not _table_exists(conn, self.table):
            return 0
        row = conn.execute(f"SELECT version FROM {self.table}").fetchone()
        return int(row[0]) if row else 0

    def record(self, conn: sqlite3.Connection, migration: Migration) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (version INTEGER)")
        if conn.execute(f"UPDATE {self.table} SET version = ?", (migration.version,)).rowcount:
            return
        conn.execute(f"INSERT INTO {self.table} (version) VALUES (?)", (migration.version,))


def split_statements(script: str) -> list[str]:
    """The statements of `script`, each ending at a `;` that completes it.

    A `;` in a string literal, an identifier, a comment or a trigger body does not complete
    a statement (`sqlite3.complete_statement` knows SQLite's tokens). Whitespace and comments
    after the last statement stay as an empty statement; an incomplete one is an error.
    """
    statements: list[str] = []
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statements.append(script[start : end + 1].strip())
            start = end + 1
    rest = script[start:]
    if rest.strip():
        # A last statement without its ';' (or only comments: a harmless empty statement),
        # unless it is incomplete (a trigger without END, an open string literal).
        if not sqlite3.complete_statement(rest + "\n;"):
            raise MigrationError(f"incomplete SQL statement: {rest.strip()[:60]}")
        statements.append(rest.strip())
    return statements


@dataclass(frozen=True)
class Schema:
    """One owner's tables: its migrations and where it keeps its version."""

    name: str
    migrations: Sequence[Migration]
    versions: VersionKeeper

    def __post_init__(self) -> None:
        numbers = [m.version for m in self.migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise MigrationError(f"{self.name}: migrations must be numbered 1..n, got {numbers}")

    @property
    def latest(self) -> int:
        return len(self.migrations)

    def __call__(self, conn: sqlite3.Connection) -> int:
        return migrate(conn, self)


def migrate(conn: sqlite3.Connection, schema: Schema) -> int:
    """Bring `schema` up to its last migration on `conn`; returns the version.

    On a connection without a transaction open (`isolation_level=None`, as every connection
    here), each migration is its own BEGIN IMMEDIATE ... COMMIT. Inside a caller's
    transaction, each is a savepoint released into it: the caller's COMMIT makes them
    durable, and a failure rolls back that migration (and the caller decides about the rest).
    """
    current = schema.versions.current(conn)
    if current > schema.latest:
        raise SchemaTooNew(schema.name, current, schema.latest)
    for migration in schema.migrations[current:]:
        own = not conn.in_transaction
        conn.execute("BEGIN IMMEDIATE" if own else "SAVEPOINT schema_migration")
        try:
            # Another connection may have migrated meanwhile; the write lock is ours now.
            if schema.versions.current(conn) >= migration.version:
                conn.execute("COMMIT" if own else "RELEASE schema_migration")
                continue
            _apply(conn, migration)
            schema.versions.record(conn, migration)
        except BaseException as exc:
            if own:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute("ROLLBACK TO schema_migration")
                conn.execute("RELEASE schema_migration")
            if isinstance(exc, Exception) and not isinstance(exc, MigrationError):
                raise MigrationError(
                    f"{schema.name} migration {migration.version} "
                    f"({migration.description}) failed: {exc}"
                ) from exc
            raise
        conn.execute("COMMIT" if own else "RELEASE schema_migration")
        log.info(
            "database migrated",
            extra={
                "schema": schema.name,
                "version": migration.version,
                "change": migration.description,
            },
        )
    return schema.latest


def _apply(conn: sqlite3.Connection, migration: Migration) -> None:
    if isinstance(migration.change, str):
        for statement in split_statements(migration.change):
            conn.execute(statement)
    else:
        migration.change(conn)
    if not conn.in_transaction:
        raise MigrationError(
            f"migration {migration.version} ({migration.description}) ended the transaction"
        )
