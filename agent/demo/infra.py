"""The servers `flexbridge demo --fleet` needs, on loopback in a temporary directory: a 3-node
nats-server JetStream cluster (its files rendered by `agent.fleet.natsconf`, as an operator's
are) and a PostgreSQL 15 server (`initdb` and `pg_ctl` from Debian's postgresql-15).

Both are thrown away at the end. initdb refuses to run as root, so as root its directory
belongs to the `postgres` user and its commands run as `runuser -u postgres --`.

The tests start their servers with these launchers too (tests/support adds what only tests
need: fixtures, killing and restarting a node, looking into JetStream).
"""

from __future__ import annotations

import abc
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.fleet.natsconf import Cluster, Node, SiteCredentials, render_node

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
PG_MISSING = (
    "PostgreSQL 15 is not installed (initdb, pg_ctl looked for in "
    + ", ".join(PG_BIN_DIRS)
    + "): apt-get install postgresql-15"
)
NATS_MISSING = "nats-server is not installed (nor on PATH): apt-get install nats-server"
PG_USER = "postgres"  # who runs PostgreSQL when we are root


class InfraMissing(RuntimeError):
    """A server the fleet demo needs is not installed; the message says which package."""


class InfraError(RuntimeError):
    """A server did not start; the message carries the end of its log."""


class PortTaken(InfraError):
    """A server could not bind a port `free_port` had found free: another process took it in
    between (launchers started at the same moment pick ports at the same moment)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_nats_server() -> str | None:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_pg_bin() -> Path | None:
    for candidate in PG_BIN_DIRS:
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def jetstream_ready(base_url: str, healthz: str = "/healthz") -> bool:
    """The node at `base_url` (its monitoring port) answers `healthz` with 200 and knows its
    JetStream meta leader. A node can be healthy before the meta group has elected one, and
    until then every JetStream API request (a stream_info, a stream create) goes unanswered."""
    try:
        with urllib.request.urlopen(base_url + healthz, timeout=2) as answer:
            if answer.status != 200:
                return False
        with urllib.request.urlopen(base_url + "/jsz", timeout=2) as answer:
            meta = json.loads(answer.read() or b"{}").get("meta_cluster") or {}
    except (OSError, ValueError):  # HTTPError (503 while unhealthy) is an OSError
        return False
    return bool(meta.get("leader"))


def check_installed() -> None:
    """Both servers and the PostgreSQL driver installed, or InfraMissing naming the first
    missing package."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise InfraMissing(
            "psycopg (the aggregator's PostgreSQL driver) is not installed: "
            "pip install 'flexbridge[central]' (make demo-fleet does this)"
        )
    if find_nats_server() is None:
        raise InfraMissing(NATS_MISSING)
    if find_pg_bin() is None:
        raise InfraMissing(PG_MISSING)


class _Server(abc.ABC):
    """`with server:` starts it and stops it again, however the block ends."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalNats(_Server):
    """`size` nats-server nodes on `host` under `workdir`, every site of `sites` (id ->
    password) a user; with `leaf`, each node also takes leaf node connections."""

    def __init__(
        self,
        workdir: Path,
        sites: Mapping[str, str],
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        leaf: bool = False,
        domain: str | None = None,
    ) -> None:
        binary = find_nats_server()
        if binary is None:
            raise InfraMissing(NATS_MISSING)
        self.binary = binary
        self.workdir = workdir
        self.central_password = secrets.token_urlsafe(16)
        self.sites = [SiteCredentials(s, p) for s, p in sites.items()]
        self.cluster = Cluster(
            nodes=tuple(
                Node(
                    name=f"n{i + 1}",
                    host=host,
                    client_port=free_port(host),
                    cluster_port=free_port(host),
                    http_port=free_port(host),
                    leaf_port=free_port(host) if leaf else None,
                    store_dir=str(workdir / f"n{i + 1}" / "jetstream"),
                )
                for i in range(size)
            ),
            central_password=self.central_password,
            route_password=secrets.token_urlsafe(16),
            domain=domain,
        )
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def client_urls(self) -> list[str]:
        return self.cluster.client_urls

    def node_dir(self, index: int) -> Path:
        return self.workdir / self.cluster.nodes[index].name

    def log_path(self, index: int) -> Path:
        return self.node_dir(index) / "nats-server.log"

    def spawn(self, index: int) -> None:
        """Start node `index` (its configuration rendered anew; its store kept)."""
        directory = self.node_dir(index)
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "nats-server.conf"
        conf.write_text(render_node(self.cluster, index, self.sites))
        conf.chmod(0o600)
        with self.log_path(index).open("ab") as log:
            self.processes[index] = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout_s: float = 60.0, *, attempts: int = 3) -> None:
        """Every node, then wait until each is healthy (JetStream current, a meta leader);
        stops what it started if that fails. A node whose port was taken before it bound it
        gets the cluster new ports and another attempt."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise
                self._new_ports()

    def _new_ports(self) -> None:
        self.cluster = replace(
            self.cluster,
            nodes=tuple(
                replace(
                    n,
                    client_port=free_port(n.host),
                    cluster_port=free_port(n.host),
                    http_port=free_port(n.host),
                    leaf_port=None if n.leaf_port is None else free_port(n.host),
                )
                for n in self.cluster.nodes
            ),
        )

    def _start_once(self, timeout_s: float) -> None:
        try:
            for index in range(len(self.cluster.nodes)):
                self.spawn(index)
            deadline = time.monotonic() + timeout_s
            pending = list(range(len(self.cluster.nodes)))
            while pending:
                pending = [i for i in pending if not self._healthy(i)]
                if not pending:
                    return
                if time.monotonic() > deadline:
                    names = [self.cluster.nodes[i].name for i in pending]
                    raise InfraError(f"nats-server {names} not healthy after {timeout_s:.0f} s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def _healthy(self, index: int) -> bool:
        proc = self.processes[index]
        node = self.cluster.nodes[index]
        if proc is not None and proc.poll() is not None:
            log = self.log_path(index).read_text(errors="replace")
            error = PortTaken if "address already in use" in log[-800:] else InfraError
            raise error(f"nats-server {node.name} exited ({proc.returncode}): {log[-800:]}")
        return jetstream_ready(f"http://{node.host}:{node.http_port}")

    def stop(self) -> None:
        running = [p for p in self.processes if p is not None and p.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes = [None] * len(self.processes)


class LocalPostgres(_Server):
    """A PostgreSQL 15 cluster in a fresh directory `postgres` under `parent`, listening on
    `host` and a unix socket in that directory, trust auth; `settings` are further server
    settings (name -> value)."""

    def __init__(
        self,
        parent: Path,
        user: str = "flexbridge",
        *,
        host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise InfraMissing(PG_MISSING)
        self.bin_dir = found
        self.user = user
        self.host = host
        self.settings = dict(settings or {})
        self.port = free_port(host)
        self.root = parent / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        self._running = False

    def _run(self, args: Sequence[str], timeout_s: float = 90.0) -> None:
        command = [*args]
        if self._as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise InfraError(
                f"{Path(args[0]).name} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-800:]} {log[-800:]}".strip()
            )

    def start(self) -> None:
        self.root.mkdir(mode=0o700)
        self.socket_dir.mkdir()
        if self._as_root:
            try:
                owner = pwd.getpwnam(PG_USER)
            except KeyError:
                raise InfraMissing(
                    f"initdb refuses to run as root and there is no {PG_USER!r} user: "
                    "apt-get install postgresql-15"
                ) from None
            # The postgres user must reach its directory through the temporary one.
            os.chmod(self.root.parent, 0o711)
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
                "--no-sync",
            ]
        )
        options = " ".join(
            [
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host}",
                "-c fsync=off",  # a throw-away cluster
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
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
            ]
        )
        self._running = True

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database `name` (owned by the server's user) and return its DSN."""
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits, _")
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`: "fast" rolls back and shuts down cleanly, "immediate"
        just ends the server (its directory is thrown away anyway)."""
        if self._running:
            self._running = False
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )
