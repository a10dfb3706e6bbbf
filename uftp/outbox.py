"""Outbox delivery: POST stored SignedMessages to peers, with back-off, across restarts.

Status classification (UFTP 3.1.0 transport, "Transmission"): 2xx delivered; 3xx
followed (the same POST to Location); 5xx, unknown codes, timeouts, connection resets, 404
(front-ends answer it while a back-end is down), 408, 419 (their key lookup failed), 425 and
429 temporary; every other 4xx final. A 401 while we send an OAuth token drops the token and
retries with a new one. Temporary failures back off exponentially (`RetryPolicy`) until the
message is older than `give_up_after_s` (at least an hour); then, or on a final error, it is
marked failed and the application is told (the spec: "returned to the sending process,
indicating a transport error").

Delivery is FIFO per peer, one message in flight per peer; different peers do not wait for each
other. The state lives in the outbox table, so a restart resumes where the last run stopped. A
message that reached the peer just before a crash is sent again: identical bytes with the same
MessageID, which the peer recognises as "Already Submitted".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urljoin

import aiohttp

from uftp import store
from uftp.database import SqliteStore
from uftp.loops import Backoff, DeathHook, SupervisedLoop
from uftp.models import Role, utc_now
from uftp.oauth import OAuthError, TokenSource
from uftp.participants import PeerDirectory, UnknownPeer
from uftp.settings import PeerSettings, RetryPolicy

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/xml; charset=utf-8"
MAX_REDIRECTS = 5
_TEMPORARY_4XX = frozenset({404, 408, 419, 425, 429})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST."""

    delivered: bool
    final: bool = False
    error: str = ""
    retry_after_s: float | None = None


def classify(status: int) -> Attempt:
    if 200 <= status < 300:
        return Attempt(delivered=True)
    if status in _TEMPORARY_4XX or not 400 <= status < 500:
        return Attempt(delivered=False, error=f"HTTP {status}")
    return Attempt(delivered=False, final=True, error=f"HTTP {status}")


def backoff_delay(policy: RetryPolicy, attempts: int, jitter: float = 1.0) -> float:
    """Seconds before the next try after `attempts` failures: first * 2^(attempts-1), capped,
    scaled by `jitter` (0.75..1.25 in use) so many queued messages do not retry in lockstep."""
    exponent = max(attempts - 1, 0)
    delay = policy.first_delay_s * (2.0 ** min(exponent, 32))
    return min(delay, policy.max_delay_s) * jitter


def next_attempt_at(
    policy: RetryPolicy,
    attempt: Attempt,
    attempts: int,
    created_at: datetime,
    now: datetime,
    jitter: float,
) -> datetime | None:
    """When to try a message again after the failed `attempt` (its `attempts`-th), or None to
    give up: a final error, or a message older than `give_up_after_s` by then. A peer's
    Retry-After is honoured up to the policy's longest delay."""
    if attempt.final:
        return None
    delay = backoff_delay(policy, attempts, jitter)
    if attempt.retry_after_s is not None:
        delay = max(delay, min(attempt.retry_after_s, policy.max_delay_s))
    retry_at = now + timedelta(seconds=delay)
    if retry_at > created_at + timedelta(seconds=policy.give_up_after_s):
        return None
    return retry_at


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifying client context: certificate chain and host name, TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_session(retry: RetryPolicy, ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
    """The HTTP client an outbox posts with: the policy's timeouts, at most four connections
    per peer (delivery is one message at a time per peer; the rest is for token requests)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context, limit_per_host=4),
        timeout=aiohttp.ClientTimeout(
            total=retry.request_timeout_s, connect=retry.connect_timeout_s
        ),
    )


class PeerTokens:
    """One OAuth `TokenSource` per peer, made anew when the peer's OAuth settings change."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, Role], TokenSource] = {}

    def source(self, peer: PeerSettings, session: aiohttp.ClientSession) -> TokenSource | None:
        if peer.oauth is None:
            return None
        key = (peer.domain, peer.role)
        source = self._sources.get(key)
        if source is None or source.settings != peer.oauth:
            source = self._sources[key] = TokenSource(peer.oauth, session)
        return source


async def post_to_peer(
    session: aiohttp.ClientSession,
    directory: PeerDirectory,
    tokens: PeerTokens,
    recipient: tuple[str, Role],
    body: bytes,
) -> Attempt:
    """One delivery attempt of a sealed message: POST it to the peer's endpoint (following
    redirects), and classify the outcome. Never raises for what the network or the peer did."""
    try:
        peer = directory.peer(*recipient)
    except UnknownPeer as exc:
        return Attempt(delivered=False, final=True, error=str(exc))
    headers = {"Content-Type": CONTENT_TYPE}
    source = tokens.source(peer, session)
    if source is not None:
        try:
            headers["Authorization"] = await source.authorization()
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
                # Redirects are honoured for load balancing (spec "Transmission"); a UFTP
                # message is always POSTed, whatever the code.
                url = urljoin(url, location)
                continue
            break
        else:
            return Attempt(delivered=False, error=f"more than {MAX_REDIRECTS} redirects")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Attempt(delivered=False, error=f"{type(exc).__name__}: {exc}")
    attempt = classify(status)
    if status == 401 and source is not None:
        source.invalidate()
        attempt = Attempt(delivered=False, error="HTTP 401 with a bearer token")
    if not attempt.delivered:
        attempt = Attempt(
            delivered=False,
            final=attempt.final,
            error=f"{attempt.error} from {url}: {detail.strip()[:200]}",
            retry_after_s=retry_after,
        )
    return attempt


class OutboxSender:
    """Background delivery of the outbox; `wake()` after committing new messages."""

    name = "uftp-outbox"

    def __init__(
        self,
        database: SqliteStore,
        directory: PeerDirectory,
        retry: RetryPolicy,
        *,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], datetime] = utc_now,
        on_failed: Callable[[store.OutboundMessage], None] | None = None,
    ) -> None:
        self._db = database
        self._directory = directory
        self._retry = retry
        self._ssl = ssl_context
        self._clock = clock
        self._on_failed = on_failed
        # Failures of the dispatch itself (the database), not of a delivery: those back off
        # per message (`backoff_delay`).
        self._loop = SupervisedLoop(
            self.name,
            self._dispatch,
            interval_s=None,
            backoff=Backoff(retry.first_delay_s, max(retry.first_delay_s, retry.max_delay_s)),
            on_death=self._loop_died,
            logger=log,
        )
        # Told when the delivery loop dies (an application raises an alarm with it).
        self.on_loop_death: DeathHook | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[tuple[str, Role], asyncio.Task[None]] = {}
        self._tokens = PeerTokens()
        self._random = random.Random()
        self.delivered = 0

    async def start(self) -> None:
        self._session = client_session(self._retry, self._ssl)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._in_flight.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        self._loop.wake()

    def _loop_died(self, name: str, error: BaseException | None) -> None:
        if self.on_loop_death is not None:
            self.on_loop_death(name, error)

    async def _dispatch(self) -> float:
        """Start a delivery for every peer whose oldest pending message is due; return how
        long to sleep until the next one falls due (a wake-up may come sooner)."""
        heads = await self._db.read(store.outbox_heads)
        now = self._clock()
        next_due: float = 3600.0
        for head in heads:
            peer = (head.recipient_domain, head.recipient_role)
            if peer in self._in_flight:
                continue
            wait = (head.next_attempt_at - now).total_seconds()
            if wait > 0:
                next_due = min(next_due, wait)
                continue
            task = asyncio.create_task(self._deliver(head), name=f"uftp-send-{head.message_id}")
            self._in_flight[peer] = task
            task.add_done_callback(functools.partial(self._finished, peer))
        return max(next_due, 0.01)

    def _finished(self, peer: tuple[str, Role], _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(peer, None)
        self._loop.wake()  # the next message for this peer may go now

    async def _deliver(self, message: store.OutboundMessage) -> None:
        try:
            attempt = await self._post(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the network: keep the message, retry later
            log.exception("delivery of %s crashed", message.message_id)
            attempt = Attempt(delivered=False, error=f"internal error: {exc!r}")
        now = self._clock()
        if attempt.delivered:
            await self._db.write(lambda c: store.record_delivered(c, message.id, now))
            self.delivered += 1
            log.info(
                "delivered",
                extra={
                    "message_type": message.message_type,
                    "message_id": message.message_id,
                    "recipient": message.recipient_domain,
                },
            )
            return
        jitter = self._random.uniform(0.75, 1.25)
        retry_at = next_attempt_at(
            self._retry, attempt, message.attempts + 1, message.created_at, now, jitter
        )
        error = attempt.error[:500]
        await self._db.write(
            lambda c: store.record_attempt_failed(c, message.id, error, retry_at=retry_at)
        )
        if retry_at is not None:
            log.warning(
                "delivery failed, will retry",
                extra={
                    "message_type": message.message_type,
                    "message_id": message.message_id,
                    "recipient": message.recipient_domain,
                    "error": error,
                    "retry_at": retry_at.isoformat(),
                },
            )
            return
        log.error(
            "delivery failed for good; the peer needs manual attention",
            extra={
                "message_type": message.message_type,
                "message_id": message.message_id,
                "recipient": message.recipient_domain,
                "error": error,
            },
        )
        if self._on_failed is not None:
            failed = await self._db.read(lambda c: store.find_outbound(c, message.message_id))
            if failed is not None:
                self._on_failed(failed)

    async def _post(self, message: store.OutboundMessage) -> Attempt:
        session = self._session
        if session is None:
            raise RuntimeError("outbox sender is not started")
        recipient = (message.recipient_domain, message.recipient_role)
        return await post_to_peer(session, self._directory, self._tokens, recipient, message.body)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # the HTTP-date form: ignore, back-off applies
