"""`RelaySession`'s deadline timer: one per deadline, not one per frame (the hot path).

The charger's websocket is an in-process stand-in that records what is written to it; the
upstream is never opened (the session's read loops are not run).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from ocpp_bridge import ocppj
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.local_controller import RelaySession
from ocpp_bridge.relay import Relay
from ocpp_bridge.upstream import UpstreamSettings, UpstreamTarget


class Socket:
    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.frames.append(frame)


def session() -> tuple[RelaySession, Socket]:
    socket = Socket()
    relay = Relay(ProtocolVersion.OCPP16, clock=lambda: datetime(2026, 12, 2, tzinfo=UTC))
    target = UpstreamTarget("ws://127.0.0.1:1/ocpp")
    relayed = RelaySession(
        "CP1",
        socket,  # type: ignore[arg-type]
        ProtocolVersion.OCPP16,
        target,
        None,
        UpstreamSettings(default=target),
        relay,
    )
    return relayed, socket


async def test_frames_that_leave_the_deadline_alone_keep_its_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    relayed, socket = session()
    answer = asyncio.ensure_future(relayed.send("GetConfiguration", {}, timeout_s=0.2))
    await asyncio.sleep(0)
    assert len(socket.frames) == 1
    assert len(armed) == 1
    for _ in range(5):
        await relayed._apply([])  # frames that change nothing pending, as a relayed Heartbeat
    assert len(armed) == 1
    # The one timer still fires at the deadline.
    assert isinstance(await asyncio.wait_for(answer, 5), ocppj.CallTimedOut)


async def test_the_charger_hears_its_answer_before_the_site_model_follows_in_order() -> None:
    """The site model's handler is not on the answer's way: the charger gets the CSMS's answer
    while the CALL is still being followed, and the CALLs are followed one at a time, in the
    order they were answered, whichever read loop answered them."""
    socket = Socket()
    relay = Relay(ProtocolVersion.OCPP16, clock=lambda: datetime(2026, 12, 2, tzinfo=UTC))
    target = UpstreamTarget("ws://127.0.0.1:1/ocpp")
    followed: list[str] = []
    release = asyncio.Event()

    async def observe(call: ocppj.Call, answer: dict[str, Any]) -> None:
        followed.append(f"start {call.unique_id}")
        if call.unique_id == "c1":
            await release.wait()
        followed.append(f"end {call.unique_id}")

    relayed = RelaySession(
        "CP1",
        socket,  # type: ignore[arg-type]
        ProtocolVersion.OCPP16,
        target,
        None,
        UpstreamSettings(default=target),
        relay,
        observe=observe,
    )
    relay.upstream_connected(0.0)
    await relayed._apply(relay.from_charger('[2,"c1","Heartbeat",{}]', 0.0))
    answered = asyncio.ensure_future(
        relayed._apply(relay.from_csms('[3,"c1",{"currentTime":"2026-12-02T00:00:00Z"}]', 0.1))
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert socket.frames == ['[3,"c1",{"currentTime":"2026-12-02T00:00:00Z"}]']
    assert followed == ["start c1"]
    # The charger's next CALL, answered here (the CSMS went away), waits for the first.
    relay.upstream_lost(0.2)
    local = asyncio.ensure_future(
        relayed._apply(relay.from_charger('[2,"c2","StatusNotification",{}]', 0.3))
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert socket.frames[-1] == '[3,"c2",{}]'
    assert followed == ["start c1"]
    release.set()
    await asyncio.wait_for(asyncio.gather(answered, local), 5)
    assert followed == ["start c1", "end c1", "start c2", "end c2"]
