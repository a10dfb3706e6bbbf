"""An in-memory BusPort for the aggregator's tests that do not need NATS itself.

Every published message is kept per subject; a durable consumer is a queue of what was
published to its subjects after it was created (an upstream consumer sees `fleet.up.>`, a
site consumer its own `fleet.cmd.<site>`). A fetched message stays unacked until `ack`,
`nak` puts it back, `term` drops it. There is no de-duplication window: the aggregator must
not need one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from agent.fleet import protocol
from agent.fleet.ports import BusUnavailable


@dataclass
class FakeDelivery:
    bus: FakeBus
    durable: str
    subject: str
    data: bytes
    num_delivered: int = 1
    outcome: str | None = None

    async def ack(self) -> None:
        self.outcome = "ack"

    async def nak(self, delay_s: float) -> None:
        self.outcome = "nak"
        self.bus.queues[self.durable].append((self.subject, self.data, self.num_delivered + 1))

    async def term(self) -> None:
        self.outcome = "term"


@dataclass
class FakeBus:
    published: list[tuple[str, str, bytes]] = field(default_factory=list)
    queues: dict[str, deque[tuple[str, bytes, int]]] = field(default_factory=dict)
    delivered: list[FakeDelivery] = field(default_factory=list)
    available: bool = True

    def __post_init__(self) -> None:
        self.queues.setdefault(protocol.CENTRAL_CONSUMER, deque())

    async def ensure_site_consumer(self, site: str) -> None:
        self.queues.setdefault(protocol.site_consumer(site), deque())

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        if not self.available:
            raise BusUnavailable("the fake bus is down")
        self.published.append((subject, msg_id, payload))
        if subject.startswith("fleet.up."):
            self.queues[protocol.CENTRAL_CONSUMER].append((subject, payload, 1))
        elif subject.startswith("fleet.cmd."):
            site = subject.removeprefix("fleet.cmd.")
            queue = self.queues.get(protocol.site_consumer(site))
            if queue is not None:
                queue.append((subject, payload, 1))

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[FakeDelivery]:
        if not self.available:
            raise BusUnavailable("the fake bus is down")
        queue = self.queues.get(durable)
        if queue is None:
            raise BusUnavailable(f"no consumer {durable}")
        if not queue:
            await asyncio.sleep(min(timeout_s, 0.05))
        out: list[FakeDelivery] = []
        while queue and len(out) < batch:
            subject, data, count = queue.popleft()
            delivery = FakeDelivery(self, durable, subject, data, count)
            out.append(delivery)
            self.delivered.append(delivery)
        return out

    async def send_up(self, message: protocol._Message) -> None:
        """Publish as a site would (its own subject)."""
        kind = message.kind
        await self.publish(
            protocol.up_subject(message.site, kind), message.id, protocol.encode(message)
        )

    def acked(self) -> int:
        """How many deliveries the consumer acked (after its effect committed)."""
        return sum(1 for d in self.delivered if d.outcome == "ack")

    def commands(self, site: str | None = None) -> list[protocol.Command]:
        return [
            protocol.decode_command(payload)
            for subject, _, payload in self.published
            if subject.startswith("fleet.cmd.")
            and (site is None or subject == protocol.cmd_subject(site))
        ]
