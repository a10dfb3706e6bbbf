"""The ``[upstream]`` section: local-controller mode, chargers relayed to the operator's CSMS.

Without it flexbridge is the chargers' CSMS. With it, every charger that connects is relayed
to the CSMS given here (``url``, or a ``[[upstream.chargers]]`` entry for that charger), and
flexbridge adds its own smart charging on the way. Example::

    [upstream]
    url = "wss://csms.example.net:8443/ocpp"   # the identity is appended
    security_profile = 2                        # upstream, independent of [ocpp]
    policy = "autonomous"                       # or "strict": close chargers on CSMS loss

    [[upstream.chargers]]
    id = "CP-7"
    url = "wss://csms.example.net:8444/ocpp"
    security_profile = 3
    cert_file = "/etc/flexbridge/cp7.pem"
    key_file = "/etc/flexbridge/cp7.key"

``[upstream.profiles]`` sets the stack levels and ids of flexbridge's own charging profiles
(defaults: levels 0/1/2, ids 9000100, 9000200 + EVSE id, 9000300 + EVSE id), which must not
be the CSMS's.

Security profiles 1 and 2 present the charger's own Basic-auth password unless ``password``
is set (like any secret, it can come from the environment, e.g.
``FLEXBRIDGE_UPSTREAM__CHARGERS__0__PASSWORD``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ocpp_bridge.profiles import ProfileError, ProfileLayout
from ocpp_bridge.relay import UpstreamPolicy
from ocpp_bridge.settings import SecurityProfile, SettingsError
from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT, UpstreamSettings, UpstreamTarget

CHARGER_ID = r"^[A-Za-z0-9*\-_=+|@.]{1,48}$"
URL = r"^wss?://[^\s/]+(/\S*)?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Target(_Model):
    url: Annotated[str, Field(pattern=URL)]
    security_profile: Annotated[int, Field(ge=0, le=3)] = 1
    # The identity presented upstream; unset: the charger's own.
    identity: Annotated[str, Field(pattern=CHARGER_ID)] | None = None
    # Profiles 1/2: unset passes the charger's own password through.
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.target()  # the library's own checks, reported with this key path
        return self

    def target(self) -> UpstreamTarget:
        try:
            return UpstreamTarget(
                url=self.url,
                security_profile=SecurityProfile(self.security_profile),
                identity=self.identity,
                password=self.password.get_secret_value() if self.password else None,
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
            )
        except SettingsError as exc:
            raise ValueError(str(exc)) from exc


class UpstreamChargerConfig(_Target):
    id: Annotated[str, Field(pattern=CHARGER_ID)]


_L = LOCAL_CONTROLLER_LAYOUT


class ProfilesConfig(_Model):
    """Stack levels and ids of flexbridge's own profiles, apart from the CSMS's: the CSMS must
    not use these ids, nor these stack levels for the same purpose."""

    safe_stack_level: Annotated[int, Field(ge=0)] = _L.safe_stack_level
    station_dynamic_stack_level: Annotated[int, Field(ge=0)] = _L.station_dynamic_stack_level
    evse_dynamic_stack_level: Annotated[int, Field(ge=0)] = _L.evse_dynamic_stack_level
    safe_profile_id: Annotated[int, Field(ge=1)] = _L.safe_profile_id
    dynamic_profile_id_base: Annotated[int, Field(ge=1)] = _L.dynamic_profile_id_base
    station_split_profile_id_base: Annotated[int, Field(ge=1)] = _L.station_split_profile_id_base

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.layout()
        return self

    def layout(self) -> ProfileLayout:
        try:
            return ProfileLayout(**self.model_dump())
        except ProfileError as exc:
            raise ValueError(str(exc)) from exc


class UpstreamConfig(_Model):
    # The CSMS for chargers not listed below; unset: only listed chargers are relayed.
    url: Annotated[str, Field(pattern=URL)] | None = None
    security_profile: Annotated[int, Field(ge=0, le=3)] = 1
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    chargers: list[UpstreamChargerConfig] = Field(default_factory=list)
    policy: Literal["autonomous", "strict"] = "autonomous"
    reconnect_initial_s: Annotated[float, Field(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    call_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    authorize_offline: bool = True
    # [start, stop) kept for flexbridge's own 1.6 transactionIds and requestIds.
    local_transaction_ids: tuple[int, int] = (2_000_000_000, 2_100_000_000)
    request_ids: tuple[int, int] = (1_900_000_000, 2_000_000_000)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.url is None and not self.chargers:
            raise ValueError("[upstream] needs a url or at least one [[upstream.chargers]] entry")
        ids = [c.id for c in self.chargers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate upstream charger ids: {', '.join(dupes)}")
        self.settings()
        return self

    def settings(self, state_dir: Path | None = None) -> UpstreamSettings:
        """The bridge's settings object for this section; `state_dir` keeps the replay
        queues across restarts."""
        default = None
        if self.url is not None:
            default = _Target(
                url=self.url,
                security_profile=self.security_profile,
                password=self.password,
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
            ).target()
        try:
            return UpstreamSettings(
                default=default,
                chargers={c.id: c.target() for c in self.chargers},
                policy=UpstreamPolicy(self.policy),
                reconnect_initial_s=self.reconnect_initial_s,
                reconnect_max_s=self.reconnect_max_s,
                connect_timeout_s=self.connect_timeout_s,
                call_timeout_s=self.call_timeout_s,
                authorize_offline=self.authorize_offline,
                local_transaction_ids=self.local_transaction_ids,
                request_ids=self.request_ids,
                state_dir=state_dir,
            )
        except SettingsError as exc:
            raise ValueError(str(exc)) from exc
