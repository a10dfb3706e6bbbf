"""What a valid configuration is: the pydantic models of the agent's one TOML file.

Every model forbids unknown keys, so a typo is an error with its key path instead of a
silently ignored setting. Secrets are `SecretStr` (never printed, never logged). Reading a file,
the environment overrides (the usual way secrets get in) and the checks that span keys, sections
and files live in `agent.runtime.configfile`.

The libraries (`uftp`, `ocpp_bridge`, `forecaster`) do not import this module; `agent` maps these
models onto their own settings objects, which keeps the dependency rule of docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.runtime.upstream import UpstreamConfig
from uftp.keys import KeyFormatError, parse_public_key

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


FLEET_ISP_MINUTES = 15  # the fleet protocol's ISP grid (agent.fleet.protocol: 900 s, UTC)


class FleetConfig(Model):
    """The site's link to the central aggregator of a fleet (docs/fleet.md, "Site agent").

    A site in a fleet has no UFTP identity of its own: it publishes its forecast, flexibility,
    metering and heartbeat to the centre over NATS JetStream and applies the centre's commands.
    """

    # The site's id on the bus (subjects fleet.up.<id>.*, consumer site-<id>); site.id by default.
    site_id: Annotated[str, Field(pattern=SITE_ID)] | None = None
    # NATS servers of the fleet's cluster; the client fails over between them.
    servers: Annotated[
        list[Annotated[str, Field(pattern=r"^(nats|tls)://.+")]], Field(min_length=1)
    ]
    # NATS user and password of this site (site-<id> by default; the password through the
    # environment: FLEXBRIDGE_FLEET__PASSWORD).
    user: str | None = None
    password: SecretStr | None = None
    # A heartbeat (chargers connected, power, safe limit) this often, so the centre tells an
    # offline site apart.
    heartbeat_s: Annotated[int, Field(ge=5, le=3600)] = 30
    # The flexibility envelope again at least this often (and after each forecast).
    flex_interval_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    # Day-ahead forecasts go out at this local time of the market (the centre's D-prognoses
    # are due later), intraday ones every `intraday_interval_min`.
    market_timezone: TimeZoneName = "Europe/Amsterdam"
    forecast_time: Annotated[str, Field(pattern=LOCAL_TIME)] = "08:00"
    intraday_interval_min: Annotated[int, Field(ge=15, le=24 * 60)] = 60

    @model_validator(mode="after")
    def _password_given(self) -> Self:
        if self.password is None or not self.password.get_secret_value():
            raise ValueError(
                "fleet.password is required: the site's NATS password, best through the "
                "environment (FLEXBRIDGE_FLEET__PASSWORD) rather than the file"
            )
        return self

    def bus_user(self, site_id: str) -> str:
        return self.user or f"site-{self.fleet_site_id(site_id)}"

    def fleet_site_id(self, site_id: str) -> str:
        return self.site_id or site_id


class Config(Model):
    # Serialized under the names the file uses (`uftp`, not the field's own name).
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    site: SiteConfig
    ocpp: OcppConfig = Field(default_factory=OcppConfig)
    # Exactly one of the two: stand-alone (the site is its own UFTP participant) or a site of
    # a fleet (the central aggregator is). Stand-alone code reads `uftp`.
    uftp_section: UftpConfig | None = Field(default=None, alias="uftp")
    fleet: FleetConfig | None = None
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

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if (self.uftp_section is None) == (self.fleet is None):
            raise ValueError(
                "exactly one of [uftp] (the site is its own UFTP participant) and [fleet] "
                "(a site of a fleet) is needed"
            )
        return self

    @property
    def uftp(self) -> UftpConfig:
        """The UFTP participant's settings; stand-alone mode only (a fleet site has none)."""
        if self.uftp_section is None:
            raise RuntimeError("a fleet site has no [uftp] section: its centre speaks UFTP")
        return self.uftp_section

    @property
    def isp_duration_min(self) -> int:
        """The ISP length the site measures and plans in."""
        if self.uftp_section is None:
            return FLEET_ISP_MINUTES
        return self.uftp_section.isp_duration_min

    @property
    def market_timezone(self) -> str:
        if self.uftp_section is not None:
            return self.uftp_section.market_timezone
        assert self.fleet is not None  # _one_mode
        return self.fleet.market_timezone

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
