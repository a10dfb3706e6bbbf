"""OAuth2 client-credentials tokens for outbound posts (RFC 6749 §4.4), cached per peer.

GOPACS requires a bearer token on every message posted to it; the spec's optional OAuth branch
(`add-oauth-as-optional-security-measure`) describes the same grant. A token is reused until
`refresh_margin_s` before it expires, then fetched again; one fetch at a time per peer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from urllib.parse import quote_plus

import aiohttp

from uftp.settings import OAuthSettings

# Without expires_in the server gives no lifetime; do not trust a token for long.
DEFAULT_LIFETIME_S = 60.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024


def _basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-encode both parts, then HTTP Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class OAuthError(RuntimeError):
    """No token could be obtained (a temporary delivery failure: the message is retried)."""


class TokenSource:
    def __init__(
        self,
        settings: OAuthSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self._session = session
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._token: str | None = None
        self._token_type = "Bearer"
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._refresh_at

    async def authorization(self) -> str:
        """The Authorization header value, fetching a token first if needed."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    await self._fetch()
        return f"{self._token_type} {self._token}"

    def invalidate(self) -> None:
        """Forget the token (the peer answered 401 to it)."""
        self._token = None

    async def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        if self.settings.scope:
            form["scope"] = self.settings.scope
        headers: dict[str, str] = {}
        if self.settings.client_auth == "basic":
            headers["Authorization"] = _basic(self.settings.client_id, self.settings.client_secret)
        else:
            form["client_id"] = self.settings.client_id
            form["client_secret"] = self.settings.client_secret
        url = self.settings.token_url
        started = self._clock()
        try:
            async with self._session.post(
                url, data=form, headers=headers, timeout=self._timeout
            ) as response:
                text = await response.content.read(MAX_TOKEN_RESPONSE_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OAuthError(f"token endpoint {url} unreachable: {exc!r}") from None
        self.fetches += 1
        if status != 200:
            raise OAuthError(f"token endpoint {url} answered HTTP {status}: {text[:200]!r}")
        try:
            data = json.loads(text)
            token = data["access_token"]
            token_type = data.get("token_type", "Bearer")
            lifetime = float(data.get("expires_in", DEFAULT_LIFETIME_S))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OAuthError(f"token endpoint {url} sent no usable token: {exc!r}") from None
        if not isinstance(token, str) or not token:
            raise OAuthError(f"token endpoint {url} sent an empty access_token")
        # RFC 6750 spells the scheme "Bearer"; some servers send it in lower case.
        self._token_type = "Bearer" if str(token_type).lower() == "bearer" else str(token_type)
        self._token = token
        # Refresh `refresh_margin_s` early, but never use less than half a short lifetime.
        margin = min(self.settings.refresh_margin_s, lifetime / 2)
        self._refresh_at = started + lifetime - margin
