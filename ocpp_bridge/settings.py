"""The bridge's own settings and the charger registry it asks about chargers.

`agent` maps its pydantic configuration onto these (the library does not import `agent`).
The registry is a protocol because the agent keeps chargers in SQLite; `InMemoryRegistry`
serves tests, the benchmark and small setups.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Protocol

from ocpp_bridge.profiles import DEFAULT_LAYOUT, ElectricalData, ProfileLayout

# OCPP-J: the identity is the last path segment; 2.0.1 caps it at 48 characters and HTTP
# Basic forbids ':' in it (A00.FR.203). Same rule as the agent's configuration.
CHARGER_ID_PATTERN = re.compile(r"^[A-Za-z0-9*\-_=+|@.]{1,48}$")


class SecurityProfile(IntEnum):
    """OCPP 1.6 Security Whitepaper / 2.0.1 Part 2 A00: how chargers prove who they are."""

    NONE = 0  # ws, no authentication: only when explicitly allowed, never for 2.0.1 by default
    BASIC = 1  # ws + HTTP Basic (identity, password)
    TLS_BASIC = 2  # wss + HTTP Basic
    MUTUAL_TLS = 3  # wss + client certificate whose CN is the identity


class UnknownChargerPolicy(StrEnum):
    REJECT = "reject"
    REGISTER = "register"


class SettingsError(ValueError):
    """The settings cannot work together (the message names the setting)."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # verifies client certificates (security profile 3)

    def server_context(self, require_client_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # OCPP 1.6 Security Whitepaper / 2.0.1 A00.FR.306: TLS 1.2 or higher.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if require_client_certificate:
            if self.ca_file is None:
                raise SettingsError("security profile 3 needs tls.ca_file to verify chargers")
            context.load_verify_locations(cafile=self.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    host: str = "0.0.0.0"
    port: int = 9000  # 0: any free port (see CentralSystem.port)
    security_profile: SecurityProfile = SecurityProfile.BASIC
    allow_security_profile_0: bool = False
    tls: TlsSettings | None = None
    unknown_chargers: UnknownChargerPolicy = UnknownChargerPolicy.REJECT
    # Websocket pings; 0 turns them off (some chargers mishandle pings, lbbrhzn/ocpp#2030).
    ping_interval_s: float = 30.0
    ping_timeout_s: float = 30.0
    heartbeat_interval_s: int = 300
    # Opening handshake incl. the password check (websockets' default is 10 s).
    handshake_timeout_s: float = 120.0
    response_timeout_s: float = 30.0
    # Dynamic profiles carry validTo = now + this, refreshed when a third of it is left.
    dynamic_validity_s: float = 900.0
    # An open session nothing was heard of for this long (no meter value, status or
    # transaction message about it or its EVSE) is closed as "NoSignOfLife"; 0: never.
    session_silence_s: float = 7200.0
    # Frames above this close the connection (1009); OCPP messages are a few KB.
    max_frame_bytes: int = 256 * 1024
    # Per-charger inbound CALL budget: a sustained rate and a burst. Above it a CALL gets a
    # CALLERROR without being processed; far above it the connection is closed.
    max_calls_per_s: float = 20.0
    call_burst: int = 200
    # Events buffered for a slow consumer; beyond this, meter samples are dropped (counted).
    event_queue_size: int = 10_000
    # Safe limit for chargers registered on first contact (policy "register").
    default_electrical: ElectricalData = field(default_factory=ElectricalData)
    default_safe_power_w: float = 4140.0  # 6 A on three phases at 230 V
    # Stack levels and ids of our profiles; apart from another CSMS's in local-controller mode.
    profile_layout: ProfileLayout = DEFAULT_LAYOUT

    def __post_init__(self) -> None:
        if self.security_profile is SecurityProfile.NONE and not self.allow_security_profile_0:
            raise SettingsError(
                "security_profile 0 (no authentication) needs allow_security_profile_0"
            )
        if self.security_profile >= SecurityProfile.TLS_BASIC and self.tls is None:
            raise SettingsError(f"security_profile {int(self.security_profile)} needs tls")
        if self.security_profile is SecurityProfile.MUTUAL_TLS and (
            self.tls is None or self.tls.ca_file is None
        ):
            raise SettingsError("security_profile 3 needs tls.ca_file")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} out of range")
        if self.dynamic_validity_s < 1:
            raise SettingsError(f"dynamic_validity_s must be >= 1, got {self.dynamic_validity_s}")
        if self.heartbeat_interval_s < 1:
            raise SettingsError("heartbeat_interval_s must be >= 1")
        if self.max_calls_per_s <= 0 or self.call_burst < 1:
            raise SettingsError("max_calls_per_s and call_burst must be positive")
        if self.event_queue_size < 1:
            raise SettingsError("event_queue_size must be positive")
        if self.default_safe_power_w < 0:
            raise SettingsError("default_safe_power_w must be >= 0")

    def with_port(self, port: int) -> BridgeSettings:
        return replace(self, port=port)


@dataclass(frozen=True, slots=True)
class ChargerRecord:
    """What the site knows about a charger that OCPP does not tell."""

    charger_id: str
    password_hash: str | None = None
    electrical: ElectricalData = field(default_factory=ElectricalData)
    safe_power_w: float = 4140.0

    def __post_init__(self) -> None:
        if not CHARGER_ID_PATTERN.match(self.charger_id):
            raise ValueError(f"invalid charger id {self.charger_id!r}")
        if self.safe_power_w < 0:
            raise ValueError(f"safe power of {self.charger_id} is negative: {self.safe_power_w}")


class ChargerRegistry(Protocol):
    """Implemented by the agent over its SQLite store."""

    async def lookup(self, charger_id: str) -> ChargerRecord | None:
        """The charger's record, or None when it is unknown."""
        ...

    async def register(self, charger_id: str, password_hash: str | None) -> ChargerRecord | None:
        """Add an unknown charger (policy "register"); None when the registry refuses it."""
        ...


class InMemoryRegistry:
    """A registry in a dict: for tests, the benchmark and configurations without a database."""

    def __init__(
        self,
        records: Iterable[ChargerRecord] = (),
        *,
        default_electrical: ElectricalData | None = None,
        default_safe_power_w: float = 4140.0,
    ) -> None:
        self._records = {r.charger_id: r for r in records}
        self._default_electrical = default_electrical or ElectricalData()
        self._default_safe_power_w = default_safe_power_w

    def add(self, record: ChargerRecord) -> None:
        self._records[record.charger_id] = record

    def __contains__(self, charger_id: object) -> bool:
        return charger_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    async def lookup(self, charger_id: str) -> ChargerRecord | None:
        return self._records.get(charger_id)

    async def register(self, charger_id: str, password_hash: str | None) -> ChargerRecord | None:
        record = ChargerRecord(
            charger_id,
            password_hash=password_hash,
            electrical=self._default_electrical,
            safe_power_w=self._default_safe_power_w,
        )
        self._records[charger_id] = record
        return record
