"""The fleet bus as the aggregator uses it: NATS JetStream (`agent.fleet.bus`), set up at start.

At start the aggregator connects as the centre's user, creates or updates the FLEET_UP and
FLEET_CMD streams and the shared `central` consumer (every aggregator process does this; it
is idempotent), and from then on creates a site's command consumer when the site joins the
portfolio, before any command for it exists.
"""

from __future__ import annotations

import logging

from agent.central.config import NatsConfig
from agent.fleet.bus import (
    NatsBus,
    ensure_central_consumer,
    ensure_site_consumer,
    ensure_streams,
)
from agent.fleet.ports import BusUnavailable, Delivery
from agent.runtime.service import StartError

log = logging.getLogger(__name__)


class CentralNatsBus:
    """`FleetBus` on NATS, as a service component (connected by `start`)."""

    name = "fleet-bus"

    def __init__(self, config: NatsConfig) -> None:
        self._config = config
        self._bus: NatsBus | None = None

    async def start(self) -> None:
        try:
            self._bus = await NatsBus.connect_central(
                self._config.servers,
                self._config.password.get_secret_value(),
                name="flexbridge-aggregator",
            )
            js = self._bus.jetstream
            await ensure_streams(js, replicas=self._config.replicas)
            await ensure_central_consumer(js)
        except BusUnavailable as exc:
            await self.stop()
            raise StartError(f"fleet bus: {exc}") from None

    async def stop(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    def _connected(self) -> NatsBus:
        if self._bus is None:
            raise BusUnavailable("the fleet bus is not connected")
        return self._bus

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        await self._connected().publish(subject, msg_id, payload)

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[Delivery]:
        return list(await self._connected().fetch(stream, durable, batch, timeout_s))

    async def ensure_site_consumer(self, site: str) -> None:
        await ensure_site_consumer(self._connected().jetstream, site)
