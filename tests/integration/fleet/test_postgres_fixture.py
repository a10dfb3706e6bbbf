"""The PostgreSQL fixture is a real server: transactions and unique keys behave as the
aggregator relies on, and stop() removes the server and its directory."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support import postgres as support
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_transactions_and_unique_keys(postgres: PostgresServer) -> None:
    dsn = postgres.dsn("flexbridge")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE inbox (key text PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO inbox VALUES ('m1', 'first')")
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO inbox VALUES ('m1', 'again')")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO inbox VALUES ('m2', 'kept')")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO inbox VALUES ('m3', 'rolled back')")
                raise RuntimeError("crash before commit")
        except RuntimeError:
            pass
    with psycopg.connect(dsn) as other:
        rows = other.execute("SELECT key, body FROM inbox ORDER BY key").fetchall()
    assert rows == [("m1", "first"), ("m2", "kept")]


def test_stop_removes_server_and_directory() -> None:
    server, dsn = support.start_or_skip("scratch")
    root = server.root
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("scratch",)
    server.stop()
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)


def test_missing_postgres_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "find_bin_dir", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL 15 is not installed"):
        support.start_or_skip()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL 15 is not installed"):
        support.start_or_skip()


def test_as_root_without_a_postgres_user_says_so_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_such_user(name: str) -> None:
        raise KeyError(name)

    server = PostgresServer(bin_dir=Path(support.BIN_DIRS[0]))  # never reached: no user
    server._as_root = True
    monkeypatch.setattr(support.pwd, "getpwnam", no_such_user)
    with pytest.raises(RuntimeError, match="no 'postgres' user"):
        server.start()
    assert not server.root.exists()
