"""The servers `flexbridge demo --fleet` needs, on loopback in a temporary directory: a 3-node
nats-server JetStream cluster (its files rendered by `agent.fleet.natsconf`, as an operator's
are) and a PostgreSQL 15 server (`initdb` and `pg_ctl` from Debian's postgresql-15).

Both are thrown away at the end. initdb refuses to run as root, so as root its directory
belongs to the `postgres` user and its commands run as `runuser -u postgres --`.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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


class LocalNats:
    """Three nats-server nodes on loopback under `workdir`, every site of `sites` a user."""

    def __init__(self, workdir: Path, sites: dict[str, str]) -> None:
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
                    host="127.0.0.1",
                    client_port=free_port(),
                    cluster_port=free_port(),
                    http_port=free_port(),
                    store_dir=str(workdir / f"n{i + 1}" / "jetstream"),
                )
                for i in range(3)
            ),
            central_password=self.central_password,
            route_password=secrets.token_urlsafe(16),
        )
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def client_urls(self) -> list[str]:
        return self.cluster.client_urls

    def start(self, timeout_s: float = 60.0) -> None:
        for index, node in enumerate(self.cluster.nodes):
            directory = self.workdir / node.name
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "nats-server.conf"
            conf.write_text(render_node(self.cluster, index, self.sites))
            conf.chmod(0o600)
            with (directory / "nats-server.log").open("ab") as log:
                self._procs.append(
                    subprocess.Popen(
                        [self.binary, "-c", str(conf)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + timeout_s
        pending = list(range(len(self.cluster.nodes)))
        while pending:
            pending = [i for i in pending if not self._healthy(i)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise InfraError(f"nats-server not healthy after {timeout_s:.0f} s")
            time.sleep(0.2)

    def _healthy(self, index: int) -> bool:
        proc = self._procs[index]
        node = self.cluster.nodes[index]
        if proc.poll() is not None:
            log = (self.workdir / node.name / "nats-server.log").read_text(errors="replace")
            raise InfraError(f"nats-server {node.name} exited ({proc.returncode}): {log[-800:]}")
        base = f"http://{node.host}:{node.http_port}"
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
                if answer.status != 200:
                    return False
            with urllib.request.urlopen(base + "/jsz", timeout=2) as answer:
                meta = json.loads(answer.read() or b"{}").get("meta_cluster") or {}
        except (OSError, ValueError):
            return False
        return bool(meta.get("leader"))

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


class LocalPostgres:
    """A PostgreSQL 15 cluster in a fresh directory under `parent`, trust auth on loopback."""

    def __init__(self, parent: Path, user: str = "flexbridge") -> None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise InfraMissing(PG_MISSING)
        self.bin_dir = bin_dir
        self.user = user
        self.port = free_port()
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
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
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
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            )
