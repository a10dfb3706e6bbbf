"""The fleet bus as the site link and the central aggregator use it.

`agent.fleet.bus` implements these on NATS JetStream; unit tests implement them in memory. The
contract is JetStream's: `publish` returns only once the stream has stored the message on a
quorum of its replicas (a publish acknowledgement), and a fetched message comes back after
`ack_wait` unless it is acked, so a receiver acks only after its own effect is committed.
"""

from __future__ import annotations

from typing import Protocol


class BusUnavailable(RuntimeError):
    """The bus did not confirm in time (no quorum, no connection): retry later, nothing lost."""


class Delivery(Protocol):
    """One fetched message. `num_delivered` > 1 means it was delivered before and not acked."""

    @property
    def data(self) -> bytes: ...

    @property
    def subject(self) -> str: ...

    @property
    def num_delivered(self) -> int: ...

    async def ack(self) -> None:
        """Confirm to the stream (waits for the server's confirmation); raises BusUnavailable."""
        ...

    async def nak(self, delay_s: float) -> None:
        """Ask for a redelivery after `delay_s` (a message we could not handle now)."""
        ...

    async def term(self) -> None:
        """Never redeliver (a message that can never be handled: undecodable, not ours)."""
        ...


class BusPort(Protocol):
    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        """Store `payload` on the stream that owns `subject`, `msg_id` as Nats-Msg-Id; return
        once stored, raise BusUnavailable otherwise."""
        ...

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[Delivery]:
        """Up to `batch` messages from the durable pull consumer (created ahead of time, never
        here); an empty list when none arrived within `timeout_s`; BusUnavailable when the
        consumer cannot be reached."""
        ...
