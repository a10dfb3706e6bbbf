"""The cluster fixture is three real nats-server nodes: JetStream replicates across them, a
SIGKILLed leader is replaced, a restarted node catches up, stop() leaves nothing running."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from tests.support import nats_cluster as support
from tests.support.nats_cluster import NatsCluster, process_gone

pytestmark = pytest.mark.integration


async def _quiet(_exc: Exception) -> None:
    """Connection errors while a node is down are expected here."""


async def _publish_retrying(js: JetStreamContext, msg_id: str, data: bytes) -> None:
    """A request written to the socket of a node just killed gets no answer: publish again
    with the same Nats-Msg-Id (the stream drops the duplicate) until one is confirmed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            await js.publish("smoke.x", data, timeout=2, headers={"Nats-Msg-Id": msg_id})
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_replicated_stream_survives_leader_kill_and_restart(
    nats_cluster: NatsCluster,
) -> None:
    assert all(nats_cluster.healthy(i) for i in range(3))
    nc = await nats.connect(
        nats_cluster.client_urls,
        user="central",
        password=nats_cluster.central_password,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        error_cb=_quiet,
    )
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="SMOKE", subjects=["smoke.>"], num_replicas=3)
        for i in range(10):
            await js.publish("smoke.x", str(i).encode())
        leader = nats_cluster.stream_leader("SMOKE")

        nats_cluster.kill(leader)
        assert not nats_cluster.running(leader)
        new_leader = nats_cluster.stream_leader("SMOKE", timeout_s=20)
        assert new_leader != leader
        for i in range(10, 20):
            await _publish_retrying(js, f"m{i}", str(i).encode())

        nats_cluster.restart(leader)
        assert nats_cluster.healthy(leader)
        nats_cluster.wait_caught_up(leader, "SMOKE")
        info = await js.stream_info("SMOKE")
        assert info.state.messages == 20
    finally:
        await nc.close()
    # The restarted node's own replica holds all 20 (it caught up from the others).
    assert nats_cluster.stream_messages(leader, "SMOKE") == 20
    pids = [nats_cluster.pid(i) for i in range(3)]
    nats_cluster.stop()
    assert all(not nats_cluster.running(i) for i in range(3))
    assert all(pid is not None and process_gone(pid) for pid in pids)


def test_missing_server_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "find_nats_server", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nats-server is not installed"):
        support.start_or_skip(tmp_path)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="nats-server is not installed"):
        support.start_or_skip(tmp_path)


def test_a_port_taken_before_the_node_binds_it_gets_the_cluster_new_ports(
    tmp_path: Path,
) -> None:
    """Parallel launchers pick free ports at the same moment: a port another process takes
    between the pick and the bind is a retry with new ports, not a failed start."""
    if support.find_nats_server() is None:
        pytest.skip(support.MISSING)
    cluster = NatsCluster(tmp_path / "nats", ["a"])
    taken = cluster.nodes[1].client_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            cluster.start()
            assert cluster.nodes[1].client_port != taken
            assert all(cluster.healthy(i) for i in range(len(cluster.nodes)))
            log = cluster.log_path(1).read_text(errors="replace")
            assert "address already in use" in log
        finally:
            cluster.stop()
