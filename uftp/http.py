"""The aiohttp shell of the inbound side: ``POST /shapeshifter/api/v3/message``.

HTTP status codes (UFTP 3.1.0 transport, "Error handling"), decided here or by the
receive function's `TransportRejection`:

- 411 no Content-Length (a chunked body), 413 body above the limit (refused unread),
- 400 wrong Content-Type or charset, an unparseable or schema-invalid envelope or inner message,
- 429 the sending address exceeds the rate limit (temporary, with Retry-After),
- 419 the sender's key cannot be found (temporary), 401 the signature does not verify,
- 503 with Retry-After when the message could not be stored (a full, read-only or failing
  disk): temporary, the sender retries; 500 for any other failure to store it,
- 200 once the message is durably stored. Business answers go back later as separate signed
  messages; the 200 carries no body.

TLS is served from certificate files when configured; otherwise run behind a TLS-terminating
reverse proxy (docs/uftp.md).
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from uftp.settings import RateLimit, TlsSettings

log = logging.getLogger(__name__)

# The spec asks for text/xml; the Java library also accepts application/xml, so do we.
ACCEPTED_CONTENT_TYPES = frozenset({"text/xml", "application/xml"})


class TransportRejection(Exception):
    """A problem reported with an HTTP status instead of a UFTP response; `retry_after_s`
    for a temporary one (the Retry-After header)."""

    def __init__(self, status: int, reason: str, *, retry_after_s: int | None = None) -> None:
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"HTTP {status}: {reason}")


Receive = Callable[[bytes], Awaitable[object]]
Authorize = Callable[[str | None], Awaitable[bool]]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per remote address."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> float:
        """0 if a request may pass now, else the seconds until one may."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:  # forget idle senders rather than grow forever
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(float(self._limit.burst), now)
        bucket.tokens = min(
            float(self._limit.burst),
            bucket.tokens + (now - bucket.updated) * self._limit.per_second,
        )
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._limit.per_second


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(tls.client_ca_file))
    return context


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


def _refuse_unread(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """Refuse without reading the body; the connection closes after the response (a client
    may have a 50 MB body still in flight)."""
    response = _plain(status, text, headers)
    response.force_close()
    return response


class HttpEndpoint:
    """One UFTP message route on an aiohttp server; `start()` returns once the port is bound."""

    name = "uftp-endpoint"

    def __init__(
        self,
        receive: Receive,
        *,
        host: str,
        port: int,
        path: str,
        max_body_bytes: int,
        tls: TlsSettings | None = None,
        rate_limit: RateLimit | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._receive = receive
        self._host = host
        self._port = port
        self._path = path
        self._max_body = max_body_bytes
        self._tls = tls
        self._limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self._authorize = authorize
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    @property
    def url(self) -> str:
        if self.bound_port is None:
            raise RuntimeError("endpoint is not started")
        scheme = "https" if self._tls else "http"
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        return f"{scheme}://{host}:{self.bound_port}{self._path}"

    async def start(self) -> None:
        # client_max_size is a second fence behind the Content-Length check below.
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(self._path, self._handle)
        # lingering_time=0: after refusing a body unread, close instead of reading (and
        # discarding) the rest of it for another ten seconds.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, lingering_time=0)
        await self._runner.setup()
        ssl_context = server_ssl_context(self._tls) if self._tls else None
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=ssl_context)
        await site.start()
        address = self._runner.addresses[0]
        self.bound_port = int(address[1])
        log.info("UFTP endpoint listening", extra={"url": self.url})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if self._limiter is not None:
            wait = self._limiter.allow(request.remote or "?")
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                return _refuse_unread(429, "rate limit exceeded", {"Retry-After": retry_after})
        if self._authorize is not None and not await self._authorize(
            request.headers.get("Authorization")
        ):
            return _refuse_unread(401, "missing or invalid bearer token")
        if request.content_type not in ACCEPTED_CONTENT_TYPES:
            return _refuse_unread(
                400, f"Content-Type must be text/xml, not {request.content_type!r}"
            )
        charset = request.charset
        if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
            return _refuse_unread(400, f"charset must be UTF-8, not {charset!r}")
        length = request.content_length
        if length is None:
            return _refuse_unread(411, "Content-Length is required")
        if length > self._max_body:
            return _refuse_unread(
                413, f"body of {length} bytes exceeds the limit of {self._max_body}"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _plain(413, f"body exceeds the limit of {self._max_body}")
        try:
            await self._receive(body)
        except TransportRejection as exc:
            log.warning("message refused", extra={"status": exc.status, "reason": exc.reason})
            headers = None
            if exc.retry_after_s is not None:
                headers = {"Retry-After": str(exc.retry_after_s)}
            return _plain(exc.status, exc.reason, headers)
        except Exception:
            log.exception("could not store an inbound message")
            return _plain(500, "internal error; the message was not stored, please retry")
        return web.Response(status=200)
