"""The site's connection to the fleet bus as a service component that never blocks start-up.

Charging must never depend on the WAN: a gateway that boots while the fleet's servers are out
of reach starts anyway (OCPP, limits, fail-safe, forecasts all run) and connects when it can.
So `start` only launches the connecting, which retries with back-off for as long as it takes;
until then every publish and fetch raises `BusUnavailable`, which the site link already takes
as "later, nothing lost". Once connected, the client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.fleet.ports import BusPort, BusUnavailable, Delivery
from agent.runtime.loops import Backoff

log = logging.getLogger(__name__)


class ClosableBus(BusPort, Protocol):
    async def close(self) -> None: ...


Connect = Callable[[], Awaitable[ClosableBus]]


class FleetConnection:
    """Service component and `BusPort`: the bus once connected, `BusUnavailable` before."""

    name = "fleet-bus"

    def __init__(
        self,
        connect: Connect,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._connect = connect
        self.backoff = backoff or Backoff(first_s=2.0, max_s=120.0)
        self._sleep = sleep
        self._bus: ClosableBus | None = None
        self._task: asyncio.Task[None] | None = None
        self.attempts = 0

    @property
    def connected(self) -> bool:
        return self._bus is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connecting(), name="fleet-bus-connect")

    async def _connecting(self) -> None:
        failures = 0
        while True:
            self.attempts += 1
            try:
                self._bus = await self._connect()
            except BusUnavailable as exc:
                failures += 1
                delay = self.backoff.delay(failures)
                if failures == 1:
                    log.warning("fleet bus not reachable yet, trying again: %s", exc)
                await self._sleep(delay)
                continue
            log.info("fleet bus connected")
            return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._bus is not None:
            with contextlib.suppress(Exception):  # closing a dead connection: nothing to save
                await self._bus.close()
            self._bus = None

    def _current(self) -> ClosableBus:
        if self._bus is None:
            raise BusUnavailable("not connected to the fleet bus yet")
        return self._bus

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        await self._current().publish(subject, msg_id, payload)

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[Delivery]:
        return list(await self._current().fetch(stream, durable, batch, timeout_s))
