"""The aggregator's end of the fleet bus: what sites send up, and the commands going down.

Upstream (`UpstreamConsumer`): every aggregator process fetches from the one shared durable
consumer `central` on FLEET_UP. A message is checked (it decodes, its `site` and `kind` are
the ones in its subject, the site is in the portfolio), recorded once under the unique
(site, msg_id) together with its effect (the latest forecast or flexibility, metering, a
command's ack, the site's liveness) in one transaction, and only then acked on the stream. A
redelivery finds the key and has no effect; it is acked again. A message that can never be
handled (undecodable, another site's subject, a site not in the portfolio) is terminated and
logged, never retried forever.

Downstream (`CommandPublisher`): commands are rows of the `command` table, committed with the
decision that made them (an accepted FlexOrder, a reassignment). The publisher sends unpublished
rows in id order to `fleet.cmd.<site>` with Nats-Msg-Id `<order_id>:<site>:<seq>` and marks
them published after the stream confirmed them. A crash between COMMIT and publish, or between
publish and the mark, publishes again on restart with the same id; the site's own unique key
absorbs the copy. One process publishes at a time (an advisory lock), so commands keep their
order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from agent.central import db
from agent.fleet import protocol
from agent.fleet.ports import BusPort, BusUnavailable, Delivery
from uftp.loops import SupervisedLoop
from uftp.models import utc_now

log = logging.getLogger(__name__)

FETCH_BATCH = 100
FETCH_WAIT_S = 1.0
PUBLISH_BATCH = 200
# Commands awaiting their publish acknowledgement at once: one at a time, an order's fan-out
# to 1,000 sites would take 1,000 round trips to a quorum of the cluster.
PUBLISH_IN_FLIGHT = 64


def command_msg_id(order_id: str, site: str, seq: int) -> str:
    return f"{order_id}:{site}:{seq}"


def subject_parts(subject: str) -> tuple[str, str] | None:
    """(site, kind) of an upstream subject `fleet.up.<site>.<kind>`, or None."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["fleet", "up"]:
        return None
    return parts[2], parts[3]


async def record_upstream(
    conn: db.Connection,
    message: protocol.Forecast
    | protocol.Flex
    | protocol.Metering
    | protocol.Ack
    | protocol.Heartbeat,
    received_at: datetime,
) -> bool:
    """Record one upstream message and its effect; False when (site, msg_id) was recorded
    before (a redelivery or a republished copy: no effect). The caller's transaction."""
    cursor = await conn.execute(
        "INSERT INTO site_inbox (site, msg_id, kind, payload, sent_at, received_at) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (site, msg_id) DO NOTHING RETURNING id",
        (
            message.site,
            message.id,
            message.kind,
            Jsonb(message.model_dump(mode="json")),
            message.sent_at,
            received_at,
        ),
    )
    row = await cursor.fetchone()
    if row is None:
        return False
    inbox_id = int(row[0])
    # Liveness is judged by when the site said it, but never later than when it arrived here:
    # a gateway whose clock runs ahead would otherwise look alive for as long as it is ahead
    # after it fell silent, and keep its share of an order from being moved. (A message that
    # waited in the site's outbox keeps its older time.)
    seen_at = min(message.sent_at, received_at)
    await conn.execute(
        "INSERT INTO site_status (site, last_seen_at) VALUES (%s, %s) ON CONFLICT (site) DO "
        "UPDATE SET last_seen_at = greatest(site_status.last_seen_at, excluded.last_seen_at)",
        (message.site, seen_at),
    )
    if isinstance(message, protocol.Forecast):
        await conn.execute(
            "INSERT INTO site_forecast (inbox_id, site, congestion_point, made_at, start, "
            "p10_w, p50_w, p90_w) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                inbox_id,
                message.site,
                message.congestion_point,
                message.made_at,
                message.start,
                list(message.p10_w),
                list(message.p50_w),
                list(message.p90_w),
            ),
        )
    elif isinstance(message, protocol.Flex):
        await conn.execute(
            "INSERT INTO site_flex (inbox_id, site, congestion_point, made_at, valid_until, "
            "start, baseline_w, min_w, max_w) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                inbox_id,
                message.site,
                message.congestion_point,
                message.made_at,
                message.valid_until,
                message.start,
                list(message.baseline_w),
                list(message.min_w),
                list(message.max_w),
            ),
        )
    elif isinstance(message, protocol.Metering):
        rows = [
            (message.site, message.isp_start(i), message.congestion_point, energy, inbox_id)
            for i, energy in enumerate(message.energy_wh)
            if energy is not None
        ]
        if rows:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO site_metering (site, isp_start, congestion_point, energy_wh, "
                    "inbox_id) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (site, isp_start) DO "
                    "UPDATE SET energy_wh = excluded.energy_wh, inbox_id = excluded.inbox_id, "
                    "congestion_point = excluded.congestion_point",
                    rows,
                )
    elif isinstance(message, protocol.Ack):
        await conn.execute(
            "UPDATE command SET ack_outcome = %s, acked_at = %s WHERE order_id = %s "
            "AND site = %s AND seq = %s AND ack_outcome IS NULL",
            (message.outcome, message.applied_at, message.order_id, message.site, message.seq),
        )
    else:
        await conn.execute(
            "UPDATE site_status SET last_heartbeat_at = %s, chargers_connected = %s, "
            "power_w = %s, safe_limit_w = %s WHERE site = %s AND "
            "(last_heartbeat_at IS NULL OR last_heartbeat_at <= %s)",
            (
                seen_at,
                message.chargers_connected,
                message.power_w,
                message.safe_limit_w,
                message.site,
                seen_at,
            ),
        )
    return True


async def site_known(conn: db.Connection, site: str) -> bool:
    cursor = await conn.execute("SELECT 1 FROM site WHERE id = %s", (site,))
    return await cursor.fetchone() is not None


class _LoopComponent:
    """A service component that is one supervised loop over its own database connection."""

    _loop: SupervisedLoop
    _db: db.Session

    @property
    def loops(self) -> tuple[SupervisedLoop, ...]:
        return (self._loop,)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._db.close()


class UpstreamConsumer(_LoopComponent):
    """Fetches FLEET_UP through the shared durable consumer and records each message once."""

    name = "fleet-upstream"

    def __init__(
        self,
        bus: BusPort,
        dsn: str,
        *,
        clock: Callable[[], datetime] = utc_now,
        batch: int = FETCH_BATCH,
        wait_s: float = FETCH_WAIT_S,
        on_recorded: Callable[[str], object] | None = None,
    ) -> None:
        self._bus = bus
        self._db = db.Session(dsn, "fleet-upstream")
        self._clock = clock
        self._batch = batch
        self._wait_s = wait_s
        self._on_recorded = on_recorded
        self._loop = SupervisedLoop(self.name, self.step, interval_s=0.0, logger=log)
        self.recorded = 0
        self.duplicates = 0
        self.refused = 0

    async def step(self) -> float | None:
        """One fetch and its messages; raises BusUnavailable (the loop backs off)."""
        deliveries = await self._bus.fetch(
            protocol.UP_STREAM, protocol.CENTRAL_CONSUMER, self._batch, self._wait_s
        )
        for delivery in deliveries:
            await self.handle(delivery)
        return 0.0

    async def handle(self, delivery: Delivery) -> None:
        refusal = None
        message: Any = None
        try:
            message = protocol.decode_upstream(delivery.data)
        except protocol.DecodeError as exc:
            refusal = f"undecodable: {exc}"
        if message is not None:
            parts = subject_parts(delivery.subject)
            if parts is None or parts != (message.site, message.kind):
                refusal = f"a {message.kind} of site {message.site} on subject {delivery.subject}"
        if refusal is None:
            async with self._db.transaction() as conn:
                if not await site_known(conn, message.site):
                    refusal = f"site {message.site} is not in the portfolio"
                else:
                    new = await record_upstream(conn, message, self._clock())
            if refusal is None:
                await delivery.ack()
                if new:
                    self.recorded += 1
                    if self._on_recorded is not None:
                        self._on_recorded(message.kind)
                else:
                    self.duplicates += 1
                return
        self.refused += 1
        log.warning(
            "upstream message refused",
            extra={"subject": delivery.subject, "reason": refusal},
        )
        await delivery.term()


class CommandPublisher(_LoopComponent):
    """Publishes the command outbox, in order per site and many sites at once; marks rows
    published after their PubAck."""

    name = "fleet-commands"

    def __init__(
        self,
        bus: BusPort,
        dsn: str,
        *,
        clock: Callable[[], datetime] = utc_now,
        poll_s: float = 1.0,
    ) -> None:
        self._bus = bus
        self._db = db.Session(dsn, "fleet-commands")
        self._clock = clock
        self._poll_s = poll_s
        self._loop = SupervisedLoop(self.name, self.step, interval_s=poll_s, logger=log)
        self.published = 0

    def wake(self) -> None:
        self._loop.wake()

    async def step(self) -> float | None:
        """Publish what is unpublished; 0 when there may be more, None to wait for a wake-up
        or the poll interval."""
        async with self._db.transaction() as conn:
            if not await db.try_xact_lock(conn, db.COMMAND_PUBLISH_LOCK):
                return None  # another process publishes
            cursor = await conn.execute(
                "SELECT id, order_id, site, seq, payload FROM command "
                "WHERE published_at IS NULL ORDER BY id LIMIT %s",
                (PUBLISH_BATCH,),
            )
            rows: Sequence[tuple[Any, ...]] = await cursor.fetchall()
            by_site: dict[str, list[tuple[Any, ...]]] = {}
            for row in rows:
                by_site.setdefault(row[2], []).append(row)
            published: list[int] = []
            refused: list[str] = []
            gate = asyncio.Semaphore(PUBLISH_IN_FLIGHT)

            async def in_order(site_rows: list[tuple[Any, ...]]) -> None:
                # One site's commands one after the other (a newer seq never overtakes an
                # older one); different sites at once.
                for row_id, order_id, site, seq, payload in site_rows:
                    command = protocol.Command.model_validate(payload)
                    async with gate:
                        try:
                            await self._bus.publish(
                                protocol.cmd_subject(site),
                                command_msg_id(order_id, site, seq),
                                protocol.encode(command),
                            )
                        except BusUnavailable:
                            refused.append(site)
                            return  # this site's later commands wait behind this one
                    published.append(row_id)

            outcomes = await asyncio.gather(
                *(in_order(site_rows) for site_rows in by_site.values()), return_exceptions=True
            )
            if published:
                await conn.execute(
                    "UPDATE command SET published_at = %s WHERE id = ANY(%s)",
                    (self._clock(), published),
                )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome  # the marks roll back; a republish has the same msg ids
            self.published += len(published)
            if refused:
                log.warning(
                    "the bus did not confirm commands of %d site(s); will retry", len(refused)
                )
                return self._poll_s
            return 0.0 if len(rows) == PUBLISH_BATCH else None
