"""Reading the configuration file: TOML, environment overrides, and every problem named at once.

`agent.runtime.config` declares what a valid configuration is (the pydantic models); this module
turns a file into one. Any key can be overridden from the environment: ``FLEXBRIDGE_`` followed
by the key path in upper case with ``__`` between the parts, list items by index, for example
``FLEXBRIDGE_MQTT__PASSWORD`` or ``FLEXBRIDGE_UFTP__PEERS__0__OAUTH__CLIENT_SECRET``. That keeps
secrets out of a file that operators copy around and fits systemd's ``EnvironmentFile=`` and
container secrets.

`check-config` (and `run`) see every field, cross-field and file problem of a file in one pass,
each at its key path, so one mistake never hides the next.
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
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from agent.runtime.config import (
    CHARGER_ID,
    ENTITY_ADDRESS,
    INTERNET_DOMAIN,
    LOCAL_TIME,
    SITE_ID,
    ChargerConfig,
    Config,
    CongestionPointConfig,
    MqttConfig,
    SiteConfig,
    TlsConfig,
    UftpConfig,
)
from ocpp_bridge.capabilities import RateUnit
from ocpp_bridge.passwords import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    PasswordHashError,
    parse_password_hash,
)
from ocpp_bridge.profiles import ElectricalData, limit_in_unit
from uftp.keys import KeyFormatError, load_signing_key

ENV_PREFIX = "FLEXBRIDGE_"


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
        # A fleet site has no UFTP peers: its centre trades with the congestion point's DSO.
        if uftp is not None and _valid(domain) and domain not in dso_domains:
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
_NOT_OVERRIDES = {"CONFIG", "FAILPOINT", "CLOCK_OFFSET_FILE"}


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


def _market_line(config: Config) -> str:
    fleet = config.fleet
    if fleet is not None:
        site_id = fleet.fleet_site_id(config.site.id)
        return (
            f"fleet site {site_id} (NATS user {fleet.bus_user(config.site.id)}) on "
            f"{', '.join(fleet.servers)}, heartbeat every {fleet.heartbeat_s} s, "
            f"market {fleet.market_timezone} PT{config.isp_duration_min}M"
        )
    uftp = config.uftp
    return (
        f"UFTP participant {uftp.domain} (AGR) on {uftp.host}:{uftp.port}"
        f"{' with TLS' if uftp.tls else ' behind a TLS proxy'}, "
        f"{len(uftp.peers)} peer(s), market {uftp.market_timezone} "
        f"PT{uftp.isp_duration_min}M"
    )


def summary(config: Config) -> list[str]:
    """A few lines an operator can check at a glance after `check-config`."""
    site = config.site
    ocpp = config.ocpp
    return [
        f"site {site.id} ({site.name}), {site.connection_capacity_w} W connection, "
        f"safe limit {site.effective_safe_limit_w} W, time zone {site.timezone}",
        f"OCPP listener {ocpp.host}:{ocpp.port}, security profile {ocpp.security_profile}, "
        f"{len(ocpp.chargers)} configured charger(s), unknown chargers: {ocpp.unknown_chargers}",
        _market_line(config),
        f"{len(config.congestion_points)} congestion point(s): "
        + (", ".join(cp.entity_address for cp in config.congestion_points) or "none"),
        f"state in {config.storage.database_path}",
        f"MQTT to {config.mqtt.host}:{config.mqtt.port}" if config.mqtt.enabled else "MQTT off",
    ]
