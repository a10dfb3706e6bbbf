"""uftp's own settings objects (frozen dataclasses). `agent` maps its TOML config onto these;
uftp never imports `agent` (docs/architecture.md, dependency rule)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nacl.signing import SigningKey, VerifyKey

from uftp.calendar import CalendarError, zone
from uftp.keys import parse_public_key
from uftp.models import INTERNET_DOMAIN_PATTERN, SPEC_VERSION, TIME_ZONE_PATTERN, Role

DEFAULT_PATH = "/shapeshifter/api/v3/message"
# The spec's retry floor: "at least one hour for routine messages" (message-transport-mechanism).
MIN_RETRY_WINDOW_S = 3600.0


class SettingsError(ValueError):
    """A setting is unusable; the message names it and the offending value."""


def _check_domain(domain: str, what: str) -> None:
    if not re.fullmatch(INTERNET_DOMAIN_PATTERN.strip("^$"), domain):
        raise SettingsError(
            f"{what} {domain!r} is not a UFTP InternetDomain (lowercase, dotted, e.g. "
            "agr.example.com)"
        )


@dataclass(frozen=True)
class OAuthSettings:
    """OAuth2 client-credentials grant for outbound posts to one peer (GOPACS requires it)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    # How the client authenticates at the token endpoint. "body" (client_id/client_secret as
    # form fields) is what shapeshifter-uftp sends; "basic" is RFC 6749's HTTP Basic.
    client_auth: Literal["body", "basic"] = "body"
    # Refresh this long before the token expires, so no post goes out with a dying token.
    refresh_margin_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.token_url.startswith(("https://", "http://")):
            raise SettingsError(f"OAuth token_url {self.token_url!r} is not an http(s) URL")
        if not self.client_id:
            raise SettingsError("OAuth client_id is empty")


@dataclass(frozen=True)
class PeerSettings:
    """A participant we exchange messages with, configured out of band (spec "manual exchange")."""

    domain: str
    role: Role
    # One key, or two during a rotation: base64 of the 32-byte key or "cs1." + base64.
    public_keys: tuple[str, ...]
    endpoint: str
    oauth: OAuthSettings | None = None

    def __post_init__(self) -> None:
        _check_domain(self.domain, "peer domain")
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "public_keys", tuple(self.public_keys))
        if not 1 <= len(self.public_keys) <= 2:
            raise SettingsError(
                f"peer {self.domain} needs one or two public keys, got {len(self.public_keys)}"
            )
        for key in self.public_keys:
            parse_public_key(key)
        if not self.endpoint.startswith(("https://", "http://")):
            raise SettingsError(f"peer {self.domain} endpoint {self.endpoint!r} is not a URL")

    @property
    def verify_keys(self) -> tuple[VerifyKey, ...]:
        return tuple(parse_public_key(k) for k in self.public_keys)


@dataclass(frozen=True)
class MarketSettings:
    """The market's ISP calendar: every message must use these values."""

    time_zone: str = "Europe/Amsterdam"
    isp_minutes: int = 15

    def __post_init__(self) -> None:
        if not re.fullmatch(TIME_ZONE_PATTERN.strip("^$"), self.time_zone):
            raise SettingsError(f"market time zone {self.time_zone!r} is not a UFTP TimeZoneName")
        try:
            zone(self.time_zone)
        except CalendarError as exc:
            raise SettingsError(str(exc)) from None
        if self.isp_minutes <= 0 or (24 * 60) % self.isp_minutes:
            raise SettingsError(f"ISP duration {self.isp_minutes} min does not divide a day")


@dataclass(frozen=True)
class TlsSettings:
    """Serve HTTPS from these files. With `client_ca_file`, require client certificates."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class InboundRetry:
    """Handling a stored inbound message that failed (a locked or full database, an I/O
    error, a bug): it stays pending and is tried again after `first_delay_s`, doubling up to
    `max_delay_s`, for as long as it takes. After `alarm_after` failed attempts it counts as
    stuck, an alarm for the operator. It is never rejected for the failure: a rejection
    tells the sender its message was wrong, and the sender's retry would be refused as
    "Already Submitted"."""

    first_delay_s: float = 1.0
    max_delay_s: float = 300.0
    alarm_after: int = 5

    def __post_init__(self) -> None:
        if self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s:
            raise SettingsError(
                f"inbound retry delays must satisfy 0 < first ({self.first_delay_s}) <= max "
                f"({self.max_delay_s})"
            )
        if self.alarm_after < 1:
            raise SettingsError("inbound retry alarm_after must be at least 1")

    def delay_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt (1-based)."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(max(attempts - 1, 0), 32))


@dataclass(frozen=True)
class RetryPolicy:
    """Outbox delivery: exponential back-off from `first_delay_s` doubling up to `max_delay_s`,
    for `give_up_after_s` after the message was stored (at least an hour, per the spec)."""

    first_delay_s: float = 2.0
    max_delay_s: float = 300.0
    give_up_after_s: float = 6 * 3600.0
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.first_delay_s <= 0 or self.max_delay_s < self.first_delay_s:
            raise SettingsError(
                f"retry delays must satisfy 0 < first ({self.first_delay_s}) <= max "
                f"({self.max_delay_s})"
            )
        if self.give_up_after_s < MIN_RETRY_WINDOW_S:
            raise SettingsError(
                f"give_up_after_s={self.give_up_after_s} is below the spec's minimum of one hour"
            )
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise SettingsError("timeouts must be positive")


@dataclass(frozen=True)
class RateLimit:
    """Token bucket per remote address: above it the endpoint answers 429 (a temporary error)."""

    per_second: float = 50.0
    burst: int = 200

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise SettingsError(f"rate limit {self.per_second}/s burst {self.burst} is unusable")


@dataclass(frozen=True)
class ParticipantSettings:
    """Everything one UFTP participant (our AGR, or a simulated DSO) needs."""

    domain: str
    role: Role
    signing_key: SigningKey = field(repr=False)
    peers: tuple[PeerSettings, ...] = ()
    market: MarketSettings = field(default_factory=MarketSettings)
    host: str = "127.0.0.1"
    # 0 binds a free port; the endpoint reports the real one.
    port: int = 0
    path: str = DEFAULT_PATH
    tls: TlsSettings | None = None
    # CA bundle to verify peers' HTTPS certificates; None uses the system store. Verification
    # is never switched off.
    ca_file: Path | None = None
    max_body_bytes: int = 1_048_576
    # Congestion points we are active at; None skips the "Invalid CongestionPoint" check.
    congestion_points: frozenset[str] | None = None
    supported_versions: frozenset[str] = frozenset({SPEC_VERSION})
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    inbound_retry: InboundRetry = field(default_factory=InboundRetry)
    rate_limit: RateLimit | None = field(default_factory=RateLimit)
    # Periods further ahead than this are "Period out of bounds"; None: no upper bound.
    period_horizon_days: int | None = None

    def __post_init__(self) -> None:
        _check_domain(self.domain, "our domain")
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "peers", tuple(self.peers))
        if self.congestion_points is not None:
            object.__setattr__(self, "congestion_points", frozenset(self.congestion_points))
        seen: set[tuple[str, Role]] = set()
        for peer in self.peers:
            if (peer.domain, peer.role) in seen:
                raise SettingsError(f"peer {peer.domain} ({peer.role}) is configured twice")
            if peer.domain == self.domain and peer.role == self.role:
                raise SettingsError(f"peer {peer.domain} ({peer.role}) is ourselves")
            seen.add((peer.domain, peer.role))
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is outside 0..65535")
        if not self.path.startswith("/"):
            raise SettingsError(f"path {self.path!r} must start with '/'")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"max_body_bytes={self.max_body_bytes} is too small for UFTP")
