"""Use case "Exchange Flexibility Offers" checked by the simulated DSO.
Our AGR must produce offers that pass these, so they are the outbound rules too."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tests.support import uftp as build
from uftp import reasons
from uftp.models import FlexOfferOption, FlexRequest, PowerISP
from uftp.validation import check_flex_offer

NOW = build.NOW
REQUEST = build.flex_request()


def check(
    request: FlexRequest | None = REQUEST, mutex: bool = False, **overrides: object
) -> list[str]:
    offer = build.flex_offer(REQUEST, **overrides)  # type: ignore[arg-type]
    problems = check_flex_offer(offer, request, NOW, mutex_offers_supported=mutex)
    return [reasons.reason_of(p) for p in problems]


def option(reference: str, *isps: PowerISP) -> FlexOfferOption:
    return FlexOfferOption(option_reference=reference, price=Decimal("1"), isps=isps)


def test_offer_answering_the_request_is_accepted() -> None:
    assert check() == []


def test_unsolicited_offer_without_request() -> None:
    assert check(request=None, flex_request_message_id=None, unsolicited=True) == []
    assert check(request=None, flex_request_message_id=None) == [reasons.INVALID_MESSAGE]


def test_unknown_request() -> None:
    assert check(request=None) == [reasons.unknown_reference("FlexRequestMessageID")]


def test_request_mismatch_needs_the_requested_granularity() -> None:
    # ISPs 69-72 offered as four single elements: the (Start, Duration) pair of the request
    # (69, 4) is not there, which Java DSOs reject as "Request mismatch".
    split = option("A", *(PowerISP(power=-8000, start=i) for i in range(69, 73)))
    assert check(offer_options=[split]) == [reasons.REQUEST_MISMATCH]


def test_no_mutex_offer_support() -> None:
    two = [
        option("A", PowerISP(power=-8000, start=69, duration=4)),
        option("B", PowerISP(power=-7000, start=69, duration=4)),
    ]
    assert check(offer_options=two) == [reasons.NO_MUTEX_OFFER_SUPPORT]
    assert check(offer_options=two, mutex=True) == []


def test_power_value_rejection_outside_the_requested_range() -> None:
    # Requested MaxPower is -6000: offering only -5000 is too little.
    too_little = [option("A", PowerISP(power=-5000, start=69, duration=4))]
    assert check(offer_options=too_little) == [reasons.POWER_VALUE_REJECTION]


def test_expiration_out_of_bounds() -> None:
    assert check(expiration_date_time=NOW) == [reasons.EXPIRATION_OUT_OF_BOUNDS]
    after_last_isp = NOW.replace(day=16, hour=17) + timedelta(seconds=1)
    assert check(expiration_date_time=after_last_isp) == [reasons.EXPIRATION_OUT_OF_BOUNDS]


def test_reference_mismatches() -> None:
    assert check(period=REQUEST.period + timedelta(days=1)) == [reasons.REFERENCE_PERIOD_MISMATCH]
    assert check(conversation_id=build.flex_request().conversation_id) == [
        reasons.unknown_reference("FlexRequestMessageID")
    ]
    expired = build.flex_request(expiration_date_time=NOW + timedelta(hours=1))
    offer = build.flex_offer(expired)
    later = NOW + timedelta(hours=1, minutes=5)
    problems = check_flex_offer(offer, expired, later)
    assert reasons.REFERENCE_MESSAGE_EXPIRED in [reasons.reason_of(p) for p in problems]
