"""The aggregator's UFTP participant: uftp's core and HTTP endpoint over PostgreSQL.

The aggregator is ONE participant (one domain, one Ed25519 key, one endpoint) for all its
congestion points, and may run as several processes on one database. What comes from uftp
unchanged: the aiohttp endpoint and its status codes (`uftp.http`), the hardened codec, CS1
sealing, the generic checks (`uftp.validation.check_inbound`), responses
(`uftp.responses`), the peer directory and the delivery policy (`uftp.outbox.classify`,
`backoff_delay`, OAuth `TokenSource`). What is here: the same inbox and outbox on PostgreSQL
(`agent.central.uftp_store`), so that

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
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import aiohttp
import psycopg

from agent.central import db
from agent.central import uftp_store as pg
from uftp import reasons
from uftp.codec import CodecError, envelope_from_xml, from_xml, to_xml
from uftp.http import HttpEndpoint, TransportRejection
from uftp.loops import Backoff, SupervisedLoop
from uftp.models import (
    RESPONSE_TYPES,
    SPEC_VERSION,
    PayloadMessage,
    PayloadMessageResponse,
    Role,
    SignedMessage,
    TestMessage,
    TestMessageResponse,
    reference_of,
    utc_now,
)
from uftp.oauth import OAuthError, TokenSource
from uftp.outbox import (
    CONTENT_TYPE,
    MAX_REDIRECTS,
    Attempt,
    backoff_delay,
    classify,
    client_ssl_context,
)
from uftp.participant import Receipt
from uftp.participants import PeerDirectory, StaticPeerDirectory, UnknownPeer
from uftp.responses import build_response, needs_response
from uftp.sealing import SignatureError, open_sealed, seal
from uftp.settings import ParticipantSettings
from uftp.store import Admission, InboundMessage, InboundRecord, InboundStatus, PreparedOutbound
from uftp.validation import InboundContext, check_inbound

log = logging.getLogger(__name__)

Handler = Callable[[db.Connection, InboundMessage], Awaitable[object]]

_ANSWERS: dict[str, str] = {
    response.xml_name: request.xml_name for request, response in RESPONSE_TYPES.items()
}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# How often a process looks for work another process queued (its own work wakes it at once).
DEFAULT_POLL_S = 1.0


class CentralUftp:
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
        self.settings = settings
        self.directory = directory or StaticPeerDirectory(settings.peers)
        self._clock = clock
        self._handler = handler
        self._poll_s = poll_s
        # Called right after a handled message's transaction committed, before any await: a
        # crash test's failpoint sits there, and the command publisher is woken from it.
        self._on_handled = on_handled
        self.context = InboundContext(
            own_domain=settings.domain,
            own_role=settings.role,
            market=settings.market,
            supported_versions=settings.supported_versions,
            congestion_points=settings.congestion_points,
            period_horizon_days=settings.period_horizon_days,
        )
        self.endpoint = HttpEndpoint(
            self.receive,
            host=settings.host,
            port=settings.port,
            path=settings.path,
            max_body_bytes=settings.max_body_bytes,
            tls=settings.tls,
            rate_limit=settings.rate_limit,
        )
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
        self._tokens: dict[tuple[str, Role], TokenSource] = {}
        self._random = random.Random()
        self.handled = 0
        self.delivered = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def loops(self) -> tuple[SupervisedLoop, ...]:
        return (self._handler_loop, self._outbox_loop)

    async def start(self) -> None:
        retry = self.settings.retry
        ssl_context = client_ssl_context(
            str(self.settings.ca_file) if self.settings.ca_file else None
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit_per_host=4),
            timeout=aiohttp.ClientTimeout(
                total=retry.request_timeout_s, connect=retry.connect_timeout_s
            ),
        )
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

    def now(self) -> datetime:
        return self._clock()

    def wake_outbox(self) -> None:
        self._outbox_loop.wake()

    def wake_handler(self) -> None:
        self._handler_loop.wake()

    # --- outbound -------------------------------------------------------------------------------

    def recipient_role(self, domain: str) -> Role:
        roles = [p.role for p in self.directory.peers() if p.domain == domain]
        if len(roles) != 1:
            raise UnknownPeer(domain, "?" if not roles else "/".join(map(str, roles)))
        return roles[0]

    def prepare(
        self, message: PayloadMessage, *, recipient_role: Role | None = None
    ) -> PreparedOutbound:
        """Validate against the XSD and seal; raises on an invalid message or unknown peer."""
        if message.sender_domain != self.settings.domain:
            raise ValueError(
                f"{message.xml_name} has SenderDomain {message.sender_domain}, "
                f"we are {self.settings.domain}"
            )
        role = recipient_role or self.recipient_role(message.recipient_domain)
        self.directory.peer(message.recipient_domain, role)
        xml = to_xml(message)
        return PreparedOutbound(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            message_type=message.xml_name,
            reference_id=reference_of(message),
            recipient_domain=message.recipient_domain,
            recipient_role=role,
            result=str(message.result) if isinstance(message, PayloadMessageResponse) else None,
            xml=xml,
            body=seal(xml, self.settings.signing_key, self.settings.domain, self.settings.role),
        )

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
        response = self._response(request, inbound.sender_domain, rejections, **fields)
        if response is not None:
            await self.enqueue(conn, response, reply_to=inbound)
        await pg.mark_processed(
            conn, inbound.id, self._clock(), rejection_reason=reasons.join(rejections) or None
        )
        return response

    def _response(
        self,
        request: PayloadMessage,
        recipient_domain: str,
        rejections: Sequence[str],
        **fields: Any,
    ) -> PayloadMessage | None:
        supported = request.version in self.settings.supported_versions
        return build_response(
            request,
            self.settings.domain,
            rejections,
            recipient_domain=recipient_domain,
            version=request.version if supported else SPEC_VERSION,
            time_stamp=self._clock(),  # our clock, as on everything we send
            **fields,
        )

    # --- inbound --------------------------------------------------------------------------------

    def _open(self, body: bytes) -> tuple[SignedMessage, bytes, PayloadMessage]:
        limit = self.settings.max_body_bytes
        try:
            envelope = envelope_from_xml(body, max_bytes=limit)
        except CodecError as exc:
            raise TransportRejection(400, f"SignedMessage: {exc}") from None
        try:
            keys = self.directory.verify_keys(envelope.sender_domain, envelope.sender_role)
        except UnknownPeer as exc:
            raise TransportRejection(419, f"sender key lookup failed: {exc}") from None
        try:
            sealed = bytes(envelope.body)
            inner = open_sealed(sealed, keys)
        except SignatureError as exc:
            raise TransportRejection(401, str(exc)) from None
        try:
            message = from_xml(inner, max_bytes=limit)
        except CodecError as exc:
            raise TransportRejection(400, f"inner message: {exc}") from None
        return envelope, sealed, message

    def _replies(
        self, message: PayloadMessage, envelope: SignedMessage, rejections: Sequence[str]
    ) -> list[PreparedOutbound]:
        if not needs_response(message):
            return []
        try:
            response = self._response(message, envelope.sender_domain, rejections)
        except ValueError:
            log.warning("cannot build a response to %s", message.xml_name, exc_info=True)
            return []
        if response is None:
            return []
        return [self.prepare(response, recipient_role=envelope.sender_role)]

    async def _reference_problems(
        self, conn: db.Connection, response: PayloadMessageResponse, envelope: SignedMessage
    ) -> list[str]:
        """A response must answer a message we sent to its sender, in the same conversation."""
        request_type = _ANSWERS.get(response.xml_name)
        if request_type is None:
            return []
        attribute = type(response).model_fields[response.reference_field].alias or "reference"
        sent = await pg.find_outbound(conn, response.reference_message_id)
        if (
            sent is None
            or sent.message_type != request_type
            or sent.recipient_domain != envelope.sender_domain
        ):
            return [
                reasons.explain(
                    reasons.unknown_reference(attribute),
                    f"we sent no {request_type} {response.reference_message_id} to "
                    f"{envelope.sender_domain}",
                )
            ]
        if sent.conversation_id != response.conversation_id:
            return [
                reasons.explain(
                    reasons.unknown_reference(attribute),
                    f"{request_type} {sent.message_id} belongs to another ConversationID",
                )
            ]
        return []

    async def receive(self, body: bytes) -> Receipt:
        """One POST body: verify, validate, commit, then (the endpoint) answers 200."""
        envelope, sealed, message = self._open(body)
        now = self._clock()
        rejections = check_inbound(envelope, message, self.context, now)
        replies: list[PreparedOutbound] = []
        if rejections:
            replies = self._replies(message, envelope, rejections)
        elif isinstance(message, TestMessage):
            replies = self._replies(message, envelope, ())
        record = InboundRecord(
            sender_domain=envelope.sender_domain,
            sender_role=envelope.sender_role,
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            message_type=message.xml_name,
            reference_id=reference_of(message),
            sealed=sealed,
        )
        try:
            async with self._endpoint_db.transaction() as conn:
                problems = list(rejections)
                if not problems and isinstance(message, PayloadMessageResponse):
                    problems = await self._reference_problems(conn, message, envelope)
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
                    problems = [
                        reasons.explain(
                            reasons.DUPLICATE_IDENTIFIER,
                            f"MessageID {message.message_id} was already used for other content",
                        )
                    ]
                    for reply in self._replies(message, envelope, problems):
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
        receipt = Receipt(
            admission=admitted.admission,
            message_type=message.xml_name,
            message_id=message.message_id,
            sender_domain=envelope.sender_domain,
            inbox_id=admitted.inbox_id,
            rejections=tuple(problems),
        )
        log.info(
            "received",
            extra={
                "message_type": receipt.message_type,
                "message_id": receipt.message_id,
                "sender": receipt.sender_domain,
                "admission": str(receipt.admission),
                "rejections": reasons.join(receipt.rejections),
            },
        )
        return receipt

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
            retry = self.settings.retry
            retry_at: datetime | None = None
            if not attempt.final:
                delay = backoff_delay(retry, head.attempts + 1, self._random.uniform(0.75, 1.25))
                if attempt.retry_after_s is not None:
                    delay = max(delay, min(attempt.retry_after_s, retry.max_delay_s))
                retry_at = now + timedelta(seconds=delay)
                if retry_at > head.created_at + timedelta(seconds=retry.give_up_after_s):
                    retry_at = None
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
        try:
            peer = self.directory.peer(domain, role)
        except UnknownPeer as exc:
            return Attempt(delivered=False, final=True, error=str(exc))
        headers = {"Content-Type": CONTENT_TYPE}
        tokens: TokenSource | None = None
        if peer.oauth is not None:
            tokens = self._tokens.get((domain, role))
            if tokens is None or tokens.settings != peer.oauth:
                tokens = self._tokens[(domain, role)] = TokenSource(peer.oauth, session)
            try:
                headers["Authorization"] = await tokens.authorization()
            except OAuthError as exc:
                return Attempt(delivered=False, error=str(exc))
        url = peer.endpoint
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    location = response.headers.get("Location")
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    detail = (await response.content.read(300)).decode("utf-8", "replace")
                if status in _REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                break
            else:
                return Attempt(delivered=False, error=f"more than {MAX_REDIRECTS} redirects")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(delivered=False, error=f"{type(exc).__name__}: {exc}")
        attempt = classify(status)
        if status == 401 and tokens is not None:
            tokens.invalidate()
            attempt = Attempt(delivered=False, error="HTTP 401 with a bearer token")
        if not attempt.delivered:
            attempt = Attempt(
                delivered=False,
                final=attempt.final,
                error=f"{attempt.error} from {url}: {detail.strip()[:200]}",
                retry_after_s=retry_after,
            )
        return attempt


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    return None
