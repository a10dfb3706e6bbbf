"""The aggregator's configuration file (`flexbridge aggregator run --config central.toml`).

The same conventions as the site agent's file (`agent.runtime.configfile`): TOML, unknown keys
refused, every problem named at its key path in one pass, any key overridable from the
environment (``FLEXBRIDGE_DATABASE__DSN``, ``FLEXBRIDGE_NATS__PASSWORD``), which is how the
secrets get in. The `[uftp]` section is the site agent's: the aggregator is one UFTP
participant, whatever the number of congestion points behind it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, ValidationError, model_validator

from agent.fleet.protocol import SITE_ID
from agent.runtime.config import (
    CongestionPointConfig,
    EntityAddress,
    LoggingConfig,
    Model,
    Port,
    UftpConfig,
)
from agent.runtime.configfile import (
    ConfigError,
    ConfigFileMissing,
    ConfigProblem,
    apply_env_overrides,
    problems_from_validation,
)
from uftp.models import EAN_PATTERN


class DatabaseConfig(Model):
    # libpq connection string or URI; put the password in FLEXBRIDGE_DATABASE__DSN or ~/.pgpass.
    dsn: SecretStr


class NatsConfig(Model):
    servers: Annotated[list[Annotated[str, Field(pattern=r"^nats://")]], Field(min_length=1)]
    # The centre's own user, which may do everything on the FLEET_* streams; put the password
    # in FLEXBRIDGE_NATS__PASSWORD.
    password: SecretStr
    # Copies of each stream in the cluster (3 on a 3-node cluster; 1 on a single server).
    replicas: Annotated[int, Field(ge=1, le=5)] = 3


class SiteEntry(Model):
    id: Annotated[str, Field(pattern=SITE_ID)]
    congestion_point: EntityAddress
    # Where the site's NATS credentials are kept (a path or a secret store's name), never them.
    credentials_ref: str | None = None


class MeteringEntry(Model):
    """A congestion point whose DSO wants UFTP Metering: the connection's EAN to report it
    under (the sites' metering summed)."""

    congestion_point: EntityAddress
    ean: Annotated[str, Field(pattern=EAN_PATTERN)]


class CentralTradingConfig(Model):
    # A site with no heartbeat for this long counts as offline in the operator view.
    offline_after_s: Annotated[int, Field(ge=10, le=86_400)] = 180
    # A site that has not acked its command this long before the first ordered ISP has its
    # share moved to the other sites of the congestion point.
    reassign_lead_s: Annotated[int, Field(ge=60, le=86_400)] = 600
    # How often open offers are checked against the sites' latest envelopes (and revoked where
    # they can no longer be delivered).
    revocation_interval_s: Annotated[int, Field(ge=5, le=3600)] = 60
    # How long an offer stays valid after it was made.
    offer_validity_s: Annotated[int, Field(ge=60, le=86_400)] = 3600
    price_fixed: Annotated[float, Field(ge=0)] = 0.0
    price_per_kwh: Annotated[float, Field(ge=0)] = 0.1
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"
    # Local market time of the day-ahead D-prognosis for tomorrow.
    prognosis_time: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "14:00"


class CentralHttpConfig(Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8090


class CentralConfig(Model):
    uftp: UftpConfig
    database: DatabaseConfig
    nats: NatsConfig
    congestion_points: Annotated[list[CongestionPointConfig], Field(min_length=1)]
    # Sites may also be added at run time (`flexbridge aggregator add-site`); these are ensured
    # at every start.
    sites: list[SiteEntry] = Field(default_factory=list)
    trading: CentralTradingConfig = Field(default_factory=CentralTradingConfig)
    metering: list[MeteringEntry] = Field(default_factory=list)
    http: CentralHttpConfig = Field(default_factory=CentralHttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.uftp.isp_duration_min != 15:
            raise ValueError(
                "uftp.isp_duration_min: the fleet works on 15-minute ISPs (the sites' grid)"
            )
        points = [cp.entity_address for cp in self.congestion_points]
        if len(set(points)) != len(points):
            raise ValueError("a congestion point is listed twice")
        peers = {p.domain for p in self.uftp.peers if p.role == "DSO"}
        for cp in self.congestion_points:
            if cp.dso_domain not in peers:
                raise ValueError(
                    f"congestion point {cp.entity_address}: DSO {cp.dso_domain} is not a "
                    "[[uftp.peers]] entry with role DSO"
                )
        ids = [s.id for s in self.sites]
        if len(set(ids)) != len(ids):
            raise ValueError("a site is listed twice")
        for site in self.sites:
            if site.congestion_point not in points:
                raise ValueError(
                    f"site {site.id}: congestion point {site.congestion_point} is not configured"
                )
        for entry in self.metering:
            if entry.congestion_point not in points:
                raise ValueError(
                    f"metering: congestion point {entry.congestion_point} is not configured"
                )
        return self


def parse_central_config(
    text: str, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> CentralConfig:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from exc
    problems = apply_env_overrides(data, os.environ if environ is None else environ)
    try:
        config = CentralConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc))
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    key = config.uftp.signing_key_file
    if not key.is_file():
        raise ConfigError(source, [ConfigProblem("uftp.signing_key_file", f"{key}: no such file")])
    return config


def load_central_config(path: Path, environ: Mapping[str, str] | None = None) -> CentralConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigFileMissing(str(path), [ConfigProblem("", "no such file")]) from exc
    except OSError as exc:
        raise ConfigFileMissing(
            str(path), [ConfigProblem("", f"cannot read file: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"not UTF-8 text: {exc}")]) from exc
    return parse_central_config(text, str(path), environ)
