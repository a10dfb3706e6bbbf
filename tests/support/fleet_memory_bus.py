"""An in-memory `BusPort` for unit tests of the site link, with JetStream's delivery rules.

Every publish is stored (no de-duplication window: receivers must absorb duplicates on their
own), and offered to the durable consumers whose filter matches. A fetched message stays in
flight until it is acked, nak'ed or terminated; `expire_in_flight` plays the consumer's
`ack_wait` running out (everything in flight is delivered again, `num_delivered` counting).
`available = False` makes every call raise `BusUnavailable`, as a lost quorum or connection
does; `lose_confirmations` stores a publish and still raises (the PubAck lost on the way).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.fleet.ports import BusUnavailable


@dataclass
class Published:
    subject: str
    msg_id: str
    payload: bytes


@dataclass
class _Entry:
    subject: str
    data: bytes
    state: str = "pending"  # pending | in_flight | acked | termed
    delivered: int = 0


class MemoryDelivery:
    def __init__(self, bus: MemoryBus, entry: _Entry) -> None:
        self._bus = bus
        self._entry = entry
        self._num = entry.delivered

    @property
    def data(self) -> bytes:
        return self._entry.data

    @property
    def subject(self) -> str:
        return self._entry.subject

    @property
    def num_delivered(self) -> int:
        return self._num

    async def ack(self) -> None:
        self._bus.check()
        if self._entry.state == "in_flight":
            self._entry.state = "acked"

    async def nak(self, delay_s: float) -> None:
        self._bus.check()
        if self._entry.state == "in_flight":
            self._entry.state = "pending"
            self._bus.wake()

    async def term(self) -> None:
        self._bus.check()
        if self._entry.state == "in_flight":
            self._entry.state = "termed"


@dataclass
class _Consumer:
    stream: str
    filter: str
    entries: list[_Entry] = field(default_factory=list)


def _matches(pattern: str, subject: str) -> bool:
    if pattern.endswith(">"):
        return subject.startswith(pattern[:-1])
    return pattern == subject


class MemoryBus:
    def __init__(self) -> None:
        self.available = True
        self.lose_confirmations = False
        self.published: list[Published] = []
        self.consumers: dict[tuple[str, str], _Consumer] = {}
        self.fetches = 0
        self._arrived = asyncio.Event()

    def check(self) -> None:
        if not self.available:
            raise BusUnavailable("no quorum (test)")

    def wake(self) -> None:
        self._arrived.set()

    def add_consumer(self, stream: str, durable: str, filter_subject: str) -> None:
        self.consumers[(stream, durable)] = _Consumer(stream, filter_subject)

    def put(self, subject: str, data: bytes) -> None:
        """A message on the stream as another publisher (the centre) put it there."""
        self.published.append(Published(subject, "", data))
        for consumer in self.consumers.values():
            if _matches(consumer.filter, subject):
                consumer.entries.append(_Entry(subject, data))
        self.wake()

    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        self.check()
        self.published.append(Published(subject, msg_id, payload))
        for consumer in self.consumers.values():
            if _matches(consumer.filter, subject):
                consumer.entries.append(_Entry(subject, payload))
        self.wake()
        if self.lose_confirmations:
            raise BusUnavailable("publish acknowledgement lost (test)")

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[MemoryDelivery]:
        self.check()
        self.fetches += 1
        consumer = self.consumers.get((stream, durable))
        if consumer is None:
            raise BusUnavailable(f"no consumer {durable} on {stream}")
        ready = [e for e in consumer.entries if e.state == "pending"]
        if not ready:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                return []
            self.check()
            ready = [e for e in consumer.entries if e.state == "pending"]
        out = []
        for entry in ready[:batch]:
            entry.state = "in_flight"
            entry.delivered += 1
            out.append(MemoryDelivery(self, entry))
        return out

    def expire_in_flight(self) -> int:
        """`ack_wait` ran out: every unacked message is offered again."""
        count = 0
        for consumer in self.consumers.values():
            for entry in consumer.entries:
                if entry.state == "in_flight":
                    entry.state = "pending"
                    count += 1
        self.wake()
        return count

    def states(self, stream: str, durable: str) -> list[str]:
        return [e.state for e in self.consumers[(stream, durable)].entries]

    def on(self, subject_prefix: str) -> list[Published]:
        return [p for p in self.published if p.subject.startswith(subject_prefix)]
