"""The bounded hand-over of events from OCPP handling to the application."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ocpp_bridge.events import Event, MeterSample

log = logging.getLogger("ocpp_bridge.server")


class EventBuffer:
    """Bounded hand-over between OCPP handling and the application.

    Policy: OCPP handling never waits for the consumer. When `capacity` events are waiting,
    new meter samples are dropped (and counted in `dropped`); lifecycle events (connect,
    status, sessions, capabilities) are still queued up to 4 x capacity, beyond which they
    are dropped too, loudly, because a consumer that far behind is broken.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        size = len(self._items)
        if size >= self.capacity and (isinstance(event, MeterSample) or size >= 4 * self.capacity):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "event consumer is behind: %d events waiting, %d dropped so far",
                    size,
                    self.dropped,
                )
            return
        self._items.append(event)
        self._ready.set()

    async def get(self) -> Event:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
