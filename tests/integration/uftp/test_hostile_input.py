"""Hostile input against the running AGR endpoint: each gets the spec's HTTP status or
rejection reason, nothing is stored that should not be, and the endpoint keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.ports import free_port
from uftp import codec, models, reasons, sealing, store
from uftp.models import Role
from uftp.participant import AgrParticipant
from uftp.settings import RateLimit

pytestmark = pytest.mark.integration

XML = {"Content-Type": "text/xml; charset=utf-8"}


@dataclass
class Target:
    agr: AgrParticipant
    agr_key: SigningKey
    dso_key: SigningKey
    cro_key: SigningKey
    peer: build.RecordingPeer  # the DSO's and the CRO's endpoint: where our answers go
    http: aiohttp.ClientSession

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> int:
        async with self.http.post(self.agr.url, data=body, headers=headers or XML) as response:
            await response.read()
            return response.status

    async def inbox(self) -> list[store.InboundMessage]:
        return await self.agr.database.read(lambda c: store.inbound_messages(c))

    def from_dso(self, message: models.PayloadMessage, key: SigningKey | None = None) -> bytes:
        return build.signed_body(message, key or self.dso_key, build.DSO, Role.DSO)

    async def answers(self, count: int) -> list[models.PayloadMessage]:
        await build.eventually(lambda: len(self.peer.bodies) >= count)
        return self.peer.messages(self.agr_key)


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    agr_key, dso_key, cro_key = (SigningKey.generate() for _ in range(3))
    peer_port = free_port()
    settings = build.settings(
        build.AGR,
        Role.AGR,
        agr_key,
        0,
        [
            build.peer(build.DSO, Role.DSO, dso_key, peer_port),
            build.peer(build.CRO, Role.CRO, cro_key, peer_port),
        ],
        congestion_points=frozenset({build.CONGESTION_POINT}),
        max_body_bytes=1_048_576,
    )
    agr = AgrParticipant(settings, tmp_path / "agr.sqlite")
    peer = build.RecordingPeer(peer_port)
    await peer.start()
    await agr.start()
    async with aiohttp.ClientSession() as http:
        try:
            yield Target(agr, agr_key, dso_key, cro_key, peer, http)
        finally:
            await agr.stop()
            await peer.stop()


def fresh_request(target: Target, **overrides: object) -> models.FlexRequest:
    now = target.agr.now()
    return build.flex_request(now, time_stamp=now, **overrides)  # type: ignore[arg-type]


async def still_serving(target: Target) -> None:
    assert await target.post(target.from_dso(fresh_request(target))) == 200


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<SignedMessage SenderDomain="dso.example.com" SenderRole="DSO" Body="&lol9;"/>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<SignedMessage SenderDomain="dso.example.com" SenderRole="DSO" Body="&xxe;"/>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "xxe"])
async def test_entity_attacks_in_the_envelope(target: Target, body: bytes) -> None:
    assert await target.post(body) == 400
    assert await target.inbox() == []
    await still_serving(target)


@pytest.mark.parametrize(
    "inner", [BILLION_LAUGHS.replace(b"SignedMessage", b"TestMessage"), EXTERNAL_ENTITY]
)
async def test_entity_attacks_inside_a_validly_signed_body(target: Target, inner: bytes) -> None:
    body = sealing.seal(inner, target.dso_key, build.DSO, Role.DSO)
    assert await target.post(body) == 400
    assert await target.inbox() == []


async def test_fifty_megabyte_body_is_refused_unread(target: Target) -> None:
    huge = b"<SignedMessage " + b" " * (50 * 1024 * 1024) + b"/>"
    assert await target.post(huge) == 413
    assert await target.inbox() == []
    await still_serving(target)


async def test_wrong_content_type_or_charset(target: Target) -> None:
    body = target.from_dso(fresh_request(target))
    assert await target.post(body, {"Content-Type": "application/json"}) == 400
    assert await target.post(body, {"Content-Type": "text/xml; charset=iso-8859-1"}) == 400
    assert await target.inbox() == []
    # application/xml is what the Java library also accepts.
    assert await target.post(body, {"Content-Type": "application/xml"}) == 200


async def test_missing_content_length(target: Target) -> None:
    body = target.from_dso(fresh_request(target))

    async def chunks():  # type: ignore[no-untyped-def]
        yield body

    async with target.http.post(target.agr.url, data=chunks(), headers=XML) as response:
        assert response.status == 411
    assert await target.inbox() == []


async def test_malformed_base64(target: Target) -> None:
    body = (
        b'<SignedMessage SenderDomain="dso.example.com" SenderRole="DSO" Body="***not base64***"/>'
    )
    assert await target.post(body) == 400
    assert await target.inbox() == []


async def test_signature_by_the_wrong_key(target: Target) -> None:
    assert await target.post(target.from_dso(fresh_request(target), SigningKey.generate())) == 401
    tampered = sealing.sign(codec.to_xml(fresh_request(target)), target.dso_key)
    tampered = tampered[:-10] + b"          "
    envelope = models.SignedMessage(sender_domain=build.DSO, sender_role=Role.DSO, body=tampered)
    assert await target.post(codec.to_xml(envelope)) == 401
    assert await target.inbox() == []


async def test_unknown_sender_is_a_key_lookup_failure(target: Target) -> None:
    stranger = build.signed_body(
        fresh_request(target), target.dso_key, "evil.example.com", Role.DSO
    )
    assert await target.post(stranger) == 419
    # The DSO's domain with a role it is not configured for is unknown too.
    wrong_role = build.signed_body(fresh_request(target), target.dso_key, build.DSO, Role.CRO)
    assert await target.post(wrong_role) == 419
    assert await target.inbox() == []


async def test_unparseable_or_invalid_inner_message(target: Target) -> None:
    for inner in (
        b"not xml at all",
        b"<FlexRequest/>",
        codec.to_xml(
            models.SignedMessage(sender_domain=build.DSO, sender_role=Role.DSO, body=b"x" * 80)
        ),
    ):
        body = sealing.seal(inner, target.dso_key, build.DSO, Role.DSO)
        assert await target.post(body) == 400
    assert await target.inbox() == []


async def test_inner_and_outer_sender_mismatch(target: Target) -> None:
    request = fresh_request(target, sender_domain="other.example.com")
    assert await target.post(target.from_dso(request)) == 200
    (stored,) = await target.inbox()
    assert stored.status is store.InboundStatus.REJECTED
    assert await target.agr.pending() == []
    (answer,) = await target.answers(1)
    assert isinstance(answer, models.FlexRequestResponse)
    assert answer.recipient_domain == build.DSO  # to the authenticated sender
    assert answer.result is models.AcceptedRejected.REJECTED
    assert answer.rejection_reason is not None
    assert answer.rejection_reason.startswith(reasons.MISMATCH_SENDER_DOMAIN)


async def test_role_sending_a_type_it_may_not_send(target: Target) -> None:
    offer = build.flex_offer(fresh_request(target))
    order = build.flex_order(offer, time_stamp=target.agr.now(), sender_domain=build.CRO)
    body = build.signed_body(order, target.cro_key, build.CRO, Role.CRO)
    assert await target.post(body) == 200
    assert await target.agr.pending() == []
    (answer,) = await target.answers(1)
    assert isinstance(answer, models.FlexOrderResponse)
    assert answer.recipient_domain == build.CRO
    assert answer.rejection_reason is not None
    assert reasons.reason_of(answer.rejection_reason) == reasons.INVALID_SENDER_ROLE


async def test_replayed_message_id(target: Target) -> None:
    original = fresh_request(target)
    assert await target.post(target.from_dso(original)) == 200
    # An identical repeat (a retry): success, nothing stored or answered again.
    assert await target.post(target.from_dso(original)) == 200
    # The same MessageID with other content: "Duplicate Identifier".
    replay = models.with_fields(original, revision=2)
    assert await target.post(target.from_dso(replay)) == 200
    (answer,) = await target.answers(1)
    assert isinstance(answer, models.FlexRequestResponse)
    assert answer.rejection_reason is not None
    assert reasons.reason_of(answer.rejection_reason) == reasons.DUPLICATE_IDENTIFIER
    (stored,) = await target.inbox()
    assert codec.from_xml(stored.xml) == original
    assert [m.message_id for m in await target.agr.pending()] == [original.message_id]


async def test_rate_limit(tmp_path: Path) -> None:
    key, dso_key = SigningKey.generate(), SigningKey.generate()
    settings = build.settings(
        build.AGR,
        Role.AGR,
        key,
        0,
        [build.peer(build.DSO, Role.DSO, dso_key, free_port())],
        rate_limit=RateLimit(per_second=0.5, burst=2),
    )
    agr = AgrParticipant(settings, tmp_path / "limited.sqlite")
    await agr.start()
    try:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(4):
                now = agr.now()
                body = build.signed_body(
                    build.flex_request(now, time_stamp=now), dso_key, build.DSO, Role.DSO
                )
                async with http.post(agr.url, data=body, headers=XML) as response:
                    statuses.append(response.status)
                    retry_after = response.headers.get("Retry-After")
        assert statuses == [200, 200, 429, 429]
        assert retry_after is not None
        assert int(retry_after) >= 1
        stored = await agr.database.read(lambda c: store.inbound_messages(c))
        assert len(stored) == 2
    finally:
        await agr.stop()


async def test_a_large_settlement_is_decoded_off_the_event_loop(target: Target) -> None:
    """A month of orders is hundreds of kB: valid, within the body limit, stored."""
    offers = [build.flex_offer(fresh_request(target)) for _ in range(30)]
    orders = [
        build.flex_order(
            offer,
            order_reference=f"ORD-{i}",
            isps=[models.PowerISP(power=-100 - j, start=j) for j in range(1, 97)],
        )
        for i, offer in enumerate(offers)
    ]
    period = orders[0].period
    settlement = build.flex_settlement(orders, period, period, time_stamp=target.agr.now())
    body = target.from_dso(settlement)
    assert 64 * 1024 < len(body) < 1_048_576
    assert await target.post(body) == 200
    (stored,) = await target.agr.pending()
    assert stored.message_type == "FlexSettlement"
    message = stored.message()
    assert isinstance(message, models.FlexSettlement)
    assert len(message.flex_order_settlements) == 30


async def test_a_response_to_a_message_we_never_sent(target: Target) -> None:
    answer = models.FlexOfferResponse(
        sender_domain=build.DSO,
        recipient_domain=build.AGR,
        time_stamp=target.agr.now(),
        result=models.AcceptedRejected.ACCEPTED,
        flex_offer_message_id=models.new_message_id(),
    )
    assert await target.post(target.from_dso(answer)) == 200
    (stored,) = await target.inbox()
    assert stored.status is store.InboundStatus.REJECTED
    assert stored.rejection_reason is not None
    assert stored.rejection_reason.startswith(reasons.unknown_reference("FlexOfferMessageID"))
    assert await target.agr.pending() == []
    assert target.peer.bodies == []  # responses are never answered
