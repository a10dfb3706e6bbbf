"""The models hold the XSD's rules (UFTP-common.xsd simple types) and keep times in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from tests.support import uftp as build
from uftp import models


@pytest.mark.parametrize("domain", ["localhost", "Agr.example.com", "agr_1.example.com", "a.b"])
def test_internet_domain_is_lowercase_and_dotted(domain: str) -> None:
    with pytest.raises(ValidationError, match=r"sender_domain|SenderDomain"):
        models.TestMessage(sender_domain=domain, recipient_domain=build.DSO)


@pytest.mark.parametrize(
    "address",
    ["ean.871685900012636543", "ea1.2013-11.info.usef.test:001:002.090807002a&b#"],
)
def test_entity_addresses_in_both_schemes(address: str) -> None:
    assert build.flex_request(congestion_point=address).congestion_point == address


@pytest.mark.parametrize("address", ["ean.12345", "EAN.871685900012636543", "ea1.13-11.x:y"])
def test_entity_address_pattern(address: str) -> None:
    with pytest.raises(ValidationError):
        build.flex_request(congestion_point=address)


def test_message_ids_are_uuids() -> None:
    message = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
    assert message.message_id != message.conversation_id
    with pytest.raises(ValidationError):
        models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO, message_id="42")


def test_amounts_have_at_most_four_decimals() -> None:
    assert build.flex_order(build.flex_offer(), price=Decimal("12.50000")).price == Decimal("12.5")
    with pytest.raises(ValidationError, match="decimal"):
        build.flex_order(build.flex_offer(), price=Decimal("12.12345"))
    with pytest.raises(ValidationError):
        build.flex_order(build.flex_offer(), price=Decimal("NaN"))


@pytest.mark.parametrize("factor", ["0.00", "1.01", "0.555"])
def test_activation_factor_is_two_decimals_between_001_and_1(factor: str) -> None:
    with pytest.raises(ValidationError):
        build.flex_order(build.flex_offer(), activation_factor=Decimal(factor))


def test_currency_is_three_capitals() -> None:
    with pytest.raises(ValidationError):
        build.flex_offer(currency="eur")


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "UTC", "Europe/X"])
def test_time_zone_name_pattern(zone: str) -> None:
    with pytest.raises(ValidationError):
        build.flex_request(time_zone=zone)


def test_isp_duration_is_whole_minutes() -> None:
    assert build.flex_request(isp_duration="PT1H").isp_duration == timedelta(minutes=60)
    assert build.flex_request(isp_duration=timedelta(minutes=5)).isp_minutes == 5
    for bad in ("P1M", "PT90S", "PT0M", "P2D", "15"):
        with pytest.raises(ValidationError):
            build.flex_request(isp_duration=bad)


def test_times_are_utc_aware() -> None:
    local = datetime(2030, 1, 15, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    request = build.flex_request(time_stamp=local)
    assert request.time_stamp == local
    assert request.time_stamp.tzinfo is UTC
    with pytest.raises(ValidationError, match="timezone"):
        build.flex_request(expiration_date_time=datetime(2030, 1, 15, 12, 0))


def test_lists_need_at_least_one_element() -> None:
    with pytest.raises(ValidationError):
        build.flex_request(isps=[])
    with pytest.raises(ValidationError):
        build.flex_offer(offer_options=[])


def test_free_text_must_be_representable_in_xml() -> None:
    with pytest.raises(ValidationError, match="XML"):
        build.flex_order(build.flex_offer(), order_reference="ORD\x00")


def test_offer_option_lookup_by_reference() -> None:
    offer = build.flex_offer()
    assert offer.option("A") is offer.offer_options[0]
    assert offer.option(None) is offer.offer_options[0]  # a single option needs no name
    assert offer.option("B") is None


def test_roles_and_the_types_they_send() -> None:
    assert models.may_send(models.Role.DSO, models.Role.AGR, models.FlexRequest)
    assert not models.may_send(models.Role.DSO, models.Role.AGR, models.FlexOffer)
    assert not models.may_send(models.Role.CRO, models.Role.AGR, models.FlexOrder)
    assert models.may_send(models.Role.CRO, models.Role.AGR, models.TestMessage)


def test_every_request_type_has_its_response() -> None:
    for request, response in models.RESPONSE_TYPES.items():
        assert response.xml_name == request.xml_name + "Response"
        if issubclass(response, models.PayloadMessageResponse):
            assert response.reference_field in response.model_fields


def test_with_fields_revalidates() -> None:
    request = build.flex_request()
    assert models.with_fields(request, revision=2).revision == 2
    with pytest.raises(ValidationError):
        models.with_fields(request, congestion_point="nowhere")
