"""Generic checks every receiver performs (UFTP 3.1.0 specification, message validation)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tests.support import uftp as build
from uftp import models, reasons
from uftp.models import Role, SignedMessage, with_fields
from uftp.validation import InboundContext, check_inbound

AGR_CONTEXT = InboundContext(
    own_domain=build.AGR,
    own_role=Role.AGR,
    market=build.MARKET,
    supported_versions=frozenset({"3.1.0"}),
    congestion_points=frozenset({build.CONGESTION_POINT}),
)
DSO_CONTEXT = InboundContext(
    own_domain=build.DSO,
    own_role=Role.DSO,
    market=build.MARKET,
    supported_versions=frozenset({"3.1.0"}),
)


def envelope(domain: str = build.DSO, role: Role = Role.DSO) -> SignedMessage:
    return SignedMessage(sender_domain=domain, sender_role=role, body=b"\x00" * 65)


def check(
    message: models.PayloadMessage,
    env: SignedMessage | None = None,
    ctx: InboundContext = AGR_CONTEXT,
) -> list[str]:
    """The spec reasons (without explanations) the generic checks give."""
    problems = check_inbound(env or envelope(), message, ctx, build.NOW)
    return [reasons.reason_of(r) for r in problems]


def test_a_valid_flex_request_passes() -> None:
    assert check(build.flex_request()) == []


def test_mismatch_sender_domain() -> None:
    request = build.flex_request(sender_domain="other.example.com")
    assert check(request) == [reasons.MISMATCH_SENDER_DOMAIN]


def test_role_sending_a_type_it_may_not_send() -> None:
    # A DSO does not send D-Prognoses to an AGR; a CRO does not send FlexOrders.
    prognosis = build.d_prognosis(sender_domain=build.DSO, recipient_domain=build.AGR)
    assert check(prognosis) == [reasons.INVALID_SENDER_ROLE]
    order = build.flex_order(build.flex_offer(), sender_domain=build.CRO)
    assert check(order, env=envelope(build.CRO, Role.CRO)) == [reasons.INVALID_SENDER_ROLE]


def test_unknown_recipient_domain() -> None:
    assert check(build.flex_request(recipient_domain="agr2.example.com")) == [
        reasons.UNKNOWN_RECIPIENT_DOMAIN
    ]


def test_unsupported_version() -> None:
    assert check(build.flex_request(version="2.0.0")) == [reasons.UNSUPPORTED_VERSION]


def test_isp_duration_rejected() -> None:
    request = build.flex_request(
        isp_duration="PT30M",
        isps=[models.FlexRequestISP(disposition="Requested", min_power=0, max_power=5, start=1)],
    )
    assert check(request) == [reasons.ISP_DURATION_REJECTED]


def test_timezone_with_another_utc_offset_is_rejected_but_not_another_name() -> None:
    assert check(build.flex_request(time_zone="Europe/London")) == [reasons.TIMEZONE_REJECTED]
    assert check(build.flex_request(time_zone="Europe/Brussels")) == []
    assert check(build.flex_request(time_zone="Europe/Atlantis")) == [reasons.TIMEZONE_REJECTED]


def test_period_out_of_bounds() -> None:
    yesterday = date(2030, 1, 14)
    assert check(build.flex_request(period=yesterday)) == [reasons.PERIOD_OUT_OF_BOUNDS]
    assert check(build.flex_request(period=date(2030, 1, 15))) == []  # intraday is fine
    horizon = InboundContext(**{**AGR_CONTEXT.__dict__, "period_horizon_days": 7})
    far = build.flex_request(period=date(2030, 2, 1))
    assert check(far, ctx=horizon) == [reasons.PERIOD_OUT_OF_BOUNDS]


def test_invalid_congestion_point() -> None:
    assert check(build.flex_request(congestion_point="ean.000000000000")) == [
        reasons.INVALID_CONGESTION_POINT
    ]


def test_isps_out_of_bounds_on_a_short_dst_day() -> None:
    spring = date(2030, 3, 31)  # 92 ISPs
    isps = [models.FlexRequestISP(disposition="Requested", min_power=0, max_power=5, start=93)]
    request = build.flex_request(
        period=spring, isps=isps, expiration_date_time=build.NOW + timedelta(hours=1)
    )
    assert check(request) == [reasons.ISPS_OUT_OF_BOUNDS]
    fall = date(2030, 10, 27)  # 100 ISPs
    assert check(with_fields(request, period=fall)) == []


def test_isp_conflict() -> None:
    isps = [
        models.FlexRequestISP(
            disposition="Requested", min_power=0, max_power=5, start=1, duration=4
        ),
        models.FlexRequestISP(disposition="Available", min_power=0, max_power=5, start=2),
    ]
    assert check(build.flex_request(isps=isps)) == [reasons.ISP_CONFLICT]


def test_d_prognosis_isps_may_be_zero_in_the_schema_but_not_here() -> None:
    prognosis = build.d_prognosis(isps=[models.DPrognosisISP(power=1, start=0, duration=96)])
    assert check(prognosis, env=envelope(build.AGR, Role.AGR), ctx=DSO_CONTEXT) == [
        reasons.ISPS_OUT_OF_BOUNDS
    ]


def test_each_offer_option_is_checked_on_its_own() -> None:
    option = models.FlexOfferOption(
        option_reference="B", price=1, isps=[models.PowerISP(power=-1, start=69, duration=4)]
    )
    offer = build.flex_offer()
    # Two options covering the same ISPs do not conflict: they are alternatives.
    two = with_fields(offer, offer_options=[*offer.offer_options, option])
    assert check(two, env=envelope(build.AGR, Role.AGR), ctx=DSO_CONTEXT) == []


def test_metering_is_about_a_past_day() -> None:
    env = envelope(build.AGR, Role.AGR)
    assert check(build.metering(), env=env, ctx=DSO_CONTEXT) == []
    future = build.metering(period=date(2030, 1, 16))
    assert check(future, env=env, ctx=DSO_CONTEXT) == [reasons.PERIOD_OUT_OF_BOUNDS]


def test_settlement_items_outside_the_settlement_period() -> None:
    offer = build.flex_offer(period=date(2030, 1, 3))
    order = build.flex_order(offer)
    settlement = build.flex_settlement([order], date(2029, 12, 1), date(2029, 12, 31))
    assert check(settlement) == [reasons.PERIOD_OUT_OF_BOUNDS]
    inside = build.flex_settlement([order], date(2030, 1, 1), date(2030, 1, 31))
    assert check(inside) == []


@pytest.mark.parametrize("role", [Role.AGR, Role.CRO, Role.DSO])
def test_test_messages_from_any_role(role: Role) -> None:
    message = models.TestMessage(sender_domain=build.DSO, recipient_domain=build.AGR)
    assert check(message, env=envelope(build.DSO, role)) == []


def test_several_reasons_at_once() -> None:
    request = build.flex_request(sender_domain="other.example.com", version="9.9.9")
    assert check(request) == [reasons.MISMATCH_SENDER_DOMAIN, reasons.UNSUPPORTED_VERSION]
    joined = reasons.join(check_inbound(envelope(), request, AGR_CONTEXT, build.NOW))
    assert joined.count("; ") == 1
