"""uftp's access to the SQLite file, off the event loop, with group commit.

The endpoint must not answer 200 before the message is on disk (synchronous=FULL): a 200 tells
the DSO it need not resend. One fsync per message would cap throughput at the disk's fsync
rate, so writes are group-committed: every write queued while the previous commit was running
goes into the next transaction together, each in its own SAVEPOINT so one failing write does
not undo the others, and every caller is answered only after that COMMIT returned.

uftp needs only `SqliteStore` (`write` and `read`). Standalone, a participant owns a
`Database`: one dedicated thread that owns the one connection; the event loop only awaits
futures. An application that keeps its own tables in the same file passes its own store
instead, so the file has exactly one writer connection and "database is locked" cannot happen
between two writers of the same process (`GroupCommit` and `commit_batch` let such a store
batch its writes the same way).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from uftp.store import migrate

T = TypeVar("T")

Work = Callable[[sqlite3.Connection], Any]
Outcomes = list[tuple[bool, Any]]


class SqliteStore(Protocol):
    """Where uftp keeps its inbox and outbox: durable writes and consistent reads."""

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction and return once it is durably committed."""
        ...

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` outside any write transaction."""
        ...


def connect(path: Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection configured the way uftp's durability promises need (WAL, synchronous=FULL,
    explicit transactions). Also what tests and tools should use on the same file."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_s)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def run_in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """BEGIN IMMEDIATE; work; COMMIT (ROLLBACK on error). For callers outside the group commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def commit_batch(conn: sqlite3.Connection, works: list[Work]) -> Outcomes:
    """All works in one transaction; (True, result) or (False, exception) for each.

    Optimistically without savepoints: every statement is a trip through the GIL, which the
    database thread must win back from a busy event loop each time. Only if a work fails is
    the batch redone with a savepoint around each work. An exception from BEGIN or COMMIT
    (disk full, I/O error) propagates: then nobody's write is durable."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes: Outcomes = [(True, work(conn)) for work in works]
        except Exception:
            conn.execute("ROLLBACK")
            if len(works) == 1:
                raise
            return _commit_isolated(conn, works)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _commit_isolated(conn: sqlite3.Connection, works: list[Work]) -> Outcomes:
    outcomes: Outcomes = []
    conn.execute("BEGIN IMMEDIATE")
    for work in works:
        conn.execute("SAVEPOINT uftp_op")
        try:
            outcomes.append((True, work(conn)))
        except Exception as exc:
            conn.execute("ROLLBACK TO uftp_op")
            outcomes.append((False, exc))
        conn.execute("RELEASE uftp_op")
    conn.execute("COMMIT")
    return outcomes


class GroupCommit:
    """Collects writes while a commit runs and commits them together with `run_batch` (which
    runs `commit_batch` on the thread owning the connection)."""

    def __init__(self, run_batch: Callable[[list[Work]], Awaitable[Outcomes]]) -> None:
        self._run_batch = run_batch
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sqlite-group-commit")
        return await future

    async def drain(self) -> None:
        """Wait until every queued write has been committed (or failed)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self._run_batch([work for work, _ in batch])
            except BaseException as exc:  # the COMMIT itself failed: nobody's write is durable
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


class Database:
    """uftp's own database (a standalone participant): `write` (group-committed) and `read`
    on one thread that owns the only connection."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._commits = GroupCommit(self._run_batch)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uftp-db")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._open)

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, busy_timeout_s=self._busy_timeout_s)
        migrate(conn)  # each migration in its own transaction (uftp.migrations)
        return conn

    async def close(self) -> None:
        await self._commits.drain()
        if self._executor is not None:
            conn, self._conn = self._conn, None
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        return self._conn

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on the database thread outside any write transaction."""
        conn = self._connection()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, query, conn)

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction and return once it is durably committed."""
        self._connection()
        return await self._commits.write(work)

    async def _run_batch(self, works: list[Work]) -> Outcomes:
        conn = self._connection()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, commit_batch, conn, works)
