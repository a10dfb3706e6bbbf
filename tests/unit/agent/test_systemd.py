"""sd_notify over a real datagram socket; the watchdog pings only while healthy."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.systemd import NamedProbe, Notifier, SystemdWatchdog, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notifier_sends_key_value_lines(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier(path)
    assert notifier.send(READY="1", STATUS="ok")
    assert received(sock) == ["READY=1\nSTATUS=ok"]
    notifier.close()


def test_notifier_without_socket_is_a_no_op() -> None:
    assert not Notifier("").enabled
    assert Notifier("").send(READY="1") is False


def test_abstract_socket_address() -> None:
    name = f"flexbridge-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert Notifier("@" + name).send(WATCHDOG="1")
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None


async def test_pings_only_while_probes_pass(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    healthy = True

    async def database() -> str | None:
        return None if healthy else "not answering"

    dog = SystemdWatchdog([NamedProbe("database", database)], Notifier(path), interval_s=0.02)
    await dog.start()
    await asyncio.sleep(0.1)
    first = received(sock)
    assert first[0].startswith("READY=1")
    assert sum("WATCHDOG=1" in m for m in first) >= 2

    healthy = False
    await asyncio.sleep(0.05)
    received(sock)  # drop the messages from the switch-over
    await asyncio.sleep(0.1)
    sick = received(sock)
    assert sick
    assert not any("WATCHDOG=1" in m for m in sick)
    assert all("STATUS=unhealthy: database: not answering" in m for m in sick)
    await dog.stop()
    assert received(sock)[-1].startswith("STOPPING=1")


async def test_a_hung_loop_stops_the_pings(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    dog = SystemdWatchdog([], Notifier(path), interval_s=0.02)
    await dog.start()
    await asyncio.sleep(0.1)
    received(sock)
    time.sleep(0.3)  # noqa: ASYNC251 -- a blocked loop is what this test is about
    assert not any("WATCHDOG=1" in m for m in received(sock))
    await asyncio.sleep(0.1)
    assert any("WATCHDOG=1" in m for m in received(sock))
    await dog.stop()


async def test_a_probe_that_hangs_counts_as_unhealthy() -> None:
    async def stuck() -> str | None:
        await asyncio.sleep(10)
        return None

    dog = SystemdWatchdog([NamedProbe("ocpp", stuck)], Notifier(""), probe_timeout_s=0.05)
    assert await dog.check() == ["ocpp: no answer within 0.05 s"]


def test_a_notify_socket_nobody_drains_costs_messages_not_the_loop(
    notify_socket: tuple[str, socket.socket],
) -> None:
    """systemd's notify queue is small; if it is full, a send fails at once (and says so)
    instead of blocking the event loop the watchdog pings from."""
    path, _ = notify_socket
    notifier = Notifier(path)
    results = [notifier.send(WATCHDOG="1") for _ in range(10_000)]
    notifier.close()
    assert results[0]
    assert not results[-1], "the queue filled up and the sends kept returning"
