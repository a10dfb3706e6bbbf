"""The aggregator's UFTP participant: uftp's core and HTTP endpoint over PostgreSQL.

The aggregator is ONE participant (one domain, one Ed25519 key, one endpoint) for all its
congestion points, and may run as several processes on one database. What comes from uftp
unchanged: the aiohttp endpoint and its status codes (`uftp.http`), what every participant
does alike (`uftp.participant_base.ParticipantBase`: opening and verifying a body, sealing,
answering, the receipt), the generic checks (`uftp.validation.check_inbound`), the peer
directory and the delivery (`uftp.outbox.post_to_peer`, `next_attempt_at`). What is here: the
same inbox and outbox on PostgreSQL (`agent.central.uftp_store`), so that

- the endpoint answers 200 only after the message is committed; a repeated POST of a
  MessageID answers as the first did and has no second effect ("Already Submitted");
- the handler claims one pending message at a time with `FOR UPDATE SKIP LOCKED` and handles
  it in ONE transaction together with its queued response, so two processes never handle a
  message twice and a crash leaves all of it or none;
- the outbox sender delivers FIFO per recipient under a transaction advisory lock per
  recipient, so two processes never send to one peer at once or out of order; failures back
  off as uftp's sender does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import psycopg

from agent.central import db
from agent.central import uftp_store as pg
from uftp import reasons
from uftp.http import TransportRejection
from uftp.loops import Backoff, SupervisedLoop
from uftp.models import (
    PayloadMessage,
    PayloadMessageResponse,
    Role,
    TestMessage,
    TestMessageResponse,
    utc_now,
)
from uftp.outbox import (
    Attempt,
    PeerTokens,
    client_session,
    client_ssl_context,
    next_attempt_at,
    post_to_peer,
)
from uftp.participant_base import (
    ParticipantBase,
    Receipt,
    duplicate_identifier,
    http_endpoint,
    inbound_record,
    received,
    reference_problems,
)
from uftp.participants import PeerDirectory
from uftp.settings import ParticipantSettings
from uftp.store import Admission, InboundMessage, InboundStatus, PreparedOutbound
from uftp.validation import check_inbound

log = logging.getLogger(__name__)

Handler = Callable[[db.Connection, InboundMessage], Awaitable[object]]

# How often a process looks for work another process queued (its own work wakes it at once).
DEFAULT_POLL_S = 1.0


class CentralUftp(ParticipantBase):
    """Endpoint + PostgreSQL inbox/outbox + handler loop + outbox sender, as one component."""

    name = "uftp"

    def __init__(
        self,
        settings: ParticipantSettings,
        dsn: str,
        *,
        handler: Handler | None = None,
        directory: PeerDirectory | None = None,
        clock: Callable[[], datetime] = utc_now,
        poll_s: float = DEFAULT_POLL_S,
        on_handled: Callable[[object], None] | None = None,
    ) -> None:
        super().__init__(settings, directory=directory, clock=clock)
        self._handler = handler
        self._poll_s = poll_s
        # Called right after a handled message's transaction committed, before any await: a
        # crash test's failpoint sits there, and the command publisher is woken from it.
        self._on_handled = on_handled
        self.endpoint = http_endpoint(settings, self.receive)
        self._endpoint_db = db.Session(dsn, "uftp-endpoint")
        self._handler_db = db.Session(dsn, "uftp-handler")
        self._dsn = dsn
        self._outbox_db = db.Session(dsn, "uftp-outbox")
        # One connection per recipient: a slow peer holds its own transaction (and its
        # advisory lock) during a POST, never another peer's delivery.
        self._recipient_db: dict[tuple[str, Role], db.Session] = {}
        self._handler_loop = SupervisedLoop(
            "uftp-handler", self._handle_step, interval_s=poll_s, logger=log
        )
        retry = settings.retry
        self._outbox_loop = SupervisedLoop(
            "uftp-outbox",
            self._outbox_step,
            interval_s=poll_s,
            backoff=Backoff(retry.first_delay_s, max(retry.first_delay_s, retry.max_delay_s)),
            logger=log,
        )
        self._session: aiohttp.ClientSession | None = None
        self._tokens = PeerTokens()
        self._random = random.Random()
        self.handled = 0
        self.delivered = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def loops(self) -> tuple[SupervisedLoop, ...]:
        return (self._handler_loop, self._outbox_loop)

    async def start(self) -> None:
        ca_file = self.settings.ca_file
        ssl_context = client_ssl_context(str(ca_file) if ca_file else None)
        self._session = client_session(self.settings.retry, ssl_context)
        self._outbox_loop.start()
        if self._handler is not None:
            self._handler_loop.start()
        try:
            await self.endpoint.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.endpoint.stop()
        if self._handler_loop.running:
            await self._handler_loop.stop()
        if self._outbox_loop.running:
            await self._outbox_loop.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        for session in (
            self._endpoint_db,
            self._handler_db,
            self._outbox_db,
            *self._recipient_db.values(),
        ):
            await session.close()
        self._recipient_db.clear()

    @property
    def url(self) -> str:
        return self.endpoint.url

    def wake_outbox(self) -> None:
        self._outbox_loop.wake()

    def wake_handler(self) -> None:
        self._handler_loop.wake()

    # --- outbound -------------------------------------------------------------------------------

    async def enqueue(
        self,
        conn: db.Connection,
        message: PayloadMessage,
        *,
        reply_to: InboundMessage | None = None,
        recipient_role: Role | None = None,
    ) -> PreparedOutbound:
        """Prepare and queue within the caller's transaction; `wake_outbox()` after COMMIT."""
        if reply_to is not None and recipient_role is None:
            recipient_role = reply_to.sender_role
        prepared = self.prepare(message, recipient_role=recipient_role)
        await pg.enqueue_outbound(
            conn, prepared, self._clock(), reply_to=None if reply_to is None else reply_to.id
        )
        return prepared

    async def respond(
        self,
        conn: db.Connection,
        inbound: InboundMessage,
        rejections: Sequence[str] = (),
        *,
        request: PayloadMessage | None = None,
        **fields: Any,
    ) -> PayloadMessage | None:
        """Answer a pending request and mark it processed, in the caller's transaction."""
        request = request if request is not None else inbound.message()
        response = self.response(request, inbound.sender_domain, rejections, **fields)
        if response is not None:
            await self.enqueue(conn, response, reply_to=inbound)
        await pg.mark_processed(
            conn, inbound.id, self._clock(), rejection_reason=reasons.join(rejections) or None
        )
        return response

    # --- inbound --------------------------------------------------------------------------------

    async def receive(self, body: bytes) -> Receipt:
        """One POST body: verify, validate, commit, then (the endpoint) answers 200."""
        envelope, sealed, message = self.open(body)
        now = self._clock()
        rejections = check_inbound(envelope, message, self.context, now)
        replies = self.replies_on_receipt(message, envelope, rejections)
        record = inbound_record(envelope, sealed, message)
        try:
            async with self._endpoint_db.transaction() as conn:
                problems = list(rejections)
                if not problems and isinstance(message, PayloadMessageResponse):
                    sent = await pg.find_outbound(conn, message.reference_message_id)
                    problems = reference_problems(message, envelope, sent)
                    if problems:
                        replies = []  # a response is never answered
                admitted = await pg.admit_inbound(
                    conn,
                    record,
                    now,
                    rejection_reason=reasons.join(problems) if problems else None,
                    processed=isinstance(message, TestMessage | TestMessageResponse)
                    and not problems,
                    replies=replies,
                )
                if admitted.admission is Admission.DUPLICATE_IDENTIFIER:
                    problems = duplicate_identifier(message)
                    for reply in self.replies(message, envelope, problems):
                        await pg.enqueue_outbound(conn, reply, now)
        except (db.DatabaseError, psycopg.OperationalError) as exc:
            log.error("could not store an inbound message: %s", exc)
            raise TransportRejection(
                503, "the message could not be stored; please retry", retry_after_s=30
            ) from None
        if admitted.admission is not Admission.ALREADY_SUBMITTED:
            self.wake_outbox()
        if admitted.admission is Admission.NEW and not problems:
            self.wake_handler()
        return received(message, envelope, admitted, problems)

    # --- handling -------------------------------------------------------------------------------

    async def handle_one(self) -> bool:
        """Claim the oldest due pending message and handle it in one transaction with its
        answer; False when there was none. A handler that raises leaves the message pending,
        its attempt counted and its next attempt backed off; the sender hears nothing."""
        handler = self._handler
        if handler is None:
            raise RuntimeError("no handler for inbound messages")
        async with self._handler_db.transaction() as conn:
            now = self._clock()
            inbound = await pg.claim_pending(conn, now)
            if inbound is None:
                return False
            try:
                async with conn.transaction():  # a savepoint: a failure undoes only this
                    outcome = await handler(conn, inbound)
                    if await pg.inbound_status(conn, inbound.id) is InboundStatus.PENDING:
                        await pg.mark_processed(conn, inbound.id, now)
            except (asyncio.CancelledError, psycopg.OperationalError):
                raise
            except Exception as exc:
                attempts = inbound.attempts + 1
                delay = self.settings.inbound_retry.delay_s(attempts)
                detail = f"{type(exc).__name__}: {exc}"[:500]
                await pg.record_inbound_failure(
                    conn, inbound.id, detail, now + timedelta(seconds=delay)
                )
                log.error(
                    "handling an inbound message failed; will retry",
                    extra={
                        "message_type": inbound.message_type,
                        "message_id": inbound.message_id,
                        "attempts": attempts,
                    },
                    exc_info=True,
                )
                return True
        if self._on_handled is not None:
            self._on_handled(outcome)
        self.handled += 1
        self.wake_outbox()
        return True

    async def _handle_step(self) -> float | None:
        while await self.handle_one():
            pass
        return None

    # --- delivery -------------------------------------------------------------------------------

    async def _outbox_step(self) -> float | None:
        async with self._outbox_db.connection() as conn:
            recipients = await pg.pending_recipients(conn)
        waits = await asyncio.gather(*(self.deliver_next(d, r) for d, r in recipients))
        pending = [w for w in waits if w is not None]
        return min([self._poll_s, *pending]) if pending else None

    async def deliver_next(self, domain: str, role: Role) -> float | None:
        """Deliver the oldest pending message to one peer, if it is due and no other process
        is sending to that peer; the seconds until this peer should be looked at again (0:
        at once, there may be more), or None when its queue is empty."""
        session = self._recipient_db.get((domain, role))
        if session is None:
            session = self._recipient_db[(domain, role)] = db.Session(
                self._dsn, f"uftp-outbox-{domain}"
            )
        async with session.transaction() as conn:
            if not await db.try_xact_lock(conn, db.OUTBOX_LOCK, f"{domain}/{role}"):
                return self._poll_s  # another process is delivering to this peer
            head = await pg.outbox_head(conn, domain, role)
            if head is None:
                return None
            now = self._clock()
            wait = (head.next_attempt_at - now).total_seconds()
            if wait > 0:
                return wait
            try:
                attempt = await self._post(head.recipient_domain, head.recipient_role, head.body)
            except Exception as exc:  # a bug, not the network: keep the message, retry later
                log.exception("delivery of %s crashed", head.message_id)
                attempt = Attempt(delivered=False, error=f"internal error: {exc!r}")
            now = self._clock()
            if attempt.delivered:
                await pg.record_delivered(conn, head.id, now)
                self.delivered += 1
                log.info(
                    "delivered",
                    extra={
                        "message_type": head.message_type,
                        "message_id": head.message_id,
                        "recipient": head.recipient_domain,
                    },
                )
                return 0.0
            jitter = self._random.uniform(0.75, 1.25)
            retry_at = next_attempt_at(
                self.settings.retry, attempt, head.attempts + 1, head.created_at, now, jitter
            )
            await pg.record_attempt_failed(conn, head.id, attempt.error[:500], retry_at=retry_at)
            fields = {
                "message_type": head.message_type,
                "message_id": head.message_id,
                "recipient": head.recipient_domain,
                "error": attempt.error[:500],
            }
            if retry_at is None:
                log.error("delivery failed for good; the peer needs manual attention", extra=fields)
                return 0.0
            log.warning("delivery failed, will retry", extra=fields)
            return (retry_at - now).total_seconds()

    async def _post(self, domain: str, role: Role, body: bytes) -> Attempt:
        session = self._session
        if session is None:
            raise RuntimeError("the UFTP participant is not started")
        return await post_to_peer(session, self.directory, self._tokens, (domain, role), body)
