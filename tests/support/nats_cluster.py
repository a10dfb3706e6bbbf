"""A real 3-node nats-server JetStream cluster on loopback, for tests and bench.

The product's launcher (`agent.demo.infra.LocalNats`, what `flexbridge demo --fleet` starts)
runs the nodes: free ports (client, cluster routes, HTTP monitoring, here also leaf nodes), a
JetStream file store under the cluster's directory and a configuration rendered by
`agent.fleet.natsconf`, the same code that renders an operator's files. What is here is what
only tests need: `kill(i)` is a SIGKILL (no clean shutdown, no flush), `restart(i)` starts the
node again on the same ports and store, and the monitoring endpoints are read for health,
stream leaders and replicas.

    with NatsCluster(workdir, sites=[...]) as cluster:
        cluster.client_urls, cluster.stream_leader("FLEET_CMD"), cluster.kill(1), ...

As a pytest fixture: `nats_cluster` below (import it into a conftest.py). A missing
nats-server skips the test locally and fails it under CI=true.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.demo.infra import LocalNats, find_nats_server, jetstream_ready
from agent.fleet.natsconf import ACCOUNT, Node

MISSING = (
    "nats-server is not installed: `apt-get install nats-server` (make system-deps does this "
    "when run as root), or put nats-server on PATH"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def site_password(site: str) -> str:
    """The test cluster's password of a site: derived, so every process of a test knows it."""
    return f"pw-{site}-secret"


class NatsCluster(LocalNats):
    def __init__(
        self,
        workdir: Path,
        sites: Sequence[str] = (),
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        passwords: Mapping[str, str] | None = None,
        domain: str | None = None,
    ) -> None:
        if find_nats_server() is None:
            raise FileNotFoundError(MISSING)
        chosen = passwords or {}
        super().__init__(
            workdir,
            {s: chosen.get(s) or site_password(s) for s in sites},
            size=size,
            host=host,
            leaf=True,
            domain=domain,
        )

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.cluster.nodes

    @property
    def leaf_urls(self) -> list[str]:
        return [f"nats-leaf://{n.host}:{n.leaf_port}" for n in self.nodes]

    def kill(self, index: int) -> None:
        """SIGKILL node `index`: no flush, no goodbye to its peers."""
        proc = self.processes[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.processes[index] = None

    def restart(self, index: int, timeout_s: float = 30.0, *, assets: bool = True) -> float:
        """Start node `index` again (killing it first if it runs) and wait until it is
        healthy (`healthy` says what `assets` means); return how long that took."""
        self.kill(index)
        self.spawn(index)
        return self.wait_healthy([index], timeout_s=timeout_s, assets=assets)

    def running(self, index: int) -> bool:
        proc = self.processes[index]
        return proc is not None and proc.poll() is None

    def pid(self, index: int) -> int | None:
        proc = self.processes[index]
        return proc.pid if proc is not None and proc.poll() is None else None

    # --- monitoring -----------------------------------------------------------------------
    def _get(self, index: int, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
        node = self.nodes[index]
        url = f"http://{node.host}:{node.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def healthz(self, index: int) -> tuple[int, Any]:
        """The node's /healthz answer: HTTP status and body (which asset is not current)."""
        return self._get(index, "/healthz")

    def healthy(self, index: int, *, assets: bool = True) -> bool:
        """`/healthz` says OK and the node knows the JetStream meta leader.

        With `assets` (the default) `/healthz` also requires every stream and consumer
        replica on the node to be current. nats-server 2.9.10 keeps an idle consumer that the
        node led before a SIGKILL "not current" on it after a restart until that consumer's
        next delivery or ack, so a test that restarts a node and leaves consumers idle waits
        with `assets=False` (`/healthz?js-server-only=true`) and then for what it needs
        (`wait_caught_up`)."""
        if not self.running(index):
            return False
        node = self.nodes[index]
        healthz = "/healthz" if assets else "/healthz?js-server-only=true"
        return jetstream_ready(f"http://{node.host}:{node.http_port}", healthz)

    def wait_healthy(
        self,
        indexes: Sequence[int] | None = None,
        timeout_s: float = 30.0,
        *,
        assets: bool = True,
    ) -> float:
        """Block until every node in `indexes` (all running ones by default) is healthy;
        return how long that took."""
        wanted = list(indexes) if indexes is not None else list(range(len(self.nodes)))
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            pending = [i for i in wanted if not self.healthy(i, assets=assets)]
            if not pending:
                return time.monotonic() - started
            for i in pending:
                proc = self.processes[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server {self.nodes[i].name} exited with {proc.returncode}:\n"
                        + self._log_tail(i)
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nats-server nodes {[self.nodes[i].name for i in pending]} not healthy "
                    f"after {timeout_s} s:\n" + "\n".join(self._log_tail(i) for i in pending)
                )
            time.sleep(0.1)

    def _log_tail(self, index: int, lines: int = 20) -> str:
        path = self.log_path(index)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _stream_details(self, index: int, stream: str) -> dict[str, Any] | None:
        status, body = self._get(index, f"/jsz?acc={ACCOUNT}&streams=true&config=true")
        if status != 200 or not isinstance(body, dict):
            return None
        for account in body.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return dict(detail)
        return None

    def stream_cluster(self, stream: str) -> dict[str, Any] | None:
        """The stream's cluster info (leader, replicas with `current` and `lag`) as a running
        node sees it, or None if no running node knows the stream yet."""
        for i in range(len(self.nodes)):
            if not self.running(i):
                continue
            try:
                detail = self._stream_details(i, stream)
            except (OSError, ValueError):
                continue
            if detail and detail.get("cluster", {}).get("leader"):
                return dict(detail["cluster"])
        return None

    def stream_leader(self, stream: str, timeout_s: float = 10.0) -> int:
        """Index of the node that leads `stream` now (waits for an election if needed)."""
        deadline = time.monotonic() + timeout_s
        names = [n.name for n in self.nodes]
        while True:
            info = self.stream_cluster(stream)
            if info is not None and info["leader"] in names:
                leader = names.index(info["leader"])
                if self.running(leader):
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout_s} s")
            time.sleep(0.1)

    def stream_messages(self, index: int, stream: str) -> int | None:
        """How many messages node `index` holds for `stream` (its own replica's state)."""
        detail = self._stream_details(index, stream)
        if detail is None:
            return None
        return int(detail.get("state", {}).get("messages", 0))

    def stream_last_seq(self, index: int, stream: str) -> int | None:
        detail = self._stream_details(index, stream)
        if detail is None:
            return None
        return int(detail.get("state", {}).get("last_seq", 0))

    def wait_caught_up(self, index: int, stream: str, timeout_s: float = 30.0) -> float:
        """Block until node `index`'s replica of `stream` holds what the leader's holds (same
        last sequence and message count); return how long that took. `/healthz` alone says
        the node is up and following, not that it has copied everything yet."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            leader = self.stream_leader(stream, timeout_s=max(0.1, deadline - time.monotonic()))
            try:
                mine = (self.stream_last_seq(index, stream), self.stream_messages(index, stream))
                theirs = (
                    self.stream_last_seq(leader, stream),
                    self.stream_messages(leader, stream),
                )
            except (OSError, ValueError):
                mine, theirs = (None, None), (0, 0)
            if mine == theirs and mine[0] is not None:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.nodes[index].name}'s replica of {stream} at (last_seq, messages) "
                    f"{mine}, leader {self.nodes[leader].name} at {theirs} after {timeout_s} s"
                )
            time.sleep(0.1)

    def rss_mb(self) -> list[float]:
        """VmRSS of each running node, in MiB."""
        pids = [self.pid(i) for i in range(len(self.nodes))]
        return [_vmrss_kib(pid) / 1024 for pid in pids if pid is not None]


def _vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def start_or_skip(workdir: Path, sites: Sequence[str] = ()) -> NatsCluster:
    """A started cluster; without nats-server: skip the test, or fail it under CI=true."""
    if find_nats_server() is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    cluster = NatsCluster(workdir, sites)
    cluster.start()
    return cluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A running 3-node cluster with users for sites `a`, `b` and `c`."""
    workdir = tmp_path / "nats"
    workdir.mkdir()
    cluster = start_or_skip(workdir, ["a", "b", "c"])
    try:
        yield cluster
    finally:
        cluster.stop()
