"""The site's link to the central aggregator: its outbox published, its commands applied.

Two supervised loops over the site's own database and a `BusPort`:

- the publisher drains `fleet_outbox` in order: each message published with its id as
  `msg_id`, marked published only after the stream confirmed it. A crash in between publishes
  it again under the same id, which the centre's unique key absorbs. While the bus is
  unavailable it backs off (an enqueue does not cut the back-off short), and nothing is lost:
  the rows wait in the file.
- the command loop fetches from the site's own durable consumer (`site-<id>` on FLEET_CMD),
  and for each command runs one transaction that decides, applies, records the outcome and
  queues the Ack (`agent.fleet.store.receive_command`); only then is the stream message
  acked. A message that is no command of this site is `term`ed with one log line: it can never
  become one.

It needs nothing else of the agent, so a test can host hundreds of them in one process, each
over its own file.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.ports import BusPort, BusUnavailable, Delivery
from agent.runtime import failpoints
from agent.runtime.clock import Clock
from agent.runtime.loops import Backoff, DeathHook, SupervisedLoop, clock_loop
from agent.storage.db import Database

log = logging.getLogger(__name__)

PRUNE_EVERY = timedelta(hours=1)

# Failpoint: the command's transaction is committed, the stream message not yet acked.
AFTER_COMMAND_COMMIT = "fleet.after-command-commit"


class SiteLink:
    """Service component: the site's outbox to the centre and its commands from it."""

    name = "fleet-link"

    def __init__(
        self,
        db: Database,
        bus: BusPort,
        site: str,
        clock: Clock,
        on_change: Callable[[], None],
        *,
        fetch_batch: int = 16,
        fetch_timeout_s: float = 5.0,
        publish_batch: int = 64,
        backoff: Backoff | None = None,
        keep_published: timedelta = timedelta(days=2),
    ) -> None:
        self.db = db
        self.bus = bus
        self.site = protocol.check_site(site)
        self.clock = clock
        self.on_change = on_change
        self.fetch_batch = fetch_batch
        self.fetch_timeout_s = fetch_timeout_s
        self.publish_batch = publish_batch
        self.backoff = backoff or Backoff(first_s=1.0, max_s=60.0)
        self.keep_published = keep_published
        self._pruned: datetime | None = None
        self.on_loop_death: DeathHook | None = None
        # Why commands must not be decided now (the clock guard: valid_until needs a trusted
        # clock), or None.
        self.hold: Callable[[], str | None] = lambda: None
        self._publisher: SupervisedLoop | None = None
        self._commands: SupervisedLoop | None = None
        # Bus outages in a row per loop, and when the publisher may try again.
        self._publish_failures = 0
        self._pause: asyncio.Task[None] | None = None
        self._fetch_failures = 0
        # Counters for tests and the status page.
        self.published = 0
        self.received: dict[str, int] = {"applied": 0, "superseded": 0, "expired": 0}
        self.repeats = 0
        self.terminated = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._publisher = clock_loop(
            f"fleet-publish-{self.site}",
            self._publish_step,
            self.clock,
            interval_s=None,
            on_death=self.on_loop_death,
            logger=log,
        )
        self._commands = clock_loop(
            f"fleet-commands-{self.site}",
            self._command_step,
            self.clock,
            interval_s=0.0,
            backoff=self.backoff,
            on_death=self.on_loop_death,
            logger=log,
        )
        self._publisher.start()
        self._commands.start()

    async def stop(self) -> None:
        for loop in (self._commands, self._publisher):
            if loop is not None:
                await loop.stop()
        self._commands = self._publisher = None
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None

    @property
    def bus_reachable(self) -> bool:
        """Whether the last publish and the last fetch reached the bus."""
        return self._publish_failures == 0 and self._fetch_failures == 0

    def wake_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.wake()

    async def enqueue(self, *messages: fleet_store.UpstreamMessage) -> None:
        """Commit `messages` to the outbox (one transaction), then let the publisher run."""
        now = self.clock.now()

        def write(conn: sqlite3.Connection) -> None:
            for message in messages:
                fleet_store.enqueue(conn, message, now)

        await self.db.transaction(write)
        self.wake_publisher()

    # --- publisher -----------------------------------------------------------------------------

    async def _publish_step(self) -> float | None:
        if self._pause is not None and not self._pause.done():
            return None  # backing off after an outage: a wake-up waits for the pause to end
        while True:
            rows = await self.db.read(lambda c: fleet_store.pending(c, self.publish_batch))
            if not rows:
                return None
            done: list[str] = []
            try:
                for row in rows:
                    await self.bus.publish(row.subject, row.id, row.payload)
                    done.append(row.id)
            except BusUnavailable as exc:
                await self._mark(done)
                self._publish_failures += 1
                delay = self.backoff.delay(self._publish_failures)
                if self._publish_failures == 1:
                    log.warning(
                        "fleet bus unavailable, %d message(s) wait in the outbox: %s",
                        len(rows) - len(done),
                        exc,
                        extra={"site": self.site},
                    )
                self._pause = asyncio.create_task(self._paused(delay))
                return None
            await self._mark(done)
            if self._publish_failures:
                log.info("fleet bus reachable again", extra={"site": self.site})
                self._publish_failures = 0
            if len(rows) < self.publish_batch:
                return None

    async def _paused(self, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self.wake_publisher()

    async def _mark(self, ids: list[str]) -> None:
        if not ids:
            return
        now = self.clock.now()
        # Published rows are kept a while (to look into), then forgotten: the centre has them.
        prune = self._pruned is None or now - self._pruned >= PRUNE_EVERY
        before = now - self.keep_published

        def mark(conn: sqlite3.Connection) -> None:
            fleet_store.mark_published(conn, ids, now)
            if prune:
                fleet_store.prune_published(conn, before)

        await self.db.transaction(mark)
        if prune:
            self._pruned = now
        self.published += len(ids)

    # --- commands ------------------------------------------------------------------------------

    async def _command_step(self) -> float | None:
        if self.hold() is not None:
            return self.fetch_timeout_s  # left on the stream until the clock is trusted
        try:
            deliveries = await self.bus.fetch(
                protocol.CMD_STREAM,
                protocol.site_consumer(self.site),
                self.fetch_batch,
                self.fetch_timeout_s,
            )
            # A failed ack leaves the message to be redelivered: a repeat, no second effect.
            for delivery in newest_first(deliveries):
                await self.handle(delivery)
        except BusUnavailable as exc:
            self._fetch_failures += 1
            if self._fetch_failures == 1:
                log.warning("cannot fetch fleet commands: %s", exc, extra={"site": self.site})
            return self.backoff.delay(self._fetch_failures)
        if self._fetch_failures:
            log.info("fetching fleet commands again", extra={"site": self.site})
            self._fetch_failures = 0
        return 0.0

    async def handle(self, delivery: Delivery) -> None:
        """One fetched message: applied (or recorded as superseded/expired) and acked, or
        terminated when it can never be a command of this site."""
        try:
            command = protocol.decode_command(delivery.data)
        except protocol.DecodeError as exc:
            log.warning(
                "dropping an undecodable fleet command on %s: %s",
                delivery.subject,
                exc,
                extra={"site": self.site},
            )
            self.terminated += 1
            await delivery.term()
            return
        if command.site != self.site:
            log.warning(
                "dropping a fleet command for site %s (we are %s), order %s seq %d",
                command.site,
                self.site,
                command.order_id,
                command.seq,
                extra={"site": self.site},
            )
            self.terminated += 1
            await delivery.term()
            return
        now = self.clock.now()
        received = await self.db.transaction(lambda c: fleet_store.receive_command(c, command, now))
        failpoints.hit(AFTER_COMMAND_COMMIT)
        if received.repeat:
            self.repeats += 1
        else:
            self.received[received.outcome] += 1
            log.info(
                "fleet command %s: order %s seq %d",
                received.outcome,
                command.order_id,
                command.seq,
                extra={"site": self.site},
            )
        self.wake_publisher()
        if received.changed:
            self.on_change()
        await delivery.ack()


def newest_first(deliveries: list[Delivery]) -> list[Delivery]:
    """The batch with each order's newest command ahead of its older ones.

    A site back from an outage finds every seq the centre sent meanwhile waiting in its
    consumer, oldest first: handled in that order it would apply a share the centre already
    moved elsewhere, if only for a moment. Newest first, the older seqs are recorded as
    superseded and never applied. Commands of different orders, and anything that is not a
    command, keep their places relative to each other."""
    newest: dict[str, int] = {}
    keys: list[tuple[str, int] | None] = []
    for delivery in deliveries:
        try:
            command = protocol.decode_command(delivery.data)
        except protocol.DecodeError:
            keys.append(None)
            continue
        keys.append((command.order_id, command.seq))
        newest[command.order_id] = max(command.seq, newest.get(command.order_id, 0))
    first = [d for d, k in zip(deliveries, keys, strict=True) if k is None or newest[k[0]] == k[1]]
    rest = [
        d for d, k in zip(deliveries, keys, strict=True) if k is not None and newest[k[0]] != k[1]
    ]
    return first + rest
