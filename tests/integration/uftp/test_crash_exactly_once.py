"""kill -9 between "stored" and "sent": after a restart the outbox delivers every message, and a
peer that de-duplicates by MessageID processes each exactly once.

The AGR runs as a real child process. A proxy in front of our simulated DSO forwards every POST
but holds the answer to one of them, so at the kill there are messages the DSO has stored but the
AGR never saw confirmed (they go again: "Already Submitted") and messages stored in the outbox
but never sent (they go for the first time)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.ports import free_port
from uftp import keys, models, store
from uftp.dso import DsoParticipant, Received
from uftp.models import Role

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
COUNT = 6


class HoldingProxy:
    """Forwards POSTs to `target`; the `hold_at`-th one is forwarded, then never answered."""

    def __init__(self, port: int, target: str, hold_at: int) -> None:
        self.port, self.target, self.hold_at = port, target, hold_at
        self.bodies: list[bytes] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post(build.PATH, self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        assert self._session is not None
        async with self._session.post(
            self.target, data=body, headers={"Content-Type": "text/xml"}
        ) as answer:
            status = answer.status
        if len(self.bodies) == self.hold_at and not self.release.is_set():
            self.holding.set()
            await self.release.wait()  # the sender dies waiting for this 200
        return web.Response(status=status)


def child(
    mode: str, tmp_path: Path, port: int, proxy_port: int, dso_key: SigningKey
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.uftp_child",
            mode,
            "--count",
            str(COUNT),
            "--database",
            str(tmp_path / "agr.sqlite"),
            "--key",
            str(tmp_path / "agr.key"),
            "--port",
            str(port),
            "--peer-url",
            build.url(proxy_port),
            "--peer-key",
            keys.public_key_b64(dso_key),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def read_line(process: subprocess.Popen[str], expected: str, timeout_s: float = 60) -> None:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout_s)
    assert line.strip() == expected, f"child said {line!r}, exit code {process.poll()}"


@pytest.fixture
async def dso(tmp_path: Path) -> AsyncIterator[tuple[DsoParticipant, SigningKey, int]]:
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    keys.write_signing_key(tmp_path / "agr.key", agr_key)
    agr_port, dso_port = free_port(), free_port()
    participant = DsoParticipant(
        build.settings(
            build.DSO,
            Role.DSO,
            dso_key,
            dso_port,
            [build.peer(build.AGR, Role.AGR, agr_key, agr_port)],
        ),
        tmp_path / "dso.sqlite",
    )
    await participant.start()
    try:
        yield participant, dso_key, agr_port
    finally:
        await participant.stop()


@pytest.mark.parametrize("hold_at", [1, 3], ids=["nothing-confirmed", "some-confirmed"])
async def test_every_message_exactly_once_after_kill_9(
    tmp_path: Path, dso: tuple[DsoParticipant, SigningKey, int], hold_at: int
) -> None:
    participant, dso_key, agr_port = dso
    proxy = HoldingProxy(free_port(), participant.url, hold_at)
    await proxy.start()
    first = child("enqueue", tmp_path, agr_port, proxy.port, dso_key)
    try:
        await read_line(first, "stored")
        await asyncio.wait_for(proxy.holding.wait(), 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert len(proxy.bodies) == hold_at  # the rest is stored, never sent
        proxy.release.set()

        second = child("resume", tmp_path, agr_port, proxy.port, dso_key)
        try:
            await read_line(second, "all sent")
            assert second.wait(timeout=30) == 0
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        await proxy.stop()

    # The held message went twice, byte for byte; everything else once.
    assert len(proxy.bodies) == COUNT + 1
    assert proxy.bodies[hold_at - 1] == proxy.bodies[hold_at]
    # The DSO stored and processed each revision once, in order, and accepted all of them (a
    # second processing would have been rejected as a subordinate revision).
    await build.eventually(lambda: len(participant.handled) == COUNT)
    handled = [o for o in participant.handled if isinstance(o, Received)]
    revisions = [o.message.revision for o in handled if isinstance(o.message, models.DPrognosis)]
    assert revisions == list(range(1, COUNT + 1))
    assert all(o.accepted for o in handled)
    inbox = await participant.database.read(lambda c: store.inbound_messages(c))
    assert len(inbox) == COUNT
    assert len({m.message_id for m in inbox}) == COUNT
