"""Use case "Exchange Flexibility Orders" (UFTP validate and operate phases): the AGR checks
a FlexOrder against the FlexOffer it names and that offer's state."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tests.support import uftp as build
from uftp import reasons
from uftp.models import FlexOffer, FlexOfferOption, FlexOrder, PowerISP, with_fields
from uftp.validation import OfferState, check_direct_flex_order, check_flex_order

NOW = build.NOW
OFFER = build.flex_offer()
FRESH = OfferState()


def check(
    order: FlexOrder, offer: FlexOffer | None = OFFER, state: OfferState = FRESH
) -> list[str]:
    return [reasons.reason_of(r) for r in check_flex_order(order, offer, state, NOW)]


def test_accepted_exactly_as_offered() -> None:
    assert check(build.flex_order(OFFER)) == []


def test_accepted_with_partial_activation() -> None:
    # 80 % of the offer: every ISP and the price scale by 0.80 (the specification's validate phase).
    order = build.flex_order(
        OFFER,
        activation_factor=Decimal("0.80"),
        price=Decimal("10.0000"),
        isps=[PowerISP(power=-6400, start=69, duration=4)],
    )
    assert check(order) == []


def test_partial_activation_rounding_to_whole_watts() -> None:
    offer = build.flex_offer(
        offer_options=[
            FlexOfferOption(
                option_reference="A",
                price=Decimal("3.3333"),
                min_activation_factor=Decimal("0.10"),
                isps=[PowerISP(power=-1001, start=69)],
            )
        ]
    )
    # -1001 x 0.5 = -500.5 and 3.3333 x 0.5 = 1.66665: either rounding of the DSO is accepted.
    for power, price in ((-500, "1.6666"), (-501, "1.6667")):
        order = build.flex_order(
            offer,
            activation_factor=Decimal("0.50"),
            price=Decimal(price),
            isps=[PowerISP(power=power, start=69)],
        )
        assert check(order, offer) == []


def test_activation_below_the_minimum_is_a_power_mismatch() -> None:
    order = build.flex_order(
        OFFER,
        activation_factor=Decimal("0.40"),
        price=Decimal("5"),
        isps=[PowerISP(power=-3200, start=69, duration=4)],
    )
    assert check(order) == [reasons.POWER_MISMATCH]


def test_isp_mismatch_compares_start_duration_pairs() -> None:
    # Same ISPs 69-72, but four single elements instead of one Start=69 Duration=4.
    split = [PowerISP(power=-8000, start=i) for i in range(69, 73)]
    assert check(build.flex_order(OFFER, isps=split)) == [reasons.ISP_MISMATCH]
    shifted = [PowerISP(power=-8000, start=70, duration=4)]
    assert check(build.flex_order(OFFER, isps=shifted)) == [reasons.ISP_MISMATCH]


def test_power_mismatch() -> None:
    order = build.flex_order(OFFER, isps=[PowerISP(power=-9000, start=69, duration=4)])
    assert check(order) == [reasons.POWER_MISMATCH]


def test_price_mismatch() -> None:
    assert check(build.flex_order(OFFER, price=Decimal("12.4999"))) == [reasons.PRICE_MISMATCH]
    assert check(build.flex_order(OFFER, currency="USD")) == [reasons.PRICE_MISMATCH]


def test_prices_of_other_options_do_not_matter() -> None:
    # The Java library compares the order price with every option; the spec compares the chosen one.
    other = FlexOfferOption(
        option_reference="B", price=Decimal("99"), isps=[PowerISP(power=-1, start=69, duration=4)]
    )
    offer = with_fields(OFFER, offer_options=[*OFFER.offer_options, other])
    assert check(build.flex_order(offer), offer) == []
    order_b = build.flex_order(offer, option_reference="B", price=Decimal("99"), isps=other.isps)
    assert check(order_b, offer) == []


def test_option_reference_must_name_an_option() -> None:
    assert check(build.flex_order(OFFER, option_reference="Z")) == [reasons.INVALID_MESSAGE]
    # Without OptionReference only a single-option offer is unambiguous.
    assert check(build.flex_order(OFFER, option_reference=None)) == []
    other = FlexOfferOption(
        option_reference="B", price=Decimal("1"), isps=OFFER.offer_options[0].isps
    )
    two = with_fields(OFFER, offer_options=[*OFFER.offer_options, other])
    assert check(build.flex_order(two, option_reference=None), two) == [reasons.INVALID_MESSAGE]


def test_revoked_offer() -> None:
    assert check(build.flex_order(OFFER), state=OfferState(revoked=True)) == [
        reasons.REFERENCE_MESSAGE_REVOKED
    ]


def test_expired_offer() -> None:
    expired = with_fields(OFFER, expiration_date_time=NOW - timedelta(minutes=1))
    assert check(build.flex_order(expired), expired) == [reasons.REFERENCE_MESSAGE_EXPIRED]


def test_an_offer_is_ordered_once() -> None:
    assert check(build.flex_order(OFFER), state=OfferState(ordered=True)) == [
        reasons.OFFER_ALREADY_ORDERED
    ]


def test_unknown_offer() -> None:
    assert check(build.flex_order(OFFER), offer=None) == [
        reasons.unknown_reference("FlexOfferMessageID")
    ]


def test_offer_of_another_conversation_or_dso() -> None:
    assert check(build.flex_order(OFFER, conversation_id=build.flex_request().conversation_id)) == [
        reasons.unknown_reference("FlexOfferMessageID")
    ]
    assert check(build.flex_order(OFFER, sender_domain="dso2.example.com")) == [
        reasons.unknown_reference("FlexOfferMessageID")
    ]


def test_reference_period_and_congestion_point_mismatch() -> None:
    order = build.flex_order(OFFER, period=OFFER.period + timedelta(days=1))
    assert check(order) == [reasons.REFERENCE_PERIOD_MISMATCH]
    order = build.flex_order(OFFER, congestion_point="ean.000000000001")
    assert check(order) == [reasons.INVALID_CONGESTION_POINT]


def test_solicited_order_without_offer_reference() -> None:
    # 3.1.0 made FlexOfferMessageID optional for direct orders only (Java PR #162).
    order = build.flex_order(OFFER, flex_offer_message_id=None)
    assert check(order, offer=None) == [reasons.INVALID_MESSAGE]


def test_direct_order_needs_an_agreement() -> None:
    direct = build.flex_order(
        OFFER, flex_offer_message_id=None, unsolicited=True, contract_id="C-1"
    )
    assert check(direct, offer=None) == []
    assert check_direct_flex_order(direct, {"C-1"}) == []
    assert [reasons.reason_of(r) for r in check_direct_flex_order(direct, {"C-2"})] == [
        reasons.INVALID_MESSAGE
    ]
    solicited = build.flex_order(OFFER)
    assert check_direct_flex_order(solicited, None) != []


def test_revocation_and_expiry_are_both_reported() -> None:
    expired = with_fields(OFFER, expiration_date_time=NOW - timedelta(minutes=1))
    problems = check(build.flex_order(expired), expired, OfferState(revoked=True, ordered=True))
    assert problems == [
        reasons.REFERENCE_MESSAGE_REVOKED,
        reasons.REFERENCE_MESSAGE_EXPIRED,
        reasons.OFFER_ALREADY_ORDERED,
    ]
