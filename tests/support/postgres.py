"""A real PostgreSQL 15 server in a temporary directory, for tests and bench.

The product's launcher (`agent.demo.infra.LocalPostgres`, what `flexbridge demo --fleet`
starts) makes the cluster: `initdb` and `pg_ctl` from /usr/lib/postgresql/15/bin (Debian's
postgresql-15), a free loopback port and a unix socket in its directory, trust
authentication on loopback only, as the `postgres` user when run as root (CI runs as root).
What is here is what only tests need: a scratch directory outside pytest's tmp_path, removed
again however the server ends, more connections than the default, and the fixture.

    with PostgresServer() as pg:
        pg.create_database("central"); psycopg.connect(pg.dsn("central"))

As a pytest fixture: `postgres` below (import it into a conftest.py): a running server with a
database `flexbridge`. Missing binaries skip the test locally and fail it under CI=true.
"""

from __future__ import annotations

import os
import pwd  # noqa: F401  (tests replace pwd.getpwnam through this module)
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo.infra import PG_BIN_DIRS, LocalPostgres
from agent.demo.infra import find_pg_bin as find_bin_dir

BIN_DIRS = PG_BIN_DIRS
MISSING = (
    "PostgreSQL 15 is not installed: `apt-get install postgresql-15` (make system-deps does "
    "this when run as root); initdb and pg_ctl are looked for in " + ", ".join(BIN_DIRS)
)
# Tests run many processes on one server, each with a connection per task.
MAX_CONNECTIONS = 200


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class PostgresServer(LocalPostgres):
    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        parent: Path | None = None,
        host: str = "127.0.0.1",
        user: str = "flexbridge",
    ) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise FileNotFoundError(MISSING)
        # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user
        # cannot traverse.
        self.scratch = Path(tempfile.mkdtemp(prefix="flexbridge-pg-", dir=parent))
        super().__init__(
            self.scratch,
            user,
            host=host,
            settings={"max_connections": str(MAX_CONNECTIONS)},
            bin_dir=found,
        )

    def start(self) -> None:
        """initdb and pg_ctl start; on any failure the directory is removed again."""
        try:
            super().start()
        except BaseException:
            self._cleanup()
            raise

    def stop(self, mode: str = "immediate") -> None:
        try:
            super().stop(mode)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def start_or_skip(database: str = "flexbridge") -> tuple[PostgresServer, str]:
    """A started server and the DSN of a fresh `database`; no PostgreSQL: skip, or fail
    under CI=true."""
    if find_bin_dir() is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    server = PostgresServer()
    server.start()
    try:
        dsn = server.create_database(database)
    except BaseException:
        server.stop()
        raise
    return server, dsn


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL with an empty database `flexbridge` (`postgres.dsn("flexbridge")`)."""
    server, _ = start_or_skip("flexbridge")
    try:
        yield server
    finally:
        server.stop()
