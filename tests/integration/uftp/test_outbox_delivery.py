"""Outbox delivery over real HTTP (the specification's "Transmission" rules): retries with
back-off on temporary failures, final 4xx, redirects, FIFO per peer, restarts, giving up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.ports import free_port
from uftp import models, store
from uftp.models import Role
from uftp.participant import AgrParticipant

pytestmark = pytest.mark.integration


@dataclass
class Sender:
    agr: AgrParticipant
    key: SigningKey
    peer_port: int
    clock: build.Clock
    failed: list[store.OutboundMessage]

    def test_message(self) -> models.TestMessage:
        return models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)

    async def outbound(self) -> list[store.OutboundMessage]:
        return await self.agr.database.read(lambda c: store.outbound_messages(c))

    async def status_of(self, message_id: str) -> store.OutboundStatus | None:
        row = await self.agr.database.read(lambda c: store.find_outbound(c, message_id))
        return None if row is None else row.status


def make_agr(
    tmp_path: Path,
    key: SigningKey,
    peer_port: int,
    clock: build.Clock,
    failed: list[store.OutboundMessage],
) -> AgrParticipant:
    settings = build.settings(
        build.AGR,
        Role.AGR,
        key,
        0,
        [build.peer(build.DSO, Role.DSO, SigningKey.generate(), peer_port)],
    )
    return AgrParticipant(
        settings, tmp_path / "agr.sqlite", clock=clock, on_delivery_failed=failed.append
    )


@pytest.fixture
async def sender(tmp_path: Path) -> AsyncIterator[Sender]:
    key, port, clock, failed = SigningKey.generate(), free_port(), build.Clock(), []
    agr = make_agr(tmp_path, key, port, clock, failed)
    await agr.start()
    try:
        yield Sender(agr, key, port, clock, failed)
    finally:
        await agr.stop()


@pytest.mark.parametrize("temporary", [503, 500, 404, 429, 419])
async def test_temporary_failures_are_retried_with_identical_bytes(
    sender: Sender, temporary: int
) -> None:
    peer = build.RecordingPeer(sender.peer_port, script=[temporary, temporary])
    await peer.start()
    try:
        message = sender.test_message()
        await sender.agr.send(message)
        await build.eventually(lambda: sender.status_of(message.message_id), timeout_s=10)

        async def sent() -> bool:
            return await sender.status_of(message.message_id) is store.OutboundStatus.SENT

        await build.eventually(sent)
        assert len(peer.bodies) == 3
        assert peer.bodies[0] == peer.bodies[1] == peer.bodies[2]
        assert peer.headers[0]["Content-Type"] == "text/xml; charset=utf-8"
        (row,) = await sender.outbound()
        assert row.attempts == 3
        assert row.last_error is None
    finally:
        await peer.stop()


async def test_final_client_error_fails_the_message_and_the_queue_moves_on(sender: Sender) -> None:
    peer = build.RecordingPeer(sender.peer_port, script=[400])
    await peer.start()
    try:
        first, second = sender.test_message(), sender.test_message()
        await sender.agr.send(first)
        await sender.agr.send(second)

        async def second_sent() -> bool:
            return await sender.status_of(second.message_id) is store.OutboundStatus.SENT

        await build.eventually(second_sent)
        assert await sender.status_of(first.message_id) is store.OutboundStatus.FAILED
        await build.eventually(lambda: sender.failed)
        assert [m.message_id for m in sender.failed] == [first.message_id]
        assert sender.failed[0].last_error is not None
        assert "HTTP 400" in sender.failed[0].last_error
        assert len(peer.bodies) == 2
    finally:
        await peer.stop()


async def test_peer_down_then_up(sender: Sender) -> None:
    message = sender.test_message()
    await sender.agr.send(message)  # nobody listens: connection refused, retried

    async def attempted_twice() -> bool:
        rows = await sender.outbound()
        return rows[0].attempts >= 2

    await build.eventually(attempted_twice)
    (row,) = await sender.outbound()
    assert row.status is store.OutboundStatus.PENDING
    assert row.last_error is not None
    peer = build.RecordingPeer(sender.peer_port)
    await peer.start()
    try:

        async def sent() -> bool:
            return await sender.status_of(message.message_id) is store.OutboundStatus.SENT

        await build.eventually(sent)
        assert len(peer.bodies) == 1
    finally:
        await peer.stop()


async def test_fifo_per_peer(sender: Sender) -> None:
    peer = build.RecordingPeer(sender.peer_port, script=[503, 503])
    await peer.start()
    try:
        messages = [sender.test_message() for _ in range(4)]
        for message in messages:
            await sender.agr.send(message)
        await build.eventually(lambda: len(peer.bodies) >= 6)
        received = [m.message_id for m in peer.messages(sender.key)]
        # The first one is retried until it passes; the others follow in order.
        assert received == [messages[0].message_id] * 3 + [m.message_id for m in messages[1:]]
    finally:
        await peer.stop()


async def test_redirects_are_followed_with_the_same_post(sender: Sender) -> None:
    target_port = free_port()
    peer = build.RecordingPeer(target_port)
    await peer.start()

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPTemporaryRedirect(build.url(target_port))

    app = web.Application()
    app.router.add_post(build.PATH, redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sender.peer_port).start()
    try:
        message = sender.test_message()
        await sender.agr.send(message)
        await build.eventually(lambda: len(peer.bodies) == 1)
        assert peer.messages(sender.key)[0].message_id == message.message_id
    finally:
        await runner.cleanup()
        await peer.stop()


async def test_gives_up_after_the_retry_window(sender: Sender) -> None:
    peer = build.RecordingPeer(sender.peer_port, status=503)
    await peer.start()
    try:
        message = sender.test_message()
        await sender.agr.send(message)
        await build.eventually(lambda: len(peer.bodies) >= 1)
        sender.clock.offset = timedelta(hours=7)  # beyond the 6 h window

        async def failed() -> bool:
            return await sender.status_of(message.message_id) is store.OutboundStatus.FAILED

        await build.eventually(failed)
        await build.eventually(lambda: sender.failed)  # the application is told
        assert [m.message_id for m in sender.failed] == [message.message_id]
    finally:
        await peer.stop()


async def test_pending_messages_survive_a_restart(tmp_path: Path) -> None:
    key, port, clock, failed = SigningKey.generate(), free_port(), build.Clock(), []
    first_run = make_agr(tmp_path, key, port, clock, failed)
    await first_run.start()
    messages = [
        models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO) for _ in range(3)
    ]
    for message in messages:
        await first_run.send(message)
    await first_run.stop()  # the peer was never reachable

    peer = build.RecordingPeer(port)
    await peer.start()
    second_run = make_agr(tmp_path, key, port, clock, failed)
    await second_run.start()
    try:
        await build.eventually(lambda: len(peer.bodies) == 3)
        assert [m.message_id for m in peer.messages(key)] == [m.message_id for m in messages]
    finally:
        await second_run.stop()
        await peer.stop()
