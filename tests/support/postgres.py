"""A real PostgreSQL 15 server in a temporary directory, for tests and bench.

`initdb` and `pg_ctl` from /usr/lib/postgresql/15/bin (Debian's postgresql-15) make a cluster
in a fresh directory, listening on a free loopback port and on a unix socket in that
directory, trust authentication on loopback only. initdb refuses to run as root (CI runs as
root): then the directory belongs to the `postgres` user and every command runs as
`runuser -u postgres --`.

    with PostgresServer() as pg:
        pg.create_database("central"); psycopg.connect(pg.dsn("central"))

As a pytest fixture: `postgres` below (import it into a conftest.py): a running server with a
database `flexbridge`. Missing binaries skip the test locally and fail it under CI=true.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.ports import free_port

BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
MISSING = (
    "PostgreSQL 15 is not installed: `apt-get install postgresql-15` (make system-deps does "
    "this when run as root); initdb and pg_ctl are looked for in " + ", ".join(BIN_DIRS)
)
RUN_AS = "postgres"


def find_bin_dir() -> Path | None:
    for candidate in BIN_DIRS:
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class PostgresServer:
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
        self.bin_dir = found
        self.host = host
        self.user = user
        self.port = free_port(host)
        # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user
        # cannot traverse. mkdtemp makes a 0700 directory we then hand over.
        self.root = Path(tempfile.mkdtemp(prefix="flexbridge-pg-", dir=parent))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        self._running = False

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, args: Sequence[str], timeout_s: float = 60.0) -> str:
        command = [*args]
        if self._as_root:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log[-2000:]}"
            )
        return result.stdout

    def start(self) -> None:
        """initdb and pg_ctl start; on any failure the directory is removed again."""
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise

    def _start(self) -> None:
        self.socket_dir.mkdir()
        if self._as_root:
            try:
                owner = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise RuntimeError(
                    f"initdb refuses to run as root and there is no {RUN_AS!r} user to run it "
                    "as (Debian's postgresql-15 package creates it)"
                ) from None
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # a throw-away cluster: no fsync of the template files
            ]
        )
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout_s=90,
        )
        self._running = True

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` (owned by the server's user) and return its DSN."""
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits, _")
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self._running:
            try:
                self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                )
            finally:
                self._running = False
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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
