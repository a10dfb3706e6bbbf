"""The agent's SQLite database: one file in WAL mode, one writer thread, versioned migrations.

SQLite calls block, so none of them runs on the event loop: every read and write goes through a
single dedicated thread that owns the connection. One thread also serialises writers, which is
what SQLite wants anyway, and lets a caller put several changes (a business state change, an
outbound message in the outbox, an inbound message marked processed) into one transaction, the
basis of the agent's crash safety.

`synchronous=FULL`: a commit is on disk before we acknowledge anything (an HTTP 200 to the DSO, an
OCPP answer), so even a power cut loses nothing that was acknowledged. High-rate data (meter
samples) is aggregated in memory and written in batches, so the fsync per commit stays cheap.

Schema changes are numbered migrations; a database written by a newer flexbridge is refused
rather than guessed at. Libraries sharing the file (uftp's inbox/outbox) bring their own
migrations, run on the same connection at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.service import StartError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


class DatabaseError(RuntimeError):
    pass


class DatabaseOpenError(DatabaseError, StartError):
    """The file is not a database flexbridge can use (another program's, damaged, or from a
    newer version): the operator's to fix, reported in one line."""


def apply_migrations(conn: sqlite3.Connection, table: str, migrations: Sequence[Migration]) -> int:
    """Bring the schema tracked in `table` up to the last migration; returns the version."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise DatabaseError(f"{table}: migrations must be numbered 1..n, got {versions}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    row = conn.execute(f"SELECT MAX(version) FROM {table}").fetchone()
    current = int(row[0] or 0)
    if current > len(migrations):
        raise DatabaseError(
            f"the database schema ({table} version {current}) is newer than this flexbridge "
            f"knows ({len(migrations)}); run the newer version or restore a backup"
        )
    for migration in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {table} (version, description, applied_at) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (migration.version, migration.description),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info(
            "database migrated",
            extra={"schema": table, "version": migration.version, "change": migration.description},
        )
    return len(migrations)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit implicitly)."""
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        # A ';' inside a string literal or trigger body does not end the statement.
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n\t;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \n\t;"):
        raise DatabaseError(f"incomplete SQL statement in migration: {buffer.strip()[:60]}")
    return statements


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every user of the file needs."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise DatabaseError(f"{path}: cannot switch to WAL journal mode (got {mode})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


MigrationHook = Callable[[sqlite3.Connection], object]


class Database:
    """The agent's database as a service component; all access through one worker thread."""

    name = "database"

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Migration],
        extra_migrations: Sequence[MigrationHook] = (),
    ) -> None:
        self.path = path
        self._migrations = list(migrations)
        self._extra = list(extra_migrations)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread_id: int | None = None
        # (kind, seconds) of every transaction and read, for agent.metrics; called on the
        # database thread.
        self.observe: Callable[[str, float], None] = lambda _kind, _seconds: None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexbridge-db")
        try:
            await self._submit(self._open)
        except Exception:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> None:
        self._thread_id = threading.get_ident()
        try:
            conn = connect(self.path)
        except sqlite3.Error as exc:
            raise DatabaseOpenError(f"cannot open database {self.path}: {exc}") from exc
        self._conn = conn
        try:
            version = apply_migrations(conn, "agent_schema", self._migrations)
        except DatabaseError as exc:  # a schema newer than this version knows
            raise DatabaseOpenError(f"{self.path}: {exc}") from exc
        for hook in self._extra:
            hook(conn)
        log.info("database open", extra={"path": str(self.path), "schema": version})

    async def stop(self) -> None:
        if self._executor is None:
            return
        await self._submit(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _submit(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise DatabaseError("database is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    @property
    def connection(self) -> sqlite3.Connection:
        """For code already running on the database thread (inside `transaction`/`read`)."""
        if self._conn is None:
            raise DatabaseError("database is not open")
        if threading.get_ident() != self._thread_id:
            raise DatabaseError("the connection may only be used on the database thread")
        return self._conn

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one IMMEDIATE transaction; commit on return, roll back on error."""

        def run() -> T:
            conn = self.connection
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.observe("transaction", time.perf_counter() - started)
            return result

        return await self._submit(run)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` for reading (a consistent snapshot: one deferred transaction)."""

        def run() -> T:
            conn = self.connection
            started = time.perf_counter()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
                self.observe("read", time.perf_counter() - started)

        return await self._submit(run)
