"""A UFTP participant: endpoint + inbox/outbox + generic validation, wired together.

Inbound (`receive`, called by the HTTP endpoint for every POST body):

1. envelope XML (hardened parse, XSD) -> 400
2. sender's key by (SenderDomain, SenderRole) -> 419; `crypto_sign_open` -> 401
3. inner XML (hardened parse, XSD; must be an inner message) -> 400; while the application
   `hold`s (its clock is not to be trusted, and the checks below depend on the time) -> 503
   with Retry-After
4. generic checks (`validation.check_inbound`): inner/outer sender, role may send this type,
   recipient is us, version, ISP-Duration/TimeZone against the market, period bounds, known
   congestion point, ISP coverage; for responses, that they answer a message we sent.
5. durable store with MessageID de-duplication, then 200:
   - a new valid request is *pending* for the application, which answers it later;
   - a new invalid message is stored *rejected* and its rejection is queued in the same
     transaction (the application never sees it);
   - a TestMessage is answered right here (stored processed, TestMessageResponse queued);
   - an identical repeat is "Already Submitted": 200, nothing stored, nothing answered again;
   - the same MessageID with other content is answered "Duplicate Identifier";
   - the store fails (a full, read-only or failing disk): 503 with Retry-After, never 200.

Outbound (`prepare`, `enqueue`, `send`): the message must validate against the XSD, is sealed
with our key, and its exact bytes are stored before the first attempt.

The application handles pending messages in its own transactions with `store` functions
plus `respond`/`enqueue` (or passes a `handler` that uftp runs per message in its own write
transaction), then calls `wake_outbox()`. A message whose handling fails is not answered: it
stays pending, its attempts are counted and it is tried again with back-off (`defer`,
`settings.InboundRetry`). Only the reasons the spec names are ever sent to the sender; what
went wrong inside stays in our log and in the inbox row.

The inbox and outbox live in a `SqliteStore`: the participant's own `Database` when given a
path, or the application's store when the application keeps its tables in the same file and
must remain its only writer.
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from uftp import reasons, store
from uftp.codec import from_xml
from uftp.database import Database, SqliteStore
from uftp.http import Authorize, TransportRejection
from uftp.loops import DeathHook, SupervisedLoop
from uftp.models import (
    FlexOffer,
    FlexOfferRevocation,
    FlexOrder,
    FlexOrderResponse,
    PayloadMessage,
    PayloadMessageResponse,
    Role,
    TestMessage,
    TestMessageResponse,
    utc_now,
)
from uftp.outbox import OutboxSender, client_ssl_context
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
from uftp.validation import OfferState, check_inbound

log = logging.getLogger(__name__)

Handler = Callable[[sqlite3.Connection, store.InboundMessage], object]

# Decoding (parse, XSD, Ed25519, model) costs roughly 0.1 ms per kB of body; a 96-ISP
# D-Prognosis takes about half a millisecond. Bodies up to this size are decoded on the event
# loop: handing them to a thread costs more in GIL contention than it saves (measured with
# `python -m bench uftp`). Larger ones (a month's FlexSettlement can be megabytes) go to a
# worker thread so the loop, which also serves the chargers, never stalls for long.
INLINE_DECODE_BYTES = 64 * 1024
HANDLED_KEPT = 1000
# What a 503 (the inbound message could not be stored) asks the sender to wait.
STORE_RETRY_AFTER_S = 30

T = TypeVar("T")

# SQLite result codes of faults that pass (the primary code, the low byte of an extended one):
# another connection holds the lock, an I/O error, a read-only or full disk, a file that cannot
# be opened right now.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_FULL, _SQLITE_CANTOPEN = 13, 14
_TRANSIENT_CODES = frozenset(
    {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN}
)
_TRANSIENT_TEXTS = ("locked", "busy", "disk i/o", "disk is full", "readonly", "read-only")


def is_transient(error: BaseException) -> bool:
    """A fault of the moment (storage, I/O), as opposed to a bug that will fail again."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _TRANSIENT_CODES
        text = str(error).lower()
        return any(marker in text for marker in _TRANSIENT_TEXTS)
    return isinstance(error, OSError | TimeoutError)


class Participant(ParticipantBase):
    """One UFTP participant (our AGR, or a simulated DSO) as a service component."""

    name = "uftp"

    def __init__(
        self,
        settings: ParticipantSettings,
        database: Path | SqliteStore,
        *,
        directory: PeerDirectory | None = None,
        clock: Callable[[], datetime] = utc_now,
        handler: Handler | None = None,
        authorize: Authorize | None = None,
        on_delivery_failed: Callable[[store.OutboundMessage], None] | None = None,
    ) -> None:
        super().__init__(settings, directory=directory, clock=clock)
        # A path: our own database, opened and closed with us. A store: the application's,
        # already open, its tables migrated (uftp.store.migrate) and closed by its owner.
        self._own_database: Database | None = None
        self.database: SqliteStore
        if isinstance(database, Path):
            self.database = self._own_database = Database(database)
        else:
            self.database = database
        self._handler = handler
        self.outbox = OutboxSender(
            self.database,
            self.directory,
            settings.retry,
            ssl_context=client_ssl_context(str(settings.ca_file) if settings.ca_file else None),
            clock=clock,
            on_failed=on_delivery_failed,
        )
        self.endpoint = http_endpoint(settings, self.receive, authorize)
        self._decoders: ThreadPoolExecutor | None = None
        # Why inbound messages cannot be taken now (the application's clock is not to be
        # trusted), or None; such messages are answered 503 with Retry-After.
        self.hold: Callable[[], str | None] = lambda: None
        self._inbound_arrived = asyncio.Event()
        self._inbound_listeners: list[Callable[[], object]] = []
        self._drainer: SupervisedLoop | None = None
        # Told when the handler loop dies (an application raises an alarm with it).
        self.on_loop_death: DeathHook | None = None
        # The latest handler outcomes, for `wait_handled`; bounded for long demo runs.
        self._handled: collections.deque[object] = collections.deque(maxlen=HANDLED_KEPT)
        self._handled_changed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._decoders = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uftp-decode")
        if self._own_database is not None:
            await self._own_database.open()
        await self.outbox.start()
        if self._handler is not None:
            self._drainer = SupervisedLoop(
                "uftp-handler",
                self._drain_step,
                interval_s=None,
                on_death=self.on_loop_death,
                logger=log,
            )
            self._drainer.start()
        try:
            await self.endpoint.start()
        except BaseException:
            await self.stop()
            raise
        self.outbox.wake()  # deliver what an earlier run left behind

    async def stop(self) -> None:
        await self.endpoint.stop()
        if self._drainer is not None:
            await self._drainer.stop()
            self._drainer = None
        await self.outbox.stop()
        if self._own_database is not None:
            await self._own_database.close()
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

    # --- outbound -------------------------------------------------------------------------------

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
        response = self.response(request, inbound.sender_domain, rejections, **fields)
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

    # --- inbound --------------------------------------------------------------------------------

    async def receive(self, body: bytes) -> Receipt:
        """The inbound pipeline for one POST body (see the module docstring)."""
        if len(body) <= INLINE_DECODE_BYTES or self._decoders is None:
            envelope, sealed, message = self.open(body)
        else:
            loop = asyncio.get_running_loop()
            envelope, sealed, message = await loop.run_in_executor(self._decoders, self.open, body)
        held = self.hold()
        if held is not None:
            # Validation depends on the time: rather no answer now than a wrong one.
            log.warning("not accepting messages now: %s", held)
            raise TransportRejection(
                503, "temporarily not accepting messages; please retry", retry_after_s=60
            )
        now = self._clock()
        rejections = check_inbound(envelope, message, self.context, now)
        replies = self.replies_on_receipt(message, envelope, rejections)
        record = inbound_record(envelope, sealed, message)

        def admit(conn: sqlite3.Connection) -> tuple[store.Admitted, list[str]]:
            problems = list(rejections)
            if not problems and isinstance(message, PayloadMessageResponse):
                sent = store.find_outbound(conn, message.reference_message_id)
                problems = reference_problems(message, envelope, sent)
            admitted = store.admit_inbound(
                conn,
                record,
                now,
                rejection_reason=reasons.join(problems) if problems else None,
                processed=isinstance(message, TestMessage | TestMessageResponse) and not problems,
                replies=replies,
            )
            return admitted, problems

        admitted, problems = await self._store_or_503(admit)
        if admitted.admission is store.Admission.DUPLICATE_IDENTIFIER:
            problems = duplicate_identifier(message)
            duplicate_replies = self.replies(message, envelope, problems)
            if duplicate_replies:
                await self._store_or_503(
                    lambda c: [store.enqueue_outbound(c, r, now) for r in duplicate_replies]
                )
                self.outbox.wake()
        elif admitted.admission is store.Admission.NEW:
            if replies:
                self.outbox.wake()
            if not problems and not isinstance(message, TestMessage | TestMessageResponse):
                self._inbound_arrived.set()
                if self._drainer is not None:
                    self._drainer.wake()
                for listener in self._inbound_listeners:
                    listener()
        return received(message, envelope, admitted, problems)

    async def _store_or_503(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Write for `receive`; a storage fault is answered 503 with Retry-After (the message
        is not stored, so the sender must send it again), never 200 and never the error."""
        try:
            return await self.database.write(work)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.error("could not store an inbound message: %s", exc)
            raise TransportRejection(
                503,
                "the message could not be stored; please retry",
                retry_after_s=STORE_RETRY_AFTER_S,
            ) from None

    async def pending(self, limit: int = 100) -> list[store.InboundMessage]:
        """Pending messages due for handling (a deferred one only once its retry is due)."""
        now = self._clock()
        horizon = self.settings.inbound_retry.max_delay_s
        return await self.database.read(
            lambda c: store.pending_inbound(c, limit, due_at=now, horizon_s=horizon)
        )

    async def defer(self, inbound: store.InboundMessage, error: BaseException) -> int:
        """Count a failed attempt to handle `inbound` and schedule the next one; returns the
        attempts so far (0 if even that could not be written: then it is simply due again).

        The sender hears nothing of it: the message stays pending and is answered once it
        could be handled. Transient faults (a locked or busy database, disk I/O, a full or
        read-only disk) are logged as warnings; anything else with its traceback. From
        `InboundRetry.alarm_after` attempts on the message is logged as stuck, every time."""
        policy = self.settings.inbound_retry
        attempts = inbound.attempts + 1
        retry_at = self._clock() + timedelta(seconds=policy.delay_s(attempts))
        detail = f"{type(error).__name__}: {error}"
        fields = {
            "message_type": inbound.message_type,
            "message_id": inbound.message_id,
            "attempts": attempts,
            "retry_at": retry_at.isoformat(),
            "error": detail,
        }
        if is_transient(error):
            log.warning("could not handle an inbound message; will retry", extra=fields)
        else:
            log.error(
                "handling an inbound message failed; will retry",
                extra=fields,
                exc_info=(type(error), error, error.__traceback__),
            )
        try:
            attempts = await self.database.write(
                lambda c: store.record_inbound_failure(c, inbound.id, detail[:500], retry_at)
            )
        except Exception as exc:
            log.warning("could not record the failed attempt: %s", exc)
            return 0
        if attempts >= policy.alarm_after:
            log.error("an inbound message is stuck; it stays pending", extra=fields)
        return attempts

    async def stuck(self) -> int:
        """Pending messages that failed `InboundRetry.alarm_after` times or more."""
        threshold = self.settings.inbound_retry.alarm_after
        return await self.database.read(lambda c: store.stuck_inbound(c, threshold))

    def on_inbound(self, listener: Callable[[], object]) -> None:
        """`listener()` (on the event loop) whenever a new valid message becomes pending: an
        application that handles the inbox itself wakes its loop with it."""
        self._inbound_listeners.append(listener)

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

    async def _drain_step(self) -> float | None:
        """Handle what is due; the wait until the next deferred message falls due (None:
        until a new one arrives)."""
        await self.process_pending()
        due = await self.database.read(store.next_inbound_attempt)
        if due is None:
            return None
        wait_s = max(0.05, (due - self._clock()).total_seconds())
        return min(wait_s, self.settings.inbound_retry.max_delay_s)

    async def process_pending(self, handler: Handler | None = None) -> int:
        """Run `handler` (default: the participant's) for each pending message that is due,
        each in its own write transaction. The handler answers with `respond` or calls
        `mark_processed`; one that does neither gets the message marked processed. A handler
        that raises leaves the message pending for a later attempt (`defer`); returns how
        many messages were handled."""
        handler = handler or self._handler
        if handler is None:
            raise RuntimeError("no handler to process pending messages with")
        count = 0
        # Once per call each: a message whose failure could not even be recorded (the disk is
        # full) is due again at once, and must not be retried in a tight loop.
        attempted: set[int] = set()
        while True:
            batch = [m for m in await self.pending(50) if m.id not in attempted]
            if not batch:
                return count
            for inbound in batch:
                attempted.add(inbound.id)
                try:
                    outcome = await self.database.write(
                        functools.partial(self._handle_one, inbound=inbound, handler=handler)
                    )
                except Exception as exc:
                    await self.defer(inbound, exc)
                    continue
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

    def __init__(
        self, settings: ParticipantSettings, database: Path | SqliteStore, **kwargs: Any
    ) -> None:
        if settings.role is not Role.AGR:
            raise ValueError(f"an AgrParticipant needs role AGR, not {settings.role}")
        super().__init__(settings, database, **kwargs)

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
