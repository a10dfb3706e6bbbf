"""The agent's one configuration file: TOML, validated by pydantic before anything starts.

Every model forbids unknown keys, so a typo is an error with its key path instead of a
silently ignored setting. Secrets are `SecretStr` (never printed, never logged) and, like any
other key, can be overridden from the environment: ``FLEXBRIDGE_`` followed by the key path in
upper case with ``__`` between the parts, list items by index, for example
``FLEXBRIDGE_MQTT__PASSWORD`` or ``FLEXBRIDGE_UFTP__PEERS__0__OAUTH__CLIENT_SECRET``. That keeps
secrets out of a file that operators copy around and fits systemd's ``EnvironmentFile=`` and
container secrets.

The libraries (`uftp`, `ocpp_bridge`, `forecaster`) do not import this module; `agent` maps these
models onto their own settings objects, which keeps the dependency rule of docs/architecture.md.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.runtime.upstream import UpstreamConfig
from ocpp_bridge.capabilities import RateUnit
from ocpp_bridge.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    PasswordHashError,
    parse_password_hash,
)
from ocpp_bridge.profiles import ElectricalData, limit_in_unit
from uftp.keys import KeyFormatError, load_signing_key, parse_public_key

ENV_PREFIX = "FLEXBRIDGE_"

# UFTP 3.1.0 XSD patterns (UFTP-common.xsd). The models hold the same rule as the schema so a
# wrong domain or address is caught at start-up rather than by the DSO's first rejection.
INTERNET_DOMAIN = r"^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$"
ENTITY_ADDRESS = r"^(ea1\.[0-9]{4}-[0-9]{2}\..{1,244}:.{1,244}|ean\.[0-9]{12,34})$"
# OCPP-J: the identity is the last path segment; 2.0.1 limits it to 48 characters and Basic
# auth forbids ':' in it (A00.FR.203).
CHARGER_ID = r"^[A-Za-z0-9*\-_=+|@.]{1,48}$"
SITE_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # used as an MQTT topic level
LOCAL_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


def _check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc
    return name


TimeZoneName = Annotated[str, AfterValidator(_check_time_zone)]
InternetDomain = Annotated[str, Field(pattern=INTERNET_DOMAIN)]
EntityAddress = Annotated[str, Field(pattern=ENTITY_ADDRESS)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(Model):
    """The physical site behind one grid connection."""

    id: Annotated[str, Field(pattern=SITE_ID)] = "site"
    name: str = "flexbridge site"
    timezone: TimeZoneName = "Europe/Amsterdam"
    connection_capacity_w: Annotated[int, Field(gt=0)]
    # Site-wide limit the chargers' safe profiles must sum to (defaults to the full capacity).
    # Operators keep headroom here for the building's own load.
    safe_limit_w: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _safe_within_capacity(self) -> Self:
        if self.safe_limit_w is not None and self.safe_limit_w > self.connection_capacity_w:
            raise ValueError(
                f"safe_limit_w ({self.safe_limit_w}) exceeds connection_capacity_w "
                f"({self.connection_capacity_w})"
            )
        return self

    @property
    def effective_safe_limit_w(self) -> int:
        return self.safe_limit_w if self.safe_limit_w is not None else self.connection_capacity_w


class TlsConfig(Model):
    cert_file: Path
    key_file: Path
    # CA bundle used to verify client certificates (OCPP security profile 3) or peers.
    ca_file: Path | None = None


class ChargerConfig(Model):
    """A charger known in advance. Electrical facts live here because OCPP does not report them."""

    id: Annotated[str, Field(pattern=CHARGER_ID)]
    congestion_point: EntityAddress | None = None
    phases: Literal[1, 3] = 3
    nominal_voltage_v: Annotated[float, Field(gt=0, le=480)] = 230.0
    max_current_a: Annotated[float, Field(gt=0, le=500)] = 16.0
    # IEC 61851: most EVs stop below 6 A, so a limit is 0 or at least this.
    min_current_a: Annotated[float, Field(ge=0, le=32)] = 6.0
    # Station-wide safe limit (the static profile); defaults to an equal share of the site's
    # safe limit.
    safe_power_w: Annotated[int, Field(ge=0)] | None = None
    # Security profiles 1 and 2: hash of the charger's Basic-auth password (see
    # `flexbridge hash-password`), or the plain password supplied through the environment.
    password_hash: str | None = None
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.min_current_a > self.max_current_a:
            raise ValueError(
                f"min_current_a ({self.min_current_a}) exceeds max_current_a ({self.max_current_a})"
            )
        return self

    @property
    def max_power_w(self) -> int:
        return int(self.max_current_a * self.nominal_voltage_v * self.phases)


class OcppConfig(Model):
    host: str = "0.0.0.0"
    port: Port = 9000
    # 1: HTTP Basic over ws; 2: Basic over TLS; 3: mutual TLS. 0 (no authentication) only with
    # allow_security_profile_0, and never for OCPP 2.0.1 chargers that follow the spec.
    security_profile: Annotated[int, Field(ge=0, le=3)] = 1
    allow_security_profile_0: bool = False
    tls: TlsConfig | None = None
    unknown_chargers: Literal["reject", "register"] = "reject"
    ping_interval_s: Annotated[float, Field(ge=0)] = 30.0
    heartbeat_interval_s: Annotated[int, Field(gt=0)] = 300
    response_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    # Dynamic (flex) profiles expire after this; they are refreshed well before.
    dynamic_profile_validity_s: Annotated[int, Field(ge=60)] = 900
    # A session with no sign of life for this long is closed ("NoSignOfLife") and no longer
    # planned for; 0 keeps such sessions open for ever.
    session_silence_s: Annotated[float, Field(ge=0)] = 7200.0
    chargers: list[ChargerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _profile_needs(self) -> Self:
        if self.security_profile == 0 and not self.allow_security_profile_0:
            raise ValueError(
                "security_profile 0 (no authentication) needs allow_security_profile_0 = true"
            )
        if self.security_profile >= 2 and self.tls is None:
            raise ValueError(f"security_profile {self.security_profile} needs an [ocpp.tls] table")
        if self.security_profile == 3 and self.tls is not None and self.tls.ca_file is None:
            raise ValueError("security_profile 3 needs ocpp.tls.ca_file to verify charger certs")
        ids = [c.id for c in self.chargers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate charger ids: {', '.join(dupes)}")
        return self


class OAuthConfig(Model):
    """OAuth2 client-credentials grant for outbound UFTP posts (GOPACS requires it)."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None


class UftpPeerConfig(Model):
    domain: InternetDomain
    role: Literal["DSO", "CRO"] = "DSO"
    # One key, or two during a key rotation: base64 of the 32-byte Ed25519 public key or the
    # DNS form "cs1.<base64>".
    public_keys: Annotated[list[str], Field(min_length=1, max_length=2)]
    endpoint: Annotated[str, Field(pattern=r"^https?://")]
    oauth: OAuthConfig | None = None

    @field_validator("public_keys")
    @classmethod
    def _keys_decode(cls, keys: list[str]) -> list[str]:
        for key in keys:
            try:
                parse_public_key(key)
            except KeyFormatError as exc:
                raise ValueError(str(exc)) from exc
        return keys


class UftpConfig(Model):
    domain: InternetDomain
    signing_key_file: Path
    host: str = "0.0.0.0"
    port: Port = 8443
    # Serve HTTPS directly; without it, run behind a TLS-terminating reverse proxy.
    tls: TlsConfig | None = None
    # The market's ISP calendar (UFTP edge only; inside everything is UTC).
    market_timezone: TimeZoneName = "Europe/Amsterdam"
    isp_duration_min: Literal[5, 15, 30, 60] = 15
    # Requests bigger than this are refused before parsing.
    max_body_bytes: Annotated[int, Field(gt=1024)] = 1_048_576
    peers: list[UftpPeerConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_peers(self) -> Self:
        seen: set[tuple[str, str]] = set()
        for peer in self.peers:
            key = (peer.domain, peer.role)
            if key in seen:
                raise ValueError(f"peer {peer.domain} ({peer.role}) is configured twice")
            if peer.domain == self.domain:
                raise ValueError(f"peer {peer.domain} has our own domain")
            seen.add(key)
        return self


class CongestionPointConfig(Model):
    entity_address: EntityAddress
    dso_domain: InternetDomain
    # Whether the DSO accepts several mutually exclusive options in one FlexOffer (published by
    # the CRO as MutexOffersSupported).
    mutex_offers_supported: bool = False


class StorageConfig(Model):
    state_directory: Path = Path("/var/lib/flexbridge")
    database: str = "flexbridge.sqlite"
    # Meter energy, session changes and register baselines are kept in memory and written in
    # one transaction this often: each commit costs the SD card about 30 kB, whatever it holds
    # (bench/wear.py). A crash loses no energy (the register baselines spread it over the
    # gap), only where within these seconds it went.
    flush_interval_s: Annotated[int, Field(ge=1, le=900)] = 30

    @property
    def database_path(self) -> Path:
        return self.state_directory / self.database


class MqttConfig(Model):
    enabled: bool = False
    host: str = "localhost"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    client_id: str | None = None
    topic_prefix: str = "flexbridge"
    discovery_prefix: str = "homeassistant"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    # Throttle: a topic gets at most one message per interval; everything is published again
    # every refresh interval even if unchanged (docs/operations.md).
    min_interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    refresh_interval_s: Annotated[int, Field(ge=10, le=86400)] = 300


class ClockConfig(Model):
    """When the agent stops trusting the system clock (docs/operations.md, "Clock")."""

    # Check the clock at all. Off only for a simulated clock (the demo) or a test.
    guard: bool = True
    # A step of the wall clock against the time that really passed larger than this holds
    # trading and dynamic limits for `settle_s`. NTP's own steps are far smaller once synced.
    max_step_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    settle_s: Annotated[int, Field(ge=0, le=3_600)] = 60


class LoggingConfig(Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: human-readable on a terminal, logfmt (one key=value line per event) otherwise.
    format: Literal["auto", "human", "logfmt", "json"] = "auto"


class TradingConfig(Model):
    """The AGR's market behaviour: when to send prognoses, how to price and bound offers."""

    # Day-ahead D-prognoses go out at this local market time on D-1. UFTP recommends at the
    # latest 2 h before the national day-ahead gate closure (12:00 in NL), hence 09:00.
    prognosis_time: Annotated[str, Field(pattern=LOCAL_TIME)] = "09:00"
    # Intraday: a new revision when the forecast for any future ISP moves more than this,
    # at most one per interval (a DSO wants a baseline, not a stream of them).
    intraday_threshold_w: Annotated[int, Field(ge=0)] = 5_000
    intraday_min_interval_min: Annotated[int, Field(ge=0, le=24 * 60)] = 60
    # Offers stay valid this long, and never past the start of their first ISP minus the lead.
    offer_validity_min: Annotated[int, Field(ge=1, le=24 * 60)] = 60
    offer_lead_time_min: Annotated[int, Field(ge=0, le=240)] = 5
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    # Price of an option = fixed + per kWh of load moved out of the requested ISPs.
    price_fixed: Annotated[float, Field(ge=0)] = 2.0
    price_per_kwh: Annotated[float, Field(ge=0)] = 0.25
    # Offers smaller than this are not worth the DSO's trouble (and ours).
    min_offer_power_w: Annotated[int, Field(ge=0)] = 1_000
    # Where the congestion point supports mutually exclusive options, also offer these fractions
    # of the full offer (e.g. 0.5 = half the reduction at a lower price).
    partial_option_fractions: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.5]
    )
    # ContractIDs of agreements under which the DSO may send direct FlexOrders (3.1.0
    # Unsolicited, no offer). Empty: direct orders are rejected, nobody can order blindly.
    direct_order_contracts: list[str] = Field(default_factory=list)
    # Settlement: an ISP whose ActualPower differs from our measurement by more than this is
    # disputed.
    settlement_tolerance_w: Annotated[int, Field(ge=0)] = 500
    settlement_tolerance_pct: Annotated[float, Field(ge=0, le=100)] = 5.0


class ForecastConfig(Model):
    history_days: Annotated[int, Field(ge=7, le=365)] = 56
    # Public holidays of the site, forecast like Sundays: those of a country (ISO 3166-1
    # alpha-2) and subdivision (ISO 3166-2 without the country, e.g. "CA") from the
    # `holidays` package, plus `holidays`, extra local dates (site closures).
    holidays_country: str | None = None
    holidays_subdivision: str | None = None
    holidays: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _calendar_exists(self) -> ForecastConfig:
        if self.holidays_subdivision and not self.holidays_country:
            raise ValueError("holidays_subdivision needs holidays_country")
        if self.holidays_country:
            from forecaster.calendar import CalendarError, public_holidays

            try:
                public_holidays(self.holidays_country, self.holidays_subdivision, [2025])
            except CalendarError as exc:
                raise ValueError(f"holiday calendar: {exc}") from None
        return self

    @field_validator("holidays")
    @classmethod
    def _dates(cls, days: list[str]) -> list[str]:
        from datetime import date

        for day in days:
            try:
                date.fromisoformat(day)
            except ValueError as exc:
                raise ValueError(f"holiday {day!r} is not a YYYY-MM-DD date") from exc
        return days


class MeteringConfig(Model):
    """UFTP Metering messages, only where the DSO's programme asks for them."""

    enabled: bool = False
    # The connection's EAN as the UFTP metering XSD writes it: E + 16 digits (18-digit EANs
    # pending spec PR #196).
    ean: Annotated[str, Field(pattern=r"^[Ee][0-9]{16}$")] | None = None

    @model_validator(mode="after")
    def _ean_when_enabled(self) -> Self:
        if self.enabled and self.ean is None:
            raise ValueError("metering.enabled needs metering.ean")
        return self


class HttpConfig(Model):
    """The status page, JSON API and /metrics."""

    enabled: bool = True
    # Loopback by default: the page shows operational detail; expose it through a proxy.
    host: str = "127.0.0.1"
    port: Port = 8080
    # Required for anything that changes state (POST); absent = read-only.
    token: SecretStr | None = None


class Config(Model):
    site: SiteConfig
    ocpp: OcppConfig = Field(default_factory=OcppConfig)
    uftp: UftpConfig
    congestion_points: list[CongestionPointConfig] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    trading: TradingConfig = Field(default_factory=TradingConfig)
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    metering: MeteringConfig = Field(default_factory=MeteringConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    upstream: UpstreamConfig | None = None  # local-controller mode (agent/runtime/upstream.py)

    def safe_power_w(self, charger: ChargerConfig) -> int:
        """The charger's static safe limit: configured, or an equal share of the site's."""
        if charger.safe_power_w is not None:
            return charger.safe_power_w
        share = self.site.effective_safe_limit_w // max(1, len(self.ocpp.chargers))
        return min(share, charger.max_power_w)

    def congestion_point_of(self, charger: ChargerConfig) -> str | None:
        if charger.congestion_point is not None:
            return charger.congestion_point
        if len(self.congestion_points) == 1:
            return self.congestion_points[0].entity_address
        return None

    def secrets(self) -> list[str]:
        """Every secret value in the config, for the log redactor."""
        found: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, SecretStr):
                value = node.get_secret_value()
                if value:
                    found.append(value)
            elif isinstance(node, BaseModel):
                for name in type(node).model_fields:
                    walk(getattr(node, name))
            elif isinstance(node, list | tuple):
                for item in node:
                    walk(item)

        walk(self)
        return found


# --- checks across keys and sections ----------------------------------------------------------
#
# They read the raw data field by field, each field validated as its model declares it, so a
# mistake in one key or section does not hide the problems elsewhere: `check-config` names
# every field, cross-field and file problem of a file in one pass. A check whose inputs are not
# all valid on their own is skipped (the field problem is already reported).

_INVALID: Any = object()


@functools.cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    if not info.metadata:
        return TypeAdapter(info.annotation)  # type: ignore[arg-type]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])  # type: ignore[arg-type]


def _field(model: type[BaseModel], section: object, name: str) -> Any:
    """`section[name]` validated as `model` declares it (its default when absent), or
    `_INVALID` when it is not valid on its own or the section is not a table."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        return _INVALID
    info = model.model_fields[name]
    if name not in section:
        return _INVALID if info.is_required() else info.get_default(call_default_factory=True)
    try:
        return _adapter(model, name).validate_python(section[name])
    except ValidationError:
        return _INVALID


def _valid(*values: Any) -> bool:
    return all(v is not _INVALID for v in values)


def _table(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key) if isinstance(data, Mapping) else None


def _array(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class _Charger:
    """A charger's electrical keys, all valid: what its safe profile is made of."""

    index: int
    electrical: ElectricalData
    safe_power_w: int | None


def _chargers(chargers: list[Any]) -> list[_Charger | None]:
    out: list[_Charger | None] = []
    for i, raw in enumerate(chargers):
        phases, volts, top, bottom, safe = (
            _field(ChargerConfig, raw, name)
            for name in (
                "phases",
                "nominal_voltage_v",
                "max_current_a",
                "min_current_a",
                "safe_power_w",
            )
        )
        if not _valid(phases, volts, top, bottom, safe) or bottom > top:
            out.append(None)
            continue
        out.append(_Charger(i, ElectricalData(phases, volts, bottom, top), safe))
    return out


def _safe_problems(data: Mapping[str, Any]) -> list[ConfigProblem]:
    """Safe limits that break the promise of the safe layer: more than the site may draw, or a
    0 A profile that stops the charger whenever the agent is gone."""
    site = _table(data, "site")
    capacity = _field(SiteConfig, site, "connection_capacity_w")
    safe_limit = _field(SiteConfig, site, "safe_limit_w")
    site_safe = capacity if safe_limit is None else safe_limit
    chargers = _chargers(_array(_table(_table(data, "ocpp") or {}, "chargers")))
    problems: list[ConfigProblem] = []
    known: list[tuple[_Charger, int]] = []
    for charger in chargers:
        if charger is None:
            continue
        if charger.safe_power_w is not None:
            known.append((charger, charger.safe_power_w))
        elif _valid(site_safe):
            share = site_safe // max(1, len(chargers))
            known.append((charger, min(share, int(charger.electrical.max_power_w))))
    for charger, safe_w in known:
        if limit_in_unit(safe_w, RateUnit.AMPS, charger.electrical) > 0:
            continue
        el = charger.electrical
        floor_w = math.ceil(math.ceil(el.min_current_a - 1e-9) * el.watts_per_amp)
        where = (
            "safe_power_w"
            if charger.safe_power_w is not None
            else "equal share of site.safe_limit_w"
        )
        problems.append(
            ConfigProblem(
                f"ocpp.chargers[{charger.index}]"
                + (".safe_power_w" if charger.safe_power_w is not None else ""),
                f"a safe limit of {safe_w} W ({where}) is below the charger's minimum current "
                f"of {el.min_current_a:g} A x {el.watts_per_amp:g} W/A: its safe profile would "
                "be 0 A, which stops charging whenever the agent is gone; give it at least "
                f"{floor_w} W",
            )
        )
    if _valid(site_safe) and chargers and len(known) == len(chargers):
        total = sum(w for _, w in known)
        if total > site_safe:
            problems.insert(
                0,
                ConfigProblem(
                    "ocpp.chargers",
                    f"the chargers' safe limits add up to {total} W, more than the site's "
                    f"safe limit of {site_safe} W",
                ),
            )
    return problems


def _password_problems(chargers: list[Any]) -> list[ConfigProblem]:
    """What `run` would refuse when it hashes or reads a charger's password."""
    problems: list[ConfigProblem] = []
    for i, raw in enumerate(chargers):
        if not isinstance(raw, Mapping):
            continue
        password = raw.get("password")
        if isinstance(password, SecretStr):
            password = password.get_secret_value()
        if isinstance(password, str) and not (
            MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
        ):
            problems.append(
                ConfigProblem(
                    f"ocpp.chargers[{i}].password",
                    f"has {len(password)} characters; a charger password has "
                    f"{MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} (as for flexbridge "
                    "hash-password)",
                )
            )
        stored = raw.get("password_hash")
        if isinstance(stored, str):
            try:
                parse_password_hash(stored)
            except PasswordHashError as exc:
                problems.append(
                    ConfigProblem(
                        f"ocpp.chargers[{i}].password_hash",
                        f"{exc}; make one with flexbridge hash-password",
                    )
                )
    return problems


def cross_problems(data: Mapping[str, Any]) -> list[ConfigProblem]:
    """Checks that span keys and sections, each reported at the key that is wrong."""
    problems: list[ConfigProblem] = []
    uftp = _table(data, "uftp")
    peers = _array(_table(uftp or {}, "peers"))
    # A peer whose role is misspelt may still be the DSO meant: only a CRO is ruled out.
    dso_domains = {
        p.get("domain") for p in peers if isinstance(p, Mapping) and p.get("role") != "CRO"
    }
    points = _array(_table(data, "congestion_points"))
    addresses = [_field(CongestionPointConfig, cp, "entity_address") for cp in points]
    for i, cp in enumerate(points):
        domain = _field(CongestionPointConfig, cp, "dso_domain")
        if _valid(domain) and domain not in dso_domains:
            problems.append(
                ConfigProblem(
                    f"congestion_points[{i}].dso_domain",
                    f"{domain!r} is not a DSO among uftp.peers",
                )
            )
        if _valid(addresses[i]) and addresses.index(addresses[i]) != i:
            problems.append(
                ConfigProblem(
                    f"congestion_points[{i}].entity_address",
                    f"{addresses[i]!r} is listed twice",
                )
            )
    chargers = _array(_table(_table(data, "ocpp") or {}, "chargers"))
    for i, charger in enumerate(chargers):
        point = _field(ChargerConfig, charger, "congestion_point")
        if point is None and len(points) > 1:
            problems.append(
                ConfigProblem(
                    f"ocpp.chargers[{i}].congestion_point",
                    f"required: the site has {len(points)} congestion points",
                )
            )
        elif _valid(point, *addresses) and point is not None and point not in addresses:
            problems.append(
                ConfigProblem(
                    f"ocpp.chargers[{i}].congestion_point",
                    f"{point!r} is not among congestion_points",
                )
            )
    zone_name = _field(UftpConfig, uftp, "market_timezone")
    isp_min = _field(UftpConfig, uftp, "isp_duration_min")
    if uftp is not None and _valid(zone_name, isp_min):
        zone = ZoneInfo(zone_name)
        for month in (1, 7):
            offset = datetime(2025, month, 1, 12, tzinfo=zone).utcoffset() or timedelta(0)
            if offset.total_seconds() % (isp_min * 60):
                problems.append(
                    ConfigProblem(
                        "uftp.isp_duration_min",
                        f"{zone_name} is {offset} from UTC, not a whole number of "
                        f"{isp_min}-minute ISPs; flexbridge needs ISPs aligned to UTC",
                    )
                )
                break
    problems.extend(_safe_problems(data))
    problems.extend(_password_problems(chargers))
    return problems


def file_problems(data: Mapping[str, Any]) -> list[ConfigProblem]:
    """Problems with files the configuration points to: what `run` would trip over."""
    problems: list[ConfigProblem] = []
    uftp = _table(data, "uftp")
    key_file = _field(UftpConfig, uftp, "signing_key_file")
    if uftp is not None and _valid(key_file):
        try:
            load_signing_key(key_file)
        except KeyFormatError as exc:
            problems.append(
                ConfigProblem(
                    "uftp.signing_key_file", f"{exc} (flexbridge keys --out FILE makes one)"
                )
            )
    for prefix, section in (("ocpp", _table(data, "ocpp")), ("uftp", uftp)):
        tls = _table(section or {}, "tls")
        if tls is None:
            continue
        for name in ("cert_file", "key_file", "ca_file"):
            path = _field(TlsConfig, tls, name)
            if _valid(path) and path is not None and not Path(path).is_file():
                problems.append(
                    ConfigProblem(f"{prefix}.tls.{name}", f"{path} is not a readable file")
                )
    ca_file = _field(MqttConfig, _table(data, "mqtt"), "ca_file")
    if _valid(ca_file) and ca_file is not None and not Path(ca_file).is_file():
        problems.append(ConfigProblem("mqtt.ca_file", f"{ca_file} is not a readable file"))
    return problems


# --- loading and error reporting -------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration, addressed by its key path (``uftp.peers[0].domain``)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class ConfigFileMissing(ConfigError):
    """The configuration file itself cannot be read (no file, no permission)."""


def _format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PATTERN_HINTS = {
    INTERNET_DOMAIN: "a lowercase DNS name with at least one dot, e.g. agr.example.com",
    ENTITY_ADDRESS: "an EAN (ean.<12-34 digits>) or an EA1 address (ea1.YYYY-MM.<domain>:<id>)",
    CHARGER_ID: "1-48 characters of A-Z a-z 0-9 * - _ = + | @ .",
    SITE_ID: "lowercase letters, digits, '-' and '_', starting with a letter or digit",
    LOCAL_TIME: "a local time HH:MM (00:00 to 23:59)",
}


# Keys whose values are secrets: a problem with them never repeats the value.
_SECRET_KEYS = frozenset({"password", "client_secret", "token"})


def _reason(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    pattern = ctx.get("pattern")
    if error.get("type") == "string_pattern_mismatch" and pattern in _PATTERN_HINTS:
        return f"{error['input']!r} is not {_PATTERN_HINTS[pattern]}"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return "unknown key (misspelt, or not supported by this version)"
    if error.get("type") == "missing":
        return "required key is missing"
    value = error.get("input")
    loc = error.get("loc") or ()
    if loc and loc[-1] in _SECRET_KEYS:
        return message
    if error.get("type") not in ("model_type",) and isinstance(value, str | int | float | bool):
        return f"{message} (got {value!r})"
    return message


def problems_from_validation(exc: ValidationError) -> list[ConfigProblem]:
    return [ConfigProblem(_format_path(err["loc"]), _reason(err)) for err in exc.errors()]


# Variables with the prefix that configure the process, not the file.
_NOT_OVERRIDES = {"CONFIG", "FAILPOINT"}


def _env_overrides(environ: Mapping[str, str]) -> Iterator[tuple[str, list[str], str]]:
    for name, value in sorted(environ.items()):
        rest = name.removeprefix(ENV_PREFIX)
        if rest == name or not rest or rest in _NOT_OVERRIDES:
            continue
        yield name, [p.lower() for p in rest.split("__")], value


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[ConfigProblem]:
    """Write ``FLEXBRIDGE_A__B__0__C=value`` into ``data['a']['b'][0]['c']``."""
    problems: list[ConfigProblem] = []
    for name, parts, value in _env_overrides(environ):
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(
                        ConfigProblem(
                            f"env {name}", f"list index {part!r} does not exist in the file"
                        )
                    )
                    break
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append(ConfigProblem(f"env {name}", "path goes through a plain value"))
                break
    return problems


def parse_config(
    text: str,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    *,
    files: bool = False,
) -> Config:
    """Parse and validate TOML text; raise ConfigError naming every problem found: field,
    cross-field and (with `files`) the files it points to, all in one pass."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from exc
    problems = apply_env_overrides(data, os.environ if environ is None else environ)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc))
    problems.extend(cross_problems(data))
    if files:
        problems.extend(file_problems(data))
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


def load_config(
    path: Path, environ: Mapping[str, str] | None = None, *, files: bool = False
) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigFileMissing(
            str(path),
            [ConfigProblem("", "no such file (the example: systemd/flexbridge.toml.example)")],
        ) from exc
    except OSError as exc:
        raise ConfigFileMissing(
            str(path), [ConfigProblem("", f"cannot read file: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"not UTF-8 text: {exc}")]) from exc
    return parse_config(text, str(path), environ, files=files)


def summary(config: Config) -> list[str]:
    """A few lines an operator can check at a glance after `check-config`."""
    site = config.site
    ocpp = config.ocpp
    return [
        f"site {site.id} ({site.name}), {site.connection_capacity_w} W connection, "
        f"safe limit {site.effective_safe_limit_w} W, time zone {site.timezone}",
        f"OCPP listener {ocpp.host}:{ocpp.port}, security profile {ocpp.security_profile}, "
        f"{len(ocpp.chargers)} configured charger(s), unknown chargers: {ocpp.unknown_chargers}",
        f"UFTP participant {config.uftp.domain} (AGR) on {config.uftp.host}:{config.uftp.port}"
        f"{' with TLS' if config.uftp.tls else ' behind a TLS proxy'}, "
        f"{len(config.uftp.peers)} peer(s), market {config.uftp.market_timezone} "
        f"PT{config.uftp.isp_duration_min}M",
        f"{len(config.congestion_points)} congestion point(s): "
        + (", ".join(cp.entity_address for cp in config.congestion_points) or "none"),
        f"state in {config.storage.database_path}",
        f"MQTT to {config.mqtt.host}:{config.mqtt.port}" if config.mqtt.enabled else "MQTT off",
    ]


def check_files(config: Config) -> list[ConfigProblem]:
    """Problems with files a valid configuration points to (see `file_problems`)."""
    return file_problems(config.model_dump())
