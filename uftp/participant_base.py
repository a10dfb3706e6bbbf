"""What every UFTP participant does the same way, whatever holds its inbox and outbox.

uftp's own `Participant` keeps its messages in SQLite; an application may keep them elsewhere
(the fleet aggregator: PostgreSQL, shared by several processes). Both open and verify a POST
body, check it, answer it and seal what they send by these rules, so that a fix here (a
status code, a reason text, the version an answer is written in) reaches both; only the
storage and the scheduling around it differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from uftp import reasons
from uftp.codec import CodecError, envelope_from_xml, from_xml, to_xml
from uftp.http import Authorize, HttpEndpoint, Receive, TransportRejection
from uftp.models import (
    RESPONSE_TYPES,
    SPEC_VERSION,
    PayloadMessage,
    PayloadMessageResponse,
    Role,
    SignedMessage,
    TestMessage,
    reference_of,
    utc_now,
)
from uftp.participants import PeerDirectory, StaticPeerDirectory, UnknownPeer
from uftp.responses import build_response, needs_response
from uftp.sealing import SignatureError, open_sealed, seal
from uftp.settings import ParticipantSettings
from uftp.store import Admission, Admitted, InboundRecord, OutboundMessage, PreparedOutbound
from uftp.validation import InboundContext

log = logging.getLogger(__name__)

# Response type name -> the name of the request type it answers, for the "known reference"
# check.
_ANSWERS: dict[str, str] = {
    response.xml_name: request.xml_name for request, response in RESPONSE_TYPES.items()
}


@dataclass(frozen=True)
class Receipt:
    """What `receive` did with one POST body that passed the transport checks."""

    admission: Admission
    message_type: str
    message_id: str
    sender_domain: str
    inbox_id: int | None
    rejections: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return self.admission is Admission.NEW and not self.rejections


def http_endpoint(
    settings: ParticipantSettings, receive: Receive, authorize: Authorize | None = None
) -> HttpEndpoint:
    return HttpEndpoint(
        receive,
        host=settings.host,
        port=settings.port,
        path=settings.path,
        max_body_bytes=settings.max_body_bytes,
        tls=settings.tls,
        rate_limit=settings.rate_limit,
        authorize=authorize,
    )


def inbound_context(settings: ParticipantSettings) -> InboundContext:
    return InboundContext(
        own_domain=settings.domain,
        own_role=settings.role,
        market=settings.market,
        supported_versions=settings.supported_versions,
        congestion_points=settings.congestion_points,
        period_horizon_days=settings.period_horizon_days,
    )


def inbound_record(
    envelope: SignedMessage, sealed: bytes, message: PayloadMessage
) -> InboundRecord:
    return InboundRecord(
        sender_domain=envelope.sender_domain,
        sender_role=envelope.sender_role,
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        message_type=message.xml_name,
        reference_id=reference_of(message),
        sealed=sealed,
    )


def reference_problems(
    response: PayloadMessageResponse, envelope: SignedMessage, sent: OutboundMessage | None
) -> list[str]:
    """A response must answer a message we sent to its sender, in the same conversation;
    `sent` is our outbox row with the response's reference MessageID, if there is one."""
    request_type = _ANSWERS.get(response.xml_name)
    if request_type is None:
        return []
    attribute = type(response).model_fields[response.reference_field].alias or "reference"
    if (
        sent is None
        or sent.message_type != request_type
        or sent.recipient_domain != envelope.sender_domain
    ):
        return [
            reasons.explain(
                reasons.unknown_reference(attribute),
                f"we sent no {request_type} {response.reference_message_id} to "
                f"{envelope.sender_domain}",
            )
        ]
    if sent.conversation_id != response.conversation_id:
        return [
            reasons.explain(
                reasons.unknown_reference(attribute),
                f"{request_type} {sent.message_id} belongs to another ConversationID",
            )
        ]
    return []


def duplicate_identifier(message: PayloadMessage) -> list[str]:
    """The rejection of a MessageID this sender used before for other content."""
    return [
        reasons.explain(
            reasons.DUPLICATE_IDENTIFIER,
            f"MessageID {message.message_id} was already used for other content",
        )
    ]


def received(
    message: PayloadMessage, envelope: SignedMessage, admitted: Admitted, problems: Sequence[str]
) -> Receipt:
    """The receipt of a stored (or recognised) message, logged."""
    receipt = Receipt(
        admission=admitted.admission,
        message_type=message.xml_name,
        message_id=message.message_id,
        sender_domain=envelope.sender_domain,
        inbox_id=admitted.inbox_id,
        rejections=tuple(problems),
    )
    log.info(
        "received",
        extra={
            "message_type": receipt.message_type,
            "message_id": receipt.message_id,
            "sender": receipt.sender_domain,
            "admission": str(receipt.admission),
            "rejections": reasons.join(receipt.rejections),
        },
    )
    return receipt


class ParticipantBase:
    """A participant's identity and peers: opens what arrives, answers and seals what
    leaves. Subclasses add the inbox, the outbox and the loops around them."""

    def __init__(
        self,
        settings: ParticipantSettings,
        *,
        directory: PeerDirectory | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.directory = directory or StaticPeerDirectory(settings.peers)
        self._clock = clock
        self.context = inbound_context(settings)

    def now(self) -> datetime:
        return self._clock()

    # --- outbound -------------------------------------------------------------------------------

    def recipient_role(self, domain: str) -> Role:
        """The role of the peer with this domain (ambiguous if it has several: pass it)."""
        roles = [p.role for p in self.directory.peers() if p.domain == domain]
        if len(roles) != 1:
            raise UnknownPeer(domain, "?" if not roles else "/".join(map(str, roles)))
        return roles[0]

    def prepare(
        self, message: PayloadMessage, *, recipient_role: Role | None = None
    ) -> PreparedOutbound:
        """Validate against the XSD and seal; raises on an invalid message or unknown peer."""
        if message.sender_domain != self.settings.domain:
            raise ValueError(
                f"{message.xml_name} has SenderDomain {message.sender_domain}, "
                f"we are {self.settings.domain}"
            )
        role = recipient_role or self.recipient_role(message.recipient_domain)
        self.directory.peer(message.recipient_domain, role)  # raises UnknownPeer early
        xml = to_xml(message)
        return PreparedOutbound(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            message_type=message.xml_name,
            reference_id=reference_of(message),
            recipient_domain=message.recipient_domain,
            recipient_role=role,
            result=str(message.result) if isinstance(message, PayloadMessageResponse) else None,
            xml=xml,
            body=seal(xml, self.settings.signing_key, self.settings.domain, self.settings.role),
        )

    # --- answering ------------------------------------------------------------------------------

    def response(
        self,
        request: PayloadMessage,
        recipient_domain: str,
        rejections: Sequence[str],
        **fields: Any,
    ) -> PayloadMessage | None:
        """The answer to `request` (Accepted without rejections)."""
        # Answer in the request's version when we speak it (the content is 3.1.0 either way).
        supported = request.version in self.settings.supported_versions
        return build_response(
            request,
            self.settings.domain,
            rejections,
            recipient_domain=recipient_domain,
            version=request.version if supported else SPEC_VERSION,
            time_stamp=self._clock(),  # our clock, as on everything we send
            **fields,
        )

    def replies(
        self, message: PayloadMessage, envelope: SignedMessage, rejections: Sequence[str]
    ) -> list[PreparedOutbound]:
        """The automatic answer, addressed to the authenticated envelope sender."""
        if not needs_response(message):
            return []
        try:
            response = self.response(message, envelope.sender_domain, rejections)
        except ValueError:
            log.warning("cannot build a response to %s", message.xml_name, exc_info=True)
            return []
        if response is None:
            return []
        return [self.prepare(response, recipient_role=envelope.sender_role)]

    def replies_on_receipt(
        self, message: PayloadMessage, envelope: SignedMessage, rejections: Sequence[str]
    ) -> list[PreparedOutbound]:
        """What is queued together with the message itself, before any application sees it:
        its rejection, or a TestMessage's answer (the transport answers those)."""
        if rejections:
            return self.replies(message, envelope, rejections)
        if isinstance(message, TestMessage):
            return self.replies(message, envelope, ())
        return []

    # --- inbound --------------------------------------------------------------------------------

    def open(self, body: bytes) -> tuple[SignedMessage, bytes, PayloadMessage]:
        """Envelope, sealed body and verified inner message, or the HTTP status why not."""
        limit = self.settings.max_body_bytes
        try:
            envelope = envelope_from_xml(body, max_bytes=limit)
        except CodecError as exc:
            raise TransportRejection(400, f"SignedMessage: {exc}") from None
        try:
            keys = self.directory.verify_keys(envelope.sender_domain, envelope.sender_role)
        except UnknownPeer as exc:
            raise TransportRejection(419, f"sender key lookup failed: {exc}") from None
        try:
            sealed = bytes(envelope.body)
            inner = open_sealed(sealed, keys)
        except SignatureError as exc:
            raise TransportRejection(401, str(exc)) from None
        try:
            message = from_xml(inner, max_bytes=limit)
        except CodecError as exc:
            raise TransportRejection(400, f"inner message: {exc}") from None
        return envelope, sealed, message
