"""In-process stand-ins for a charger's websocket and the central system (unit tests only)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from ocpp_bridge.connection import CONNECTION_CLASSES, Connection
from ocpp_bridge.events import Event, ProtocolVersion
from ocpp_bridge.model import ChargerModel

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[list[Any]] = []
        self.closed_with: tuple[int, str] | None = None
        self._sent_more = asyncio.Event()

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))
        self._sent_more.set()

    async def until_sent(self, count: int) -> list[list[Any]]:
        """The frames sent, once there are at least `count` of them."""
        while len(self.sent) < count:
            self._sent_more.clear()
            await self._sent_more.wait()
        return self.sent

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)


class FakeHost:
    heartbeat_interval_s = 300

    def __init__(self) -> None:
        self.events: list[Event] = []

    def clock(self) -> datetime:
        return T0

    def publish(self, events: list[Event]) -> None:
        self.events += events

    def charger_ready(self, connection: Connection) -> None:
        return None

    def transaction_started(self, connection: Connection, evse_id: int) -> None:
        return None

    def new_transaction_id(self, charger_id: str) -> int:
        return 1


def connection_for(
    version: ProtocolVersion, *, max_calls_per_s: float = 1e9, call_burst: int = 10**9
) -> tuple[Connection, FakeSocket]:
    socket = FakeSocket()
    connection = CONNECTION_CLASSES[version](
        ChargerModel("CP1"),
        socket,
        FakeHost(),
        response_timeout_s=5,
        max_calls_per_s=max_calls_per_s,
        call_burst=call_burst,
    )
    return connection, socket
