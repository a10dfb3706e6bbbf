"""Build the `*Response` that answers a request (pure).

Every request gets exactly one response in the same ConversationID, carrying the request's
MessageID in its per-type reference attribute (the 3.1.0 XSD's attribute names).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from uftp import reasons
from uftp.models import (
    RESPONSE_TYPES,
    SPEC_VERSION,
    AcceptedDisputed,
    AcceptedRejected,
    AGRPortfolioQuery,
    DSOPortfolioQuery,
    FlexOrderSettlementStatus,
    FlexSettlement,
    PayloadMessage,
    PayloadMessageResponse,
    TestMessageResponse,
)


def needs_response(message: PayloadMessage) -> bool:
    return type(message) in RESPONSE_TYPES


def build_response(
    request: PayloadMessage,
    own_domain: str,
    rejections: Sequence[str] = (),
    *,
    recipient_domain: str | None = None,
    version: str = SPEC_VERSION,
    time_stamp: datetime | None = None,
    **fields: Any,
) -> PayloadMessage | None:
    """The response to `request`: Accepted without rejections, else Rejected with the joined
    reasons. `fields` adds type-specific content (D-Prognosis FlexOrderStatus, FlexSettlement
    statuses, query results). None when 3.1.0 cannot express the answer: a rejected TestMessage
    (TestMessageResponse has no Result) or an AGRPortfolioQuery without results.
    """
    response_type = RESPONSE_TYPES.get(type(request))
    if response_type is None:
        return None
    common: dict[str, Any] = {
        "version": version,
        "sender_domain": own_domain,
        "recipient_domain": recipient_domain or request.sender_domain,
        "conversation_id": request.conversation_id,
    }
    if time_stamp is not None:  # the sender's clock; None: the wall clock
        common["time_stamp"] = time_stamp
    if response_type is TestMessageResponse:
        return None if rejections else TestMessageResponse(**common)
    assert issubclass(response_type, PayloadMessageResponse)
    common["result"] = AcceptedRejected.REJECTED if rejections else AcceptedRejected.ACCEPTED
    if rejections:
        common["rejection_reason"] = reasons.join(rejections)
    common[response_type.reference_field] = request.message_id
    if isinstance(request, FlexSettlement) and "flex_order_settlement_statuses" not in fields:
        # The XSD requires at least one status even in a rejection; the DSO should then treat
        # every item as open (the specification's settle phase), which Disputed says.
        fields["flex_order_settlement_statuses"] = [
            FlexOrderSettlementStatus(
                order_reference=item.order_reference,
                disposition=AcceptedDisputed.DISPUTED if rejections else AcceptedDisputed.ACCEPTED,
                dispute_reason="the settlement was rejected" if rejections else None,
            )
            for item in request.flex_order_settlements
        ]
    if isinstance(request, AGRPortfolioQuery | DSOPortfolioQuery):
        fields.setdefault("time_zone", request.time_zone)
        fields.setdefault("period", request.period)
        if isinstance(request, AGRPortfolioQuery) and "dso_views" not in fields:
            return None
    return response_type.model_validate({**common, **fields})
