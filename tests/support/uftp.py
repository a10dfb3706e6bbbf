"""Builders for UFTP tests: valid messages of every kind, keys and participant settings.

Each builder returns a message that passes every check for "now"; tests change one thing with
`with_fields` and assert the one rejection that follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from uftp import calendar, keys
from uftp.models import (
    AvailableRequested,
    ContractSettlement,
    ContractSettlementISP,
    ContractSettlementPeriod,
    DPrognosis,
    DPrognosisISP,
    FlexOffer,
    FlexOfferOption,
    FlexOrder,
    FlexOrderSettlement,
    FlexOrderSettlementISP,
    FlexRequest,
    FlexRequestISP,
    FlexReservationUpdate,
    FlexSettlement,
    Metering,
    MeteringISP,
    MeteringProfile,
    MeteringProfileType,
    MeteringUnit,
    PowerISP,
    Role,
    utc_now,
)
from uftp.settings import (
    MarketSettings,
    ParticipantSettings,
    PeerSettings,
    RateLimit,
    RetryPolicy,
)

AGR = "agr.example.com"
DSO = "dso.example.com"
CRO = "cro.example.com"
CONGESTION_POINT = "ean.871685900012636543"
TZ = "Europe/Amsterdam"
MARKET = MarketSettings(time_zone=TZ, isp_minutes=15)
PATH = "/shapeshifter/api/v3/message"
# Fixed "now" for pure tests: a Tuesday in winter, 10:00 in Amsterdam.
NOW = datetime(2030, 1, 15, 9, 0, tzinfo=UTC)
# Fast retries for tests (the give-up window cannot go below the spec's hour).
FAST_RETRY = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, request_timeout_s=5.0)


def url(port: int, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{port}{PATH}"


def next_period(now: datetime = NOW) -> date:
    return calendar.today(TZ, now) + timedelta(days=1)


def flex_request(now: datetime = NOW, **overrides: Any) -> FlexRequest:
    """A day-ahead request: reduce by 6..50 kW in ISPs 69-72 (17:00-18:00), room elsewhere."""
    fields: dict[str, Any] = {
        "sender_domain": DSO,
        "recipient_domain": AGR,
        "time_stamp": now,
        "isp_duration": "PT15M",
        "time_zone": TZ,
        "period": next_period(now),
        "congestion_point": CONGESTION_POINT,
        "revision": 1,
        "expiration_date_time": now + timedelta(hours=4),
        "isps": [
            FlexRequestISP(
                disposition=AvailableRequested.AVAILABLE,
                min_power=0,
                max_power=20000,
                start=1,
                duration=68,
            ),
            FlexRequestISP(
                disposition=AvailableRequested.REQUESTED,
                min_power=-50000,
                max_power=-6000,
                start=69,
                duration=4,
            ),
        ],
    }
    fields.update(overrides)
    return FlexRequest(**fields)


def flex_offer(
    request: FlexRequest | None = None, now: datetime = NOW, **overrides: Any
) -> FlexOffer:
    """An offer answering `request` (or unsolicited): -8 kW in ISPs 69-72 for 12.50 EUR."""
    request = request or flex_request(now)
    fields: dict[str, Any] = {
        "sender_domain": request.recipient_domain,
        "recipient_domain": request.sender_domain,
        "time_stamp": now,
        "conversation_id": request.conversation_id,
        "flex_request_message_id": request.message_id,
        "isp_duration": request.isp_duration,
        "time_zone": request.time_zone,
        "period": request.period,
        "congestion_point": request.congestion_point,
        "expiration_date_time": now + timedelta(hours=2),
        "currency": "EUR",
        "offer_options": [
            FlexOfferOption(
                option_reference="A",
                price=Decimal("12.5"),
                min_activation_factor=Decimal("0.50"),
                isps=[PowerISP(power=-8000, start=69, duration=4)],
            )
        ],
    }
    fields.update(overrides)
    return FlexOffer(**fields)


def flex_order(offer: FlexOffer, now: datetime = NOW, **overrides: Any) -> FlexOrder:
    """An order for the offer's first option, exactly as offered."""
    option = offer.offer_options[0]
    fields: dict[str, Any] = {
        "sender_domain": offer.recipient_domain,
        "recipient_domain": offer.sender_domain,
        "time_stamp": now,
        "conversation_id": offer.conversation_id,
        "flex_offer_message_id": offer.message_id,
        "isp_duration": offer.isp_duration,
        "time_zone": offer.time_zone,
        "period": offer.period,
        "congestion_point": offer.congestion_point,
        "price": option.price,
        "currency": offer.currency,
        "order_reference": "ORD-1",
        "option_reference": option.option_reference,
        "isps": option.isps,
    }
    fields.update(overrides)
    return FlexOrder(**fields)


def d_prognosis(
    now: datetime = NOW, powers: Sequence[int] | None = None, **overrides: Any
) -> DPrognosis:
    """A complete prognosis for the next day, one ISP element per ISP."""
    period = overrides.get("period", next_period(now))
    count = calendar.isp_count(period, TZ, 15)
    powers = list(powers) if powers is not None else [1000 + 10 * i for i in range(count)]
    fields: dict[str, Any] = {
        "sender_domain": AGR,
        "recipient_domain": DSO,
        "time_stamp": now,
        "isp_duration": "PT15M",
        "time_zone": TZ,
        "period": period,
        "congestion_point": CONGESTION_POINT,
        "revision": 1,
        "isps": [DPrognosisISP(power=p, start=i + 1) for i, p in enumerate(powers)],
    }
    fields.update(overrides)
    return DPrognosis(**fields)


def flex_reservation_update(now: datetime = NOW, **overrides: Any) -> FlexReservationUpdate:
    fields: dict[str, Any] = {
        "sender_domain": DSO,
        "recipient_domain": AGR,
        "time_stamp": now,
        "isp_duration": "PT15M",
        "time_zone": TZ,
        "period": next_period(now),
        "congestion_point": CONGESTION_POINT,
        "contract_id": "C-1",
        "reference": "RES-1",
        "isps": [PowerISP(power=-5000, start=69, duration=4)],
    }
    fields.update(overrides)
    return FlexReservationUpdate(**fields)


def flex_settlement(
    orders: Sequence[FlexOrder],
    period_start: date,
    period_end: date,
    now: datetime = NOW,
    **overrides: Any,
) -> FlexSettlement:
    """A settlement with one item per order, everything delivered as ordered."""
    items = [
        FlexOrderSettlement(
            order_reference=order.order_reference,
            period=order.period,
            congestion_point=order.congestion_point,
            price=order.price,
            net_settlement=order.price,
            isps=[
                FlexOrderSettlementISP(
                    start=isp.start,
                    duration=isp.duration,
                    baseline_power=10000,
                    ordered_flex_power=isp.power,
                    actual_power=10000 + isp.power,
                    delivered_flex_power=isp.power,
                )
                for isp in order.isps
            ],
        )
        for order in orders
    ]
    fields: dict[str, Any] = {
        "sender_domain": DSO,
        "recipient_domain": AGR,
        "time_stamp": now,
        "period_start": period_start,
        "period_end": period_end,
        "currency": "EUR",
        "flex_order_settlements": items,
        "contract_settlements": [
            ContractSettlement(
                contract_id="C-1",
                periods=[
                    ContractSettlementPeriod(
                        period=period_start,
                        isps=[ContractSettlementISP(start=1, reserved_power=0)],
                    )
                ],
            )
        ],
    }
    fields.update(overrides)
    return FlexSettlement(**fields)


def metering(now: datetime = NOW, **overrides: Any) -> Metering:
    period = calendar.today(TZ, now) - timedelta(days=1)
    count = calendar.isp_count(period, TZ, 15)
    fields: dict[str, Any] = {
        "sender_domain": AGR,
        "recipient_domain": DSO,
        "time_stamp": now,
        "revision": 1,
        "isp_duration": "PT15M",
        "time_zone": TZ,
        "period": period,
        "ean": "E1234567890123456",
        "profiles": [
            MeteringProfile(
                profile_type=MeteringProfileType.POWER,
                unit=MeteringUnit.KW,
                isps=[MeteringISP(start=i, value=Decimal("1.5")) for i in range(1, count + 1)],
            )
        ],
    }
    fields.update(overrides)
    return Metering(**fields)


# --- participants -----------------------------------------------------------------------------


@dataclass
class Clock:
    """Real time plus an offset a test can move forward (participants take it as `clock`)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return utc_now() + self.offset


def peer(domain: str, role: Role, key: SigningKey, port: int, **kwargs: Any) -> PeerSettings:
    return PeerSettings(domain, role, (keys.public_key_b64(key),), url(port), **kwargs)


def settings(
    domain: str,
    role: Role,
    key: SigningKey,
    port: int,
    peers: Sequence[PeerSettings],
    **overrides: Any,
) -> ParticipantSettings:
    fields: dict[str, Any] = {
        "domain": domain,
        "role": role,
        "signing_key": key,
        "port": port,
        "peers": tuple(peers),
        "market": MARKET,
        "retry": FAST_RETRY,
        "rate_limit": RateLimit(per_second=1000, burst=1000),
    }
    fields.update(overrides)
    return ParticipantSettings(**fields)


def database(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}.sqlite"


def agr_handler(get_participant: Any) -> Any:
    """What the agent does with pending messages, reduced to the protocol: check a FlexRequest
    and a FlexOrder (against the offer uftp remembers sending) and answer; note the rest.
    `get_participant()` returns the AgrParticipant (created after its handler). Each handled
    message becomes an outcome ``(message, rejections)``."""
    from uftp.models import FlexOrder as _FlexOrder
    from uftp.models import FlexRequest as _FlexRequest
    from uftp.validation import check_flex_order, check_flex_request

    def handle(conn: Any, inbound: Any) -> tuple[Any, list[str]]:
        participant = get_participant()
        message = inbound.message()
        rejections: list[str] = []
        if isinstance(message, _FlexRequest):
            rejections = check_flex_request(message, participant.now())
            participant.respond(conn, inbound, rejections, request=message)
        elif isinstance(message, _FlexOrder):
            offer, state = participant.offer_for_order(conn, message)
            rejections = check_flex_order(message, offer, state, participant.now())
            participant.respond(conn, inbound, rejections, request=message)
        else:
            participant.mark_processed(conn, inbound)
        return message, rejections

    return handle


class RecordingPeer:
    """A bare HTTP endpoint that stores every POST body and answers a fixed status: a peer
    whose behaviour a test controls completely (delivery failures, what we sent)."""

    def __init__(self, port: int, status: int = 200, script: Sequence[int] = ()) -> None:
        self.port = port
        self.status = status
        # Statuses to answer first, one per request, before falling back to `status`.
        self.script = list(script)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.bodies.append(await request.read())
            self.headers.append(dict(request.headers))
            status = self.script.pop(0) if self.script else self.status
            return web.Response(status=status)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def messages(self, sender_key: SigningKey) -> list[Any]:
        """The inner messages received, verified with the sender's key."""
        from uftp import codec, sealing

        return [
            codec.from_xml(sealing.unseal(codec.envelope_from_xml(body), [sender_key.verify_key]))
            for body in self.bodies
        ]


async def eventually(predicate: Any, timeout_s: float = 10.0, what: str = "") -> None:
    """Poll an (async or plain) predicate until it holds; `what` names it in the failure."""
    import asyncio
    import inspect

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {what or predicate}")
        await asyncio.sleep(0.02)


def signed_body(message: Any, key: SigningKey, domain: str, role: Role) -> bytes:
    from uftp import codec, sealing

    return sealing.seal(codec.to_xml(message), key, domain, role)
