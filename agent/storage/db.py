"""The agent's SQLite database: one file in WAL mode, one writer thread, versioned migrations.

SQLite calls block, so none of them runs on the event loop: every read and write goes through a
single dedicated thread that owns the connection. One thread also serialises writers, which is
what SQLite wants anyway, and lets a caller put several changes (a business state change, an
outbound message in the outbox, an inbound message marked processed) into one transaction, the
basis of the agent's crash safety.

A write that fails because of the storage (a full or read-only disk, an I/O error) raises as
before, and is also reported through `on_storage`; while that lasts, a tiny probe write every
`probe_interval_s` notices when the storage works again, so the fault clears by itself even
when nothing else writes.

This is the only connection the agent opens on its file: uftp's inbox and outbox are written
through it too (`write`, group-committed the way uftp's own store does it), so no second
writer ever waits on SQLite's lock and "database is locked" cannot happen inside the agent.

`synchronous=FULL`: a commit is on disk before we acknowledge anything (an HTTP 200 to the DSO, an
OCPP answer), so even a power cut loses nothing that was acknowledged. High-rate data (meter
samples) is aggregated in memory and written in batches, so the fsync per commit stays cheap.

Schema changes are numbered migrations (`uftp.migrations`: each in one transaction with its
version bump); a database written by a newer flexbridge is refused rather than guessed at.
Libraries sharing the file (uftp's inbox/outbox, the forecaster's table) bring their own
migrations as data (a `Schema` with its own version table), applied by the same runner on the
same connection at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from agent.runtime.service import StartError
from uftp.database import GroupCommit, Outcomes, Work, commit_batch
from uftp.migrations import (
    Migration,
    MigrationError,
    Schema,
    SchemaTooNew,
    VersionLog,
    migrate,
)
from uftp.participant import is_transient

# Migration and Schema are the runner's (uftp.migrations), re-exported for the agent's schemas.
__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseOpenError",
    "Migration",
    "Schema",
    "agent_schema",
    "apply_migrations",
    "apply_schema",
    "connect",
    "describe_storage_error",
    "is_storage_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class DatabaseError(RuntimeError):
    pass


# SQLite primary result codes that mean the storage, not the statement, failed.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 13, 14
_STORAGE_CODES = frozenset({_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN})


def is_storage_error(error: BaseException) -> bool:
    """A write failed because of the disk (full, read-only, I/O), not because of the data."""
    if isinstance(error, OSError):
        return True
    if not isinstance(error, sqlite3.Error):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _STORAGE_CODES
    return is_transient(error) and "lock" not in str(error).lower()


def describe_storage_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"writes fail: {text}"


class DatabaseOpenError(DatabaseError, StartError):
    """The file is not a database flexbridge can use (another program's, damaged, or from a
    newer version): the operator's to fix, reported in one line."""


def agent_schema(table: str, migrations: Sequence[Migration]) -> Schema:
    """The agent's way to keep a schema version: one row per applied migration in `table`."""
    try:
        return Schema(table, migrations, VersionLog(table))
    except MigrationError as exc:
        raise DatabaseError(str(exc)) from exc


def apply_migrations(conn: sqlite3.Connection, table: str, migrations: Sequence[Migration]) -> int:
    """Bring the schema tracked in `table` up to the last migration; returns the version."""
    return apply_schema(conn, agent_schema(table, migrations))


def apply_schema(conn: sqlite3.Connection, schema: Schema) -> int:
    """`uftp.migrations.migrate` (each migration in one transaction with its version bump),
    its errors as `DatabaseError`s."""
    try:
        return migrate(conn, schema)
    except SchemaTooNew as exc:
        raise DatabaseError(
            f"the database schema ({exc.schema} version {exc.found}) is newer than this "
            f"flexbridge knows ({exc.known}); run the newer version or restore a backup"
        ) from exc
    except MigrationError as exc:
        raise DatabaseError(str(exc)) from exc


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


# Another owner's tables in the file (uftp's inbox and outbox, the forecaster's): its
# `Schema`, applied by the same runner under its own version, or a callable that applies it.
MigrationHook = Callable[[sqlite3.Connection], object]


class Database:
    """The agent's database as a service component; all access through one worker thread."""

    name = "database"

    def __init__(
        self,
        path: Path,
        migrations: Sequence[Migration],
        extra_migrations: Sequence[Schema | MigrationHook] = (),
        *,
        probe_interval_s: float = 5.0,
    ) -> None:
        self.path = path
        self._migrations = list(migrations)
        self._extra = list(extra_migrations)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread_id: int | None = None
        self._commits = GroupCommit(self._run_batch)
        # (kind, seconds) of every transaction and read, for agent.interfaces.metrics; called on the
        # database thread.
        self.observe: Callable[[str, float], None] = lambda _kind, _seconds: None
        # After each write on the event loop: the storage error it met, or None when it
        # committed (agent.runtime.faults turns this into the storage fault).
        self.on_storage: Callable[[BaseException | None], None] = lambda _error: None
        self.storage_error: BaseException | None = None
        self.write_failures = 0
        self.probe_interval_s = probe_interval_s
        self._probe: asyncio.Task[None] | None = None

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
            for extra in self._extra:
                if isinstance(extra, Schema):
                    apply_schema(conn, extra)
                else:
                    extra(conn)
        except DatabaseError as exc:  # a schema newer than this version knows, a failed step
            raise DatabaseOpenError(f"{self.path}: {exc}") from exc
        log.info("database open", extra={"path": str(self.path), "schema": version})

    async def stop(self) -> None:
        if self._executor is None:
            return
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        await self._commits.drain()
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

        return await self._watched(self._submit(run))

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

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a transaction shared with the other writes queued meanwhile (one
        fsync for all, each in a savepoint of its own when one fails); returns once committed.
        For many small independent writes (uftp's inbox and outbox); `transaction` for a
        business step."""
        if self._executor is None:
            raise DatabaseError("database is not started")
        return await self._watched(self._commits.write(fn))

    async def _watched(self, write: Awaitable[T]) -> T:
        try:
            result = await write
        except Exception as exc:
            if is_storage_error(exc):
                self._storage_failed(exc)
            raise
        if self.storage_error is not None:
            self.storage_error = None
            log.warning("database writes work again", extra={"path": str(self.path)})
        self.on_storage(None)
        return result

    def _storage_failed(self, error: BaseException) -> None:
        self.write_failures += 1
        if self.storage_error is None:
            log.error(
                "database writes fail; the agent keeps running on what it has in memory",
                extra={"path": str(self.path), "error": str(error)},
            )
        self.storage_error = error
        self.on_storage(error)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_writable(), name="db-probe")

    async def _probe_until_writable(self) -> None:
        """While writes fail, try a tiny one now and then: the fault clears when space or
        write access returns, even if nothing else would write for a while."""
        while self.storage_error is not None:
            await asyncio.sleep(self.probe_interval_s)
            with contextlib.suppress(Exception):
                await self.transaction(_probe_write)

    async def _run_batch(self, works: list[Work]) -> Outcomes:
        def run() -> Outcomes:
            started = time.perf_counter()
            outcomes = commit_batch(self.connection, works)
            self.observe("transaction", time.perf_counter() - started)
            return outcomes

        return await self._submit(run)


def _probe_write(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)"
    )
    conn.execute("INSERT OR REPLACE INTO storage_probe (id, at) VALUES (1, ?)", (time.time(),))
