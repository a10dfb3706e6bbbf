"""Every request type gets a schema-valid response in its conversation, naming the request."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tests.support import uftp as build
from uftp import codec, models
from uftp.responses import build_response


def requests() -> list[models.PayloadMessage]:
    offer = build.flex_offer()
    order = build.flex_order(offer)
    return [
        models.TestMessage(sender_domain=build.DSO, recipient_domain=build.AGR),
        build.flex_request(),
        order,
        build.flex_reservation_update(),
        build.flex_settlement([order], date(2030, 1, 1), date(2030, 1, 31)),
        # Messages the DSO answers (our simulated DSO uses the same builder).
        build.d_prognosis(),
        offer,
        models.FlexOfferRevocation(
            sender_domain=build.AGR,
            recipient_domain=build.DSO,
            flex_offer_message_id=offer.message_id,
        ),
        build.metering(),
        models.DSOPortfolioQuery(
            sender_domain=build.DSO,
            recipient_domain=build.CRO,
            time_zone=build.TZ,
            period=date(2030, 1, 16),
            entity_address=build.CONGESTION_POINT,
        ),
    ]


@pytest.mark.parametrize("request_message", requests(), ids=lambda m: m.xml_name)
@pytest.mark.parametrize("rejections", [(), ("ISP conflict: ISP 5", "Invalid Message; really")])
def test_response_answers_the_request(
    request_message: models.PayloadMessage, rejections: tuple[str, ...]
) -> None:
    own = request_message.recipient_domain
    response = build_response(request_message, own, rejections)
    if isinstance(request_message, models.TestMessage) and rejections:
        assert response is None  # 3.1.0's TestMessageResponse cannot say Rejected
        return
    assert response is not None
    assert response.xml_name == request_message.xml_name + "Response"
    assert response.conversation_id == request_message.conversation_id
    assert (response.sender_domain, response.recipient_domain) == (
        own,
        request_message.sender_domain,
    )
    codec.to_xml(response)  # valid against the XSD
    if isinstance(response, models.PayloadMessageResponse):
        assert response.reference_message_id == request_message.message_id
        assert response.accepted is not bool(rejections)
        if rejections:
            # Several reasons are joined with ';', so a reason may not contain one itself.
            assert response.rejection_reason == "ISP conflict: ISP 5; Invalid Message, really"


def test_settlement_rejection_still_lists_every_item_as_disputed() -> None:
    order = build.flex_order(build.flex_offer())
    settlement = build.flex_settlement([order], date(2030, 1, 1), date(2030, 1, 31))
    response = build_response(settlement, build.AGR, ["PeriodEnd rejected"])
    assert isinstance(response, models.FlexSettlementResponse)
    assert [s.disposition for s in response.flex_order_settlement_statuses] == [
        models.AcceptedDisputed.DISPUTED
    ]


def test_responses_are_not_answered() -> None:
    response = build_response(build.flex_request(), build.AGR)
    assert response is not None
    assert build_response(response, build.DSO) is None


@pytest.mark.parametrize("request_message", requests(), ids=lambda m: m.xml_name)
def test_a_response_carries_the_senders_clock(request_message: models.PayloadMessage) -> None:
    """A party on another timeline than the wall clock (the fleet scenario's shared clock)
    stamps its responses with its own time."""
    stamp = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    response = build_response(request_message, build.AGR, time_stamp=stamp)
    if response is None:
        return  # 3.1.0 cannot express this answer (see test_response_answers_the_request)
    assert response.time_stamp == stamp
    assert codec.from_xml(codec.to_xml(response)).time_stamp == stamp
