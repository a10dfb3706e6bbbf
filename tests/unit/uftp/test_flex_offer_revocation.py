"""Use case "Revocation Flexibility Offer", checked by the simulated DSO."""

from __future__ import annotations

from tests.support import uftp as build
from uftp import reasons
from uftp.models import FlexOfferRevocation
from uftp.validation import check_flex_offer_revocation

OFFER = build.flex_offer()


def revocation(**overrides: object) -> FlexOfferRevocation:
    fields: dict[str, object] = {
        "sender_domain": build.AGR,
        "recipient_domain": build.DSO,
        "conversation_id": OFFER.conversation_id,
        "flex_offer_message_id": OFFER.message_id,
    }
    fields.update(overrides)
    return FlexOfferRevocation(**fields)  # type: ignore[arg-type]


def test_revoking_an_open_offer_is_accepted() -> None:
    assert check_flex_offer_revocation(revocation(), OFFER, ordered=False) == []


def test_flexibility_procured() -> None:
    problems = check_flex_offer_revocation(revocation(), OFFER, ordered=True)
    assert [reasons.reason_of(p) for p in problems] == [reasons.FLEXIBILITY_PROCURED]


def test_unknown_offer_or_offer_of_another_aggregator() -> None:
    for offer, message in (
        (None, revocation()),
        (OFFER, revocation(sender_domain="agr2.example.com")),
    ):
        problems = check_flex_offer_revocation(message, offer, ordered=False)
        assert [reasons.reason_of(p) for p in problems] == [
            reasons.unknown_reference("FlexOfferMessageID")
        ]
