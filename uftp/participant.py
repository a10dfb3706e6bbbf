"""A UFTP participant: endpoint + inbox/outbox + generic validation, wired together.

Inbound (`receive`, called by the HTTP endpoint for every POST body):

1. envelope XML (hardened parse, XSD) -> 400
2. sender's key by (SenderDomain, SenderRole) -> 419; `crypto_sign_open` -> 401
3. inner XML (hardened parse, XSD; must be an inner message) -> 400
4. generic checks (`validation.check_inbound`): inner/outer sender, role may send this type,
   recipient is us, version, ISP-Duration/TimeZone against the market, period bounds, known
   congestion point, ISP coverage; for responses, that they answer a message we sent.
5. durable store with MessageID de-duplication, then 200:
   - a new valid request is *pending* for the application, which answers it later;
   - a new invalid message is stored *rejected* and its rejection is queued in the same
     transaction (the application never sees it);
   - a TestMessage is answered right here (stored processed, TestMessageResponse queued);
   - an identical repeat is "Already Submitted": 200, nothing stored, nothing answered again;
   - the same MessageID with other content is answered "Duplicate Identifier".

Outbound (`prepare`, `enqueue`, `send`): the message must validate against the XSD, is sealed
with our key, and its exact bytes are stored before the first attempt.

The application handles pending messages in its own transactions with `store` functions
plus `respond`/`enqueue` (or passes a `handler` that uftp runs per message in its own write
transaction), then calls `wake_outbox()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from uftp import reasons, store
from uftp.codec import CodecError, envelope_from_xml, from_xml, to_xml
from uftp.database import Database
from uftp.http import Authorize, HttpEndpoint, TransportRejection
from uftp.models import (
    RESPONSE_TYPES,
    SPEC_VERSION,
    FlexOffer,
    FlexOfferRevocation,
    FlexOrder,
    FlexOrderResponse,
    PayloadMessage,
    PayloadMessageResponse,
    Role,
    SignedMessage,
    TestMessage,
    TestMessageResponse,
    reference_of,
    utc_now,
)
from uftp.outbox import OutboxSender, client_ssl_context
from uftp.participants import PeerDirectory, StaticPeerDirectory, UnknownPeer
from uftp.responses import build_response, needs_response
from uftp.sealing import SignatureError, open_sealed, seal
from uftp.settings import ParticipantSettings
from uftp.validation import InboundContext, OfferState, check_inbound

log = logging.getLogger(__name__)

Handler = Callable[[sqlite3.Connection, store.InboundMessage], object]

# Decoding (parse, XSD, Ed25519, model) costs roughly 0.1 ms per kB of body; a 96-ISP
# D-Prognosis takes about half a millisecond. Bodies up to this size are decoded on the event
# loop: handing them to a thread costs more in GIL contention than it saves (measured with
# `python -m bench uftp`). Larger ones (a month's FlexSettlement can be megabytes) go to a
# worker thread so the loop, which also serves the chargers, never stalls for long.
INLINE_DECODE_BYTES = 64 * 1024
HANDLED_KEPT = 1000

# Response type name -> the request type it answers, for the "known reference" check.
_ANSWERS: dict[str, type[PayloadMessage]] = {
    response.xml_name: request for request, response in RESPONSE_TYPES.items()
}


@dataclass(frozen=True)
class Receipt:
    """What `receive` did with one POST body that passed the transport checks."""

    admission: store.Admission
    message_type: str
    message_id: str
    sender_domain: str
    inbox_id: int | None
    rejections: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return self.admission is store.Admission.NEW and not self.rejections


class Participant:
    """One UFTP participant (our AGR, or a simulated DSO) as a service component."""

    name = "uftp"

    def __init__(
        self,
        settings: ParticipantSettings,
        database_path: Path,
        *,
        directory: PeerDirectory | None = None,
        clock: Callable[[], datetime] = utc_now,
        handler: Handler | None = None,
        authorize: Authorize | None = None,
        on_delivery_failed: Callable[[store.OutboundMessage], None] | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory or StaticPeerDirectory(settings.peers)
        self.database = Database(database_path)
        self._clock = clock
        self._handler = handler
        self.context = InboundContext(
            own_domain=settings.domain,
            own_role=settings.role,
            market=settings.market,
            supported_versions=settings.supported_versions,
            congestion_points=settings.congestion_points,
            period_horizon_days=settings.period_horizon_days,
        )
        self.outbox = OutboxSender(
            self.database,
            self.directory,
            settings.retry,
            ssl_context=client_ssl_context(str(settings.ca_file) if settings.ca_file else None),
            clock=clock,
            on_failed=on_delivery_failed,
        )
        self.endpoint = HttpEndpoint(
            self.receive,
            host=settings.host,
            port=settings.port,
            path=settings.path,
            max_body_bytes=settings.max_body_bytes,
            tls=settings.tls,
            rate_limit=settings.rate_limit,
            authorize=authorize,
        )
        self._decoders: ThreadPoolExecutor | None = None
        self._inbound_arrived = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        # The latest handler outcomes, for `wait_handled`; bounded for long demo runs.
        self._handled: collections.deque[object] = collections.deque(maxlen=HANDLED_KEPT)
        self._handled_changed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._decoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uftp-decode")
        await self.database.open()
        await self.outbox.start()
        if self._handler is not None:
            self._drainer = asyncio.create_task(self._drain_forever(), name="uftp-handler")
        try:
            await self.endpoint.start()
        except BaseException:
            await self.stop()
            raise
        self.outbox.wake()  # deliver what an earlier run left behind

    async def stop(self) -> None:
        await self.endpoint.stop()
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
        await self.outbox.stop()
        await self.database.close()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None

    @property
    def port(self) -> int:
        if self.endpoint.bound_port is None:
            raise RuntimeError("participant is not started")
        return self.endpoint.bound_port

    @property
    def url(self) -> str:
        return self.endpoint.url

    def set_congestion_points(self, congestion_points: Iterable[str] | None) -> None:
        """Update the congestion points we are active at (e.g. from AGRPortfolioQueryResponse)."""
        points = None if congestion_points is None else frozenset(congestion_points)
        self.context = dataclasses.replace(self.context, congestion_points=points)

    def now(self) -> datetime:
        return self._clock()

    # --- outbound -------------------------------------------------------------------------------

    def recipient_role(self, domain: str) -> Role:
        """The role of the peer with this domain (ambiguous if it has several: pass it)."""
        roles = [p.role for p in self.directory.peers() if p.domain == domain]
        if len(roles) != 1:
            raise UnknownPeer(domain, "?" if not roles else "/".join(map(str, roles)))
        return roles[0]

    def prepare(
        self, message: PayloadMessage, *, recipient_role: Role | None = None
    ) -> store.PreparedOutbound:
        """Validate against the XSD and seal; raises on an invalid message or unknown peer."""
        if message.sender_domain != self.settings.domain:
            raise ValueError(
                f"{message.xml_name} has SenderDomain {message.sender_domain}, "
                f"we are {self.settings.domain}"
            )
        role = recipient_role or self.recipient_role(message.recipient_domain)
        self.directory.peer(message.recipient_domain, role)  # raises UnknownPeer early
        xml = to_xml(message)
        return store.PreparedOutbound(
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

    def enqueue(
        self,
        conn: sqlite3.Connection,
        message: PayloadMessage,
        *,
        reply_to: store.InboundMessage | None = None,
        recipient_role: Role | None = None,
    ) -> store.PreparedOutbound:
        """Prepare and put in the outbox within the caller's transaction (no commit)."""
        if reply_to is not None and recipient_role is None:
            recipient_role = reply_to.sender_role
        prepared = self.prepare(message, recipient_role=recipient_role)
        store.enqueue_outbound(
            conn, prepared, self._clock(), reply_to=None if reply_to is None else reply_to.id
        )
        return prepared

    async def send(
        self, message: PayloadMessage, *, recipient_role: Role | None = None
    ) -> store.PreparedOutbound:
        """Enqueue in uftp's own transaction, then wake the sender."""
        prepared = self.prepare(message, recipient_role=recipient_role)
        now = self._clock()
        await self.database.write(lambda c: store.enqueue_outbound(c, prepared, now))
        self.outbox.wake()
        return prepared

    def wake_outbox(self) -> None:
        """Call after committing a transaction that enqueued messages."""
        self.outbox.wake()

    # --- answering --------------------------------------------------------------------------------

    def respond(
        self,
        conn: sqlite3.Connection,
        inbound: store.InboundMessage,
        rejections: Sequence[str] = (),
        *,
        request: PayloadMessage | None = None,
        **fields: Any,
    ) -> PayloadMessage | None:
        """Answer a pending request (Accepted without rejections) and mark it handled, in the
        caller's transaction."""
        request = request if request is not None else inbound.message()
        response = self._response(request, inbound.sender_domain, rejections, **fields)
        if response is not None:
            self.enqueue(conn, response, reply_to=inbound)
        store.mark_processed(
            conn, inbound.id, self._clock(), rejection_reason=reasons.join(rejections) or None
        )
        return response

    def mark_processed(
        self,
        conn: sqlite3.Connection,
        inbound: store.InboundMessage,
        rejections: Sequence[str] = (),
    ) -> None:
        store.mark_processed(
            conn, inbound.id, self._clock(), rejection_reason=reasons.join(rejections) or None
        )

    def _response(
        self,
        request: PayloadMessage,
        recipient_domain: str,
        rejections: Sequence[str],
        **fields: Any,
    ) -> PayloadMessage | None:
        # Answer in the request's version when we speak it (the content is 3.1.0 either way).
        supported = request.version in self.settings.supported_versions
        return build_response(
            request,
            self.settings.domain,
            rejections,
            recipient_domain=recipient_domain,
            version=request.version if supported else SPEC_VERSION,
            **fields,
        )

    # --- inbound --------------------------------------------------------------------------------

    def _open(self, body: bytes) -> tuple[SignedMessage, bytes, PayloadMessage]:
        """Envelope, sealed body and verified inner message, or the HTTP status why not."""
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

    async def receive(self, body: bytes) -> Receipt:
        """The inbound pipeline for one POST body (see the module docstring)."""
        if len(body) <= INLINE_DECODE_BYTES or self._decoders is None:
            envelope, sealed, message = self._open(body)
        else:
            loop = asyncio.get_running_loop()
            envelope, sealed, message = await loop.run_in_executor(self._decoders, self._open, body)
        now = self._clock()
        rejections = check_inbound(envelope, message, self.context, now)
        replies: list[store.PreparedOutbound] = []
        if rejections:
            replies = self._replies(message, envelope, rejections)
        elif isinstance(message, TestMessage):
            replies = self._replies(message, envelope, ())
        record = store.InboundRecord(
            sender_domain=envelope.sender_domain,
            sender_role=envelope.sender_role,
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            message_type=message.xml_name,
            reference_id=reference_of(message),
            sealed=sealed,
        )

        def admit(conn: sqlite3.Connection) -> tuple[store.Admitted, list[str]]:
            problems = list(rejections)
            if not problems and isinstance(message, PayloadMessageResponse):
                problems = self._response_reference_problems(conn, message, envelope)
            admitted = store.admit_inbound(
                conn,
                record,
                now,
                rejection_reason=reasons.join(problems) if problems else None,
                processed=isinstance(message, TestMessage | TestMessageResponse) and not problems,
                replies=replies,
            )
            return admitted, problems

        admitted, problems = await self.database.write(admit)
        if admitted.admission is store.Admission.DUPLICATE_IDENTIFIER:
            problems = [
                reasons.explain(
                    reasons.DUPLICATE_IDENTIFIER,
                    f"MessageID {message.message_id} was already used for other content",
                )
            ]
            duplicate_replies = self._replies(message, envelope, problems)
            if duplicate_replies:
                await self.database.write(
                    lambda c: [store.enqueue_outbound(c, r, now) for r in duplicate_replies]
                )
                self.outbox.wake()
        elif admitted.admission is store.Admission.NEW:
            if replies:
                self.outbox.wake()
            if not problems and not isinstance(message, TestMessage | TestMessageResponse):
                self._inbound_arrived.set()
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

    def _replies(
        self, message: PayloadMessage, envelope: SignedMessage, rejections: Sequence[str]
    ) -> list[store.PreparedOutbound]:
        """The automatic answer, addressed to the authenticated envelope sender."""
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

    def _response_reference_problems(
        self,
        conn: sqlite3.Connection,
        response: PayloadMessageResponse,
        envelope: SignedMessage,
    ) -> list[str]:
        """A response must answer a message we sent to its sender, in the same conversation."""
        request = _ANSWERS.get(response.xml_name)
        if request is None:
            return []
        request_type = request.xml_name
        attribute = type(response).model_fields[response.reference_field].alias or "reference"
        sent = store.find_outbound(conn, response.reference_message_id)
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

    async def pending(self, limit: int = 100) -> list[store.InboundMessage]:
        return await self.database.read(lambda c: store.pending_inbound(c, limit))

    async def wait_inbound(self, wait_s: float | None = None) -> bool:
        """Wait until a new valid message is pending (True) or `wait_s` passes (False)."""
        try:
            async with asyncio.timeout(wait_s):
                await self._inbound_arrived.wait()
        except TimeoutError:
            return False
        self._inbound_arrived.clear()
        return True

    # --- handler-driven processing ----------------------------------------------------------------

    async def _drain_forever(self) -> None:
        while True:
            self._inbound_arrived.clear()
            try:
                await self.process_pending()
            except Exception:
                log.exception("processing pending UFTP messages failed; retrying shortly")
                await asyncio.sleep(1.0)
                continue
            await self._inbound_arrived.wait()

    async def process_pending(self, handler: Handler | None = None) -> int:
        """Run `handler` (default: the participant's) for each pending message, each in its own
        write transaction. The handler answers with `respond` or calls `mark_processed`; one
        that does neither gets the message marked processed. A handler that raises gets the
        message answered "Invalid Message" instead of retrying it forever."""
        handler = handler or self._handler
        if handler is None:
            raise RuntimeError("no handler to process pending messages with")
        count = 0
        while True:
            batch = await self.pending(50)
            if not batch:
                return count
            for inbound in batch:
                outcome: object = None
                try:
                    outcome = await self.database.write(
                        functools.partial(self._handle_one, inbound=inbound, handler=handler)
                    )
                except Exception as exc:
                    log.exception("handler failed on %s %s", inbound.message_type, inbound.id)
                    reason = reasons.explain(
                        reasons.INVALID_MESSAGE, f"could not be processed: {exc}"
                    )
                    await self.database.write(
                        functools.partial(self._fail_one, inbound=inbound, reason=reason)
                    )
                count += 1
                if outcome is not None:
                    self._handled.append(outcome)
                    self._handled_changed.set()
            self.outbox.wake()

    def _handle_one(
        self, conn: sqlite3.Connection, inbound: store.InboundMessage, handler: Handler
    ) -> object:
        outcome = handler(conn, inbound)
        still = conn.execute("SELECT status FROM uftp_inbox WHERE id = ?", (inbound.id,)).fetchone()
        if still is not None and still[0] == store.InboundStatus.PENDING:
            store.mark_processed(conn, inbound.id, self._clock())
        return outcome

    def _fail_one(
        self, conn: sqlite3.Connection, inbound: store.InboundMessage, reason: str
    ) -> None:
        try:
            request = inbound.message()
        except CodecError:
            store.mark_processed(conn, inbound.id, self._clock(), rejection_reason=reason)
            return
        if needs_response(request):
            self.respond(conn, inbound, [reason], request=request)
        else:
            store.mark_processed(conn, inbound.id, self._clock(), rejection_reason=reason)

    async def wait_handled(
        self, predicate: Callable[[object], bool], wait_s: float = 10.0
    ) -> object:
        """The first kept handler outcome matching `predicate`, waiting for one if needed
        (tests, the demo)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            self._handled_changed.clear()
            for outcome in list(self._handled):
                if predicate(outcome):
                    return outcome
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching outcome within {wait_s} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._handled_changed.wait()

    @property
    def handled(self) -> list[object]:
        return list(self._handled)


# --- the AGR --------------------------------------------------------------------------------------


class AgrParticipant(Participant):
    """Our side. Business decisions stay with the application; this adds what the AGR can
    know from uftp's own tables."""

    def __init__(self, settings: ParticipantSettings, database_path: Path, **kwargs: Any) -> None:
        if settings.role is not Role.AGR:
            raise ValueError(f"an AgrParticipant needs role AGR, not {settings.role}")
        super().__init__(settings, database_path, **kwargs)

    @staticmethod
    def offer_for_order(
        conn: sqlite3.Connection, order: FlexOrder
    ) -> tuple[FlexOffer | None, OfferState]:
        """The FlexOffer a FlexOrder names, as we sent it, and its state: revoked if we queued
        a FlexOfferRevocation for it (a revocation crossing an order wins), ordered if we
        accepted an earlier FlexOrder for it."""
        if order.flex_offer_message_id is None:
            return None, OfferState()
        sent = store.find_outbound(conn, order.flex_offer_message_id)
        if sent is None or sent.message_type != FlexOffer.xml_name:
            return None, OfferState()
        offer = from_xml(sent.xml)
        assert isinstance(offer, FlexOffer)
        revoked = bool(
            store.outbound_messages(
                conn, message_type=FlexOfferRevocation.xml_name, reference_id=offer.message_id
            )
        )
        earlier_orders = {
            m.message_id
            for m in store.inbound_messages(
                conn, message_type=FlexOrder.xml_name, reference_id=offer.message_id
            )
            if m.message_id != order.message_id
        }
        ordered = any(
            response.result == "Accepted"
            for order_id in earlier_orders
            for response in store.outbound_messages(
                conn, message_type=FlexOrderResponse.xml_name, reference_id=order_id
            )
        )
        return offer, OfferState(revoked=revoked, ordered=ordered)
