"""What a site agent and the central aggregator say to each other over the fleet bus.

Pure: message models, subjects and their JSON codec, no I/O. Both ends import this module, so
a change to the wire format is one change here (and `VERSION` says which one a peer speaks).

Delivery on the bus is at-least-once (JetStream redelivers anything not acked, a publisher
retries anything not confirmed), so every message carries an `id` unique for its sender: it is
the `Nats-Msg-Id` header (the stream's short de-duplication window) *and* the receiver's
idempotency key in its own database (the window alone is never relied on). Commands carry
`(order_id, site, seq, valid_until)`: a site applies a command only if its `seq` is newer than
what it applied for that order and only before `valid_until`; a newer `seq` replaces the
older command whole.

Series are on the UTC ISP grid: `start` is the first ISP's start (aligned to `isp_s`), one
value per ISP; the market time zone stays at the UFTP edge in the aggregator. Power in watts,
energy in watt-hours, positive = consumption.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

VERSION: Literal[1] = 1

SITE_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # a NATS subject token and an MQTT topic level
_SITE_ID = re.compile(SITE_ID)

UP_STREAM = "FLEET_UP"  # sites -> centre
CMD_STREAM = "FLEET_CMD"  # centre -> sites
UP_SUBJECTS = "fleet.up.>"
CMD_SUBJECTS = "fleet.cmd.>"
CENTRAL_CONSUMER = "central"  # one durable consumer shared by every aggregator process


def up_subject(site: str, kind: str) -> str:
    """Where a site publishes its `kind` messages; a site may publish only under its own."""
    return f"fleet.up.{check_site(site)}.{kind}"


def cmd_subject(site: str) -> str:
    """Where the centre publishes a site's commands; only that site may read them."""
    return f"fleet.cmd.{check_site(site)}"


def site_consumer(site: str) -> str:
    """The durable consumer of a site's commands, created by the centre when the site joins."""
    return f"site-{check_site(site)}"


def check_site(site: str) -> str:
    if not _SITE_ID.match(site):
        raise ValueError(f"site id {site!r} must match {SITE_ID}")
    return site


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
        raise ValueError("timestamps on the fleet bus are UTC with an explicit offset")
    return moment


Utc = Annotated[datetime, AfterValidator(_utc)]
SiteId = Annotated[str, Field(pattern=SITE_ID)]
Watts = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]
WattHours = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]
IspSeconds = Literal[900]  # UFTP 3.1.0 ISPs are 15 minutes; the field says so explicitly
MAX_ISPS = 2 * 100  # two market days, DST included


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Message(_Model):
    v: Literal[1] = VERSION
    id: Annotated[str, Field(min_length=1, max_length=128)]
    site: SiteId
    sent_at: Utc


class _Series(_Model):
    start: Utc
    isp_s: IspSeconds = 900

    @model_validator(mode="after")
    def _aligned(self) -> _Series:
        if int(self.start.timestamp()) % self.isp_s or self.start.microsecond:
            raise ValueError(f"start {self.start.isoformat()} is not on the {self.isp_s} s grid")
        return self

    def isp_start(self, index: int) -> datetime:
        return self.start + timedelta(seconds=self.isp_s * index)


class Forecast(_Message, _Series):
    """A site's baseline forecast: what it expects to draw per ISP without any order."""

    kind: Literal["forecast"] = "forecast"
    congestion_point: str
    made_at: Utc
    p10_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]
    p50_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]
    p90_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]

    @model_validator(mode="after")
    def _shape(self) -> Forecast:
        if not len(self.p10_w) == len(self.p50_w) == len(self.p90_w):
            raise ValueError("p10_w, p50_w and p90_w must have one value per ISP each")
        if any(
            lo > mid or mid > hi
            for lo, mid, hi in zip(self.p10_w, self.p50_w, self.p90_w, strict=True)
        ):
            raise ValueError("quantiles must be ordered p10 <= p50 <= p90 in every ISP")
        return self


class Flex(_Message, _Series):
    """What the site can be held to per ISP, as of `made_at`, until `valid_until`: its power
    anywhere in [min_w, max_w] (its baseline is the forecast's p50)."""

    kind: Literal["flex"] = "flex"
    congestion_point: str
    made_at: Utc
    valid_until: Utc
    baseline_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]
    min_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]
    max_w: Annotated[list[Watts], Field(max_length=MAX_ISPS)]

    @model_validator(mode="after")
    def _shape(self) -> Flex:
        if not len(self.baseline_w) == len(self.min_w) == len(self.max_w):
            raise ValueError("baseline_w, min_w and max_w must have one value per ISP each")
        if any(lo > hi for lo, hi in zip(self.min_w, self.max_w, strict=True)):
            raise ValueError("min_w must not exceed max_w in any ISP")
        return self


class Metering(_Message, _Series):
    """Measured energy per ISP (None: not measured, never 0 in its place)."""

    kind: Literal["metering"] = "metering"
    congestion_point: str
    energy_wh: Annotated[list[WattHours | None], Field(max_length=MAX_ISPS)]


class Ack(_Message):
    """What a site did with a command. Sent again, identically, for a redelivered command."""

    kind: Literal["ack"] = "ack"
    order_id: str
    seq: Annotated[int, Field(ge=1)]
    outcome: Literal["applied", "superseded", "expired"]
    applied_at: Utc


class Heartbeat(_Message):
    """A site's liveness and live state, so the centre can tell offline sites apart."""

    kind: Literal["heartbeat"] = "heartbeat"
    chargers_connected: Annotated[int, Field(ge=0)]
    power_w: Watts
    safe_limit_w: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Command(_Message, _Series):
    """The centre's order share for one site: a power cap per ISP (None: no cap from this
    order in that ISP). A newer `seq` for the same `order_id` replaces this one whole."""

    kind: Literal["command"] = "command"
    order_id: Annotated[str, Field(min_length=1, max_length=128)]
    seq: Annotated[int, Field(ge=1)]
    valid_until: Utc
    congestion_point: str
    cap_w: Annotated[
        list[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None], Field(max_length=MAX_ISPS)
    ]


Upstream = Annotated[Forecast | Flex | Metering | Ack | Heartbeat, Field(discriminator="kind")]
UpstreamKind = Literal["forecast", "flex", "metering", "ack", "heartbeat"]

_UPSTREAM: TypeAdapter[Forecast | Flex | Metering | Ack | Heartbeat] = TypeAdapter(Upstream)
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


class DecodeError(ValueError):
    """A message that is not valid JSON of this protocol version; the text says why."""


def encode(message: _Message) -> bytes:
    return message.model_dump_json().encode()


def decode_upstream(data: bytes) -> Forecast | Flex | Metering | Ack | Heartbeat:
    try:
        return _UPSTREAM.validate_json(data)
    except ValidationError as exc:
        raise DecodeError(_reason(exc)) from None


def decode_command(data: bytes) -> Command:
    try:
        return _COMMAND.validate_json(data)
    except ValidationError as exc:
        raise DecodeError(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']} ({exc.error_count()} error(s))"
