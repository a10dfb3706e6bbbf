"""RejectionReason texts, exactly as the spec writes them.

Generic reasons: the UFTP 3.1.0 specification's message validation chapter; per use case: its
use-case descriptions.
A rejection may add an explanation after the reason ("ISP conflict: ISP 5 defined more than
once") and several reasons are joined with "; " (the specification allows both).
"""

from __future__ import annotations

from collections.abc import Iterable

# Envelope and metadata.
UNKNOWN_SENDER_DOMAIN = "Unknown SenderDomain"
INVALID_SENDER_ROLE = "Invalid SenderRole"
INVALID_SENDER_COMBINATION = "Invalid Sender combination"
MISMATCH_SENDER_DOMAIN = "Mismatch SenderDomain"
INVALID_SIGNED_MESSAGE = "Invalid SignedMessage"
INVALID_MESSAGE = "Invalid Message"
UNKNOWN_RECIPIENT_DOMAIN = "Unknown RecipientDomain"
BARRED_SENDER = "Barred Sender"
DUPLICATE_IDENTIFIER = "Duplicate Identifier"
ALREADY_SUBMITTED = "Already Submitted"

# ISP calendar, Period, congestion point.
ISP_DURATION_REJECTED = "ISP duration rejected"
TIMEZONE_REJECTED = "TimeZone rejected"
INVALID_CONGESTION_POINT = "Invalid CongestionPoint"
ISPS_OUT_OF_BOUNDS = "ISPs out of bounds"
ISP_CONFLICT = "ISP conflict"
PERIOD_OUT_OF_BOUNDS = "Period out of bounds"
EXPIRATION_OUT_OF_BOUNDS = "ExpirationDateTime out of bounds"

# References to other messages.
REFERENCE_PERIOD_MISMATCH = "Reference Period mismatch"
REFERENCE_MESSAGE_EXPIRED = "Reference message expired"
REFERENCE_MESSAGE_REVOKED = "Reference message revoked"

# Per use case.
LACKING_ISPS = "Lacking ISPs"  # D-Prognosis (DSO)
POWER_VALUE_REJECTION = "Power value rejection"  # D-Prognosis, FlexOffer (DSO); FRU (AGR)
SUBORDINATE_SEQUENCE_NUMBER = "Subordinate sequence number"  # D-Prognosis (DSO)
LACKING_REQUESTED_DISPOSITION = "Lacking Requested Disposition"  # FlexRequest (AGR)
REQUESTED_POWER_DISCREPANCY = "Requested Power discrepancy"  # FlexRequest (AGR)
POWER_DISCREPANCY = "Power discrepancy"  # FlexRequest (AGR)
NO_BASELINE = "No baseline"  # FlexOffer (DSO)
REQUEST_MISMATCH = "Request mismatch"  # FlexOffer (DSO)
NO_MUTEX_OFFER_SUPPORT = "No MutEx offer support"  # FlexOffer (DSO)
FLEXIBILITY_PROCURED = "Flexibility procured"  # FlexOfferRevocation (DSO)
ISP_MISMATCH = "ISP mismatch"  # FlexOrder (AGR)
POWER_MISMATCH = "Power mismatch"  # FlexOrder (AGR)
PRICE_MISMATCH = "Price mismatch"  # FlexOrder (AGR)
DEADLINE_EXPIRED = "Deadline expired"  # FlexReservationUpdate (AGR)
MISSING_SETTLEMENT_ITEMS = "Missing Settlement Items"  # FlexSettlement (AGR)
PERIOD_START_REJECTED = "PeriodStart rejected"  # FlexSettlement (AGR)
PERIOD_END_REJECTED = "PeriodEnd rejected"  # FlexSettlement (AGR)

# User-defined (the spec allows "any other reasonable cause ... clearly explained").
OFFER_ALREADY_ORDERED = "Offer already ordered"
UNSUPPORTED_VERSION = "Unsupported Version"


def unknown_reference(attribute: str) -> str:
    """``Unknown <MessageType>MessageID reference``, e.g. for ``FlexOfferMessageID``."""
    return f"Unknown {attribute} reference"


def explain(reason: str, detail: str) -> str:
    return f"{reason}: {detail}" if detail else reason


def join(rejections: Iterable[str]) -> str:
    """One RejectionReason attribute from several reasons."""
    return "; ".join(r.replace(";", ",") for r in rejections)


def reason_of(rejection: str) -> str:
    """The spec reason without its explanation (for tests and metrics)."""
    return rejection.split(": ", 1)[0]
