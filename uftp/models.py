"""Pydantic models for every UFTP 3.1.0 message (UFTP-common/agr-dso/agr-cro/cro-dso/metering XSDs).

Python names are snake_case; each field's alias is its XML attribute or element name, so the
codec validates straight from an element's attributes. The models repeat the XSD's rules
(patterns, fraction digits, ranges, minOccurs) so a wrong value fails where it is made, not at
the peer; the codec still validates every outbound document against the official schema, which
stays the final word.

Datetimes are UTC-aware inside (``TimeStamp``, ``ExpirationDateTime``); the codec always
writes an offset (3.1.0 leaves it optional, the unreleased spec requires it, issue #48).
Sequences are tuples so a frozen message cannot be changed after it was validated or signed.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

SPEC_VERSION = "3.1.0"

# --- XSD simple types (UFTP-common.xsd, UFTP-metering.xsd) -------------------------------------

UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
INTERNET_DOMAIN_PATTERN = r"^([a-z0-9]+(-[a-z0-9]+)*\.)+[a-z]{2,}$"
ENTITY_ADDRESS_PATTERN = r"^(ea1\.[0-9]{4}-[0-9]{2}\..{1,244}:.{1,244}|ean\.[0-9]{12,34})$"
TIME_ZONE_PATTERN = r"^(Africa|America|Australia|Europe|Pacific)/[a-zA-Z0-9_/]{3,}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
SPEC_VERSION_PATTERN = r"^\d+\.\d+\.\d+$"
# The 3.1.0 XSD says E + 16 digits; real EANs have 18 and both libraries accept 18 (spec PR
# #196 is pending). We follow the official XSD, which is what validates our output.
EAN_PATTERN = r"^[Ee][0-9]{16}$"

XSD_LONG_MIN = -(2**63)
XSD_LONG_MAX = 2**63 - 1


@dataclass(frozen=True)
class FixedPlaces:
    """Annotation for the codec: write this decimal with exactly `places` fraction digits."""

    places: int


def new_message_id() -> str:
    return str(uuid.uuid4())


def utc_now() -> datetime:
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_XS_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_isp_duration(value: object) -> object:
    """xs:duration text -> timedelta, refusing years and months (they have no fixed length).

    The spec writes ISP-Duration in minutes (PT15M) but the XSD type is xs:duration, so PT1H
    is as valid as PT60M and means the same.
    """
    if not isinstance(value, str):
        return value
    match = _XS_DURATION.match(value.strip())
    if match is None or value.strip() in ("P", "PT") or value.strip().endswith("T"):
        raise ValueError(f"ISP-Duration {value!r} is not a day/time xs:duration such as PT15M")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def _whole_minutes(value: timedelta) -> timedelta:
    if value <= timedelta(0) or value % timedelta(minutes=1):
        raise ValueError(f"ISP-Duration must be a positive whole number of minutes, not {value}")
    if value > timedelta(days=1):
        raise ValueError(f"ISP-Duration {value} is longer than a day")
    return value


# Characters XML 1.0 can carry at all (the Char production); anything else cannot be sent.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str) -> str:
    bad = _NOT_XML_CHAR.search(value)
    if bad:
        raise ValueError(f"character {bad.group()!r} cannot appear in an XML document")
    return value


XmlText = Annotated[str, AfterValidator(_xml_text)]
MessageId = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
InternetDomain = Annotated[str, StringConstraints(pattern=INTERNET_DOMAIN_PATTERN)]
EntityAddress = Annotated[
    str, StringConstraints(pattern=ENTITY_ADDRESS_PATTERN), AfterValidator(_xml_text)
]
TimeZoneName = Annotated[str, StringConstraints(pattern=TIME_ZONE_PATTERN)]
Currency = Annotated[str, StringConstraints(pattern=CURRENCY_PATTERN)]
SpecVersion = Annotated[str, StringConstraints(pattern=SPEC_VERSION_PATTERN)]
Ean = Annotated[str, StringConstraints(pattern=EAN_PATTERN)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
IspDuration = Annotated[
    timedelta, BeforeValidator(parse_isp_duration), AfterValidator(_whole_minutes)
]
# CurrencyAmountType: xs:decimal with at most 4 fraction digits.
Amount = Annotated[Decimal, Field(decimal_places=4, allow_inf_nan=False), FixedPlaces(4)]
# ActivationFactorType: 0.01..1.00, 2 fraction digits.
ActivationFactor = Annotated[
    Decimal,
    Field(ge=Decimal("0.01"), le=Decimal("1.00"), decimal_places=2, allow_inf_nan=False),
    FixedPlaces(2),
]
MeteringValue = Annotated[Decimal, Field(allow_inf_nan=False)]
Long = Annotated[int, Field(ge=XSD_LONG_MIN, le=XSD_LONG_MAX)]
PositiveInteger = Annotated[int, Field(ge=1)]


class Role(StrEnum):
    AGR = "AGR"
    CRO = "CRO"
    DSO = "DSO"


class AcceptedRejected(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class AvailableRequested(StrEnum):
    AVAILABLE = "Available"
    REQUESTED = "Requested"


class AcceptedDisputed(StrEnum):
    ACCEPTED = "Accepted"
    DISPUTED = "Disputed"


class RedispatchBy(StrEnum):
    AGR = "AGR"
    DSO = "DSO"


class MeteringProfileType(StrEnum):
    POWER = "Power"
    IMPORT_ENERGY = "ImportEnergy"
    EXPORT_ENERGY = "ExportEnergy"
    IMPORT_METER_READING = "ImportMeterReading"
    EXPORT_METER_READING = "ExportMeterReading"


class MeteringUnit(StrEnum):
    KW = "kW"
    KWH = "kWh"


class UftpModel(BaseModel):
    """Base of every element: frozen, no unknown fields, validated by name or XML alias."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    xml_name: ClassVar[str] = ""


# --- envelope and metadata (UFTP-common.xsd) ---------------------------------------------------


class SignedMessage(UftpModel):
    """The transport envelope; `body` is the libsodium ``crypto_sign`` output (signature ‖ XML)."""

    xml_name: ClassVar[str] = "SignedMessage"

    sender_domain: InternetDomain = Field(alias="SenderDomain")
    sender_role: Role = Field(alias="SenderRole")
    body: bytes = Field(alias="Body", min_length=1)


class PayloadMessage(UftpModel):
    """Metadata every inner message carries (PayloadMessageType)."""

    version: SpecVersion = Field(default=SPEC_VERSION, alias="Version")
    sender_domain: InternetDomain = Field(alias="SenderDomain")
    recipient_domain: InternetDomain = Field(alias="RecipientDomain")
    time_stamp: UtcDatetime = Field(default_factory=utc_now, alias="TimeStamp")
    message_id: MessageId = Field(default_factory=new_message_id, alias="MessageID")
    conversation_id: MessageId = Field(default_factory=new_message_id, alias="ConversationID")


# The brief's name for "any inner message".
Message = PayloadMessage


class PayloadMessageResponse(PayloadMessage):
    """PayloadMessageResponseType; `reference_field` names the attribute holding the answered id."""

    reference_field: ClassVar[str] = ""

    result: AcceptedRejected = Field(alias="Result")
    rejection_reason: XmlText | None = Field(default=None, alias="RejectionReason")

    @property
    def reference_message_id(self) -> str:
        value: str = getattr(self, self.reference_field)
        return value

    @property
    def accepted(self) -> bool:
        return self.result is AcceptedRejected.ACCEPTED


class TestMessage(PayloadMessage):
    __test__ = False  # not a pytest class
    xml_name: ClassVar[str] = "TestMessage"


class TestMessageResponse(PayloadMessage):
    """3.1.0: metadata only, no Result and no reference (spec issue #55 adds both later)."""

    __test__ = False
    xml_name: ClassVar[str] = "TestMessageResponse"


class FlexMessage(PayloadMessage):
    """FlexMessageType: the ISP calendar of the message is Period + TimeZone + ISP-Duration."""

    isp_duration: IspDuration = Field(alias="ISP-Duration")
    time_zone: TimeZoneName = Field(alias="TimeZone")
    period: date = Field(alias="Period")
    congestion_point: EntityAddress = Field(alias="CongestionPoint")

    @property
    def isp_minutes(self) -> int:
        return int(self.isp_duration.total_seconds()) // 60


# --- ISP elements -------------------------------------------------------------------------------


class DPrognosisISP(UftpModel):
    # D-PrognosisISPType uses xs:integer for Start and Duration (not positiveInteger like the
    # other ISP types), so 0 or negative values are schema-valid and only fail the bounds check.
    xml_name: ClassVar[str] = "ISP"

    power: int = Field(alias="Power")
    start: int = Field(alias="Start")
    duration: int = Field(default=1, alias="Duration")


class PowerISP(UftpModel):
    """ISP with a power: FlexOffer option, FlexOrder and FlexReservationUpdate ISPs."""

    xml_name: ClassVar[str] = "ISP"

    power: int = Field(alias="Power")
    start: PositiveInteger = Field(alias="Start")
    duration: PositiveInteger = Field(default=1, alias="Duration")


FlexOfferOptionISP = PowerISP
FlexOrderISP = PowerISP
FlexReservationUpdateISP = PowerISP


class FlexRequestISP(UftpModel):
    xml_name: ClassVar[str] = "ISP"

    # Optional in the XSD; an ISP without it is not Requested.
    disposition: AvailableRequested | None = Field(default=None, alias="Disposition")
    min_power: int = Field(alias="MinPower")
    max_power: int = Field(alias="MaxPower")
    start: PositiveInteger = Field(alias="Start")
    duration: PositiveInteger = Field(default=1, alias="Duration")

    @property
    def requested(self) -> bool:
        return self.disposition is AvailableRequested.REQUESTED


# --- AGR <-> DSO (UFTP-agr-dso.xsd) -------------------------------------------------------------


class DPrognosis(FlexMessage):
    xml_name: ClassVar[str] = "D-Prognosis"

    revision: Long = Field(alias="Revision")
    isps: tuple[DPrognosisISP, ...] = Field(alias="ISP", min_length=1)


class FlexOrderStatus(UftpModel):
    xml_name: ClassVar[str] = "FlexOrderStatus"

    flex_order_message_id: MessageId = Field(alias="FlexOrderMessageID")
    is_validated: bool = Field(alias="IsValidated")


class DPrognosisResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "D-PrognosisResponse"
    reference_field: ClassVar[str] = "d_prognosis_message_id"

    d_prognosis_message_id: MessageId = Field(alias="D-PrognosisMessageID")
    flex_order_statuses: tuple[FlexOrderStatus, ...] = Field(default=(), alias="FlexOrderStatus")


class FlexReservationUpdate(FlexMessage):
    xml_name: ClassVar[str] = "FlexReservationUpdate"

    contract_id: XmlText = Field(alias="ContractID")
    reference: XmlText = Field(alias="Reference")
    isps: tuple[PowerISP, ...] = Field(alias="ISP", min_length=1)


class FlexReservationUpdateResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexReservationUpdateResponse"
    reference_field: ClassVar[str] = "flex_reservation_update_message_id"

    flex_reservation_update_message_id: MessageId = Field(alias="FlexReservationUpdateMessageID")


class FlexRequest(FlexMessage):
    xml_name: ClassVar[str] = "FlexRequest"

    revision: Long = Field(alias="Revision")
    expiration_date_time: UtcDatetime = Field(alias="ExpirationDateTime")
    contract_id: XmlText | None = Field(default=None, alias="ContractID")
    service_type: XmlText | None = Field(default=None, alias="ServiceType")
    isps: tuple[FlexRequestISP, ...] = Field(alias="ISP", min_length=1)


class FlexRequestResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexRequestResponse"
    reference_field: ClassVar[str] = "flex_request_message_id"

    flex_request_message_id: MessageId = Field(alias="FlexRequestMessageID")


class FlexOfferOption(UftpModel):
    xml_name: ClassVar[str] = "OfferOption"

    # Required by the XSD even when the offer has a single option.
    option_reference: XmlText = Field(alias="OptionReference")
    # Total for the option, not per ISP.
    price: Amount = Field(alias="Price")
    min_activation_factor: ActivationFactor = Field(
        default=Decimal("1.00"), alias="MinActivationFactor"
    )
    isps: tuple[PowerISP, ...] = Field(alias="ISP", min_length=1)


class FlexOffer(FlexMessage):
    xml_name: ClassVar[str] = "FlexOffer"

    expiration_date_time: UtcDatetime = Field(alias="ExpirationDateTime")
    unsolicited: bool | None = Field(default=None, alias="Unsolicited")
    flex_request_message_id: MessageId | None = Field(default=None, alias="FlexRequestMessageID")
    contract_id: XmlText | None = Field(default=None, alias="ContractID")
    d_prognosis_message_id: MessageId | None = Field(default=None, alias="D-PrognosisMessageID")
    baseline_reference: XmlText | None = Field(default=None, alias="BaselineReference")
    currency: Currency = Field(alias="Currency")
    offer_options: tuple[FlexOfferOption, ...] = Field(alias="OfferOption", min_length=1)

    def option(self, reference: str | None) -> FlexOfferOption | None:
        """The option a FlexOrder names; without a name only a single-option offer qualifies."""
        if reference is None:
            return self.offer_options[0] if len(self.offer_options) == 1 else None
        return next((o for o in self.offer_options if o.option_reference == reference), None)


class FlexOfferResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexOfferResponse"
    reference_field: ClassVar[str] = "flex_offer_message_id"

    flex_offer_message_id: MessageId = Field(alias="FlexOfferMessageID")


class FlexOfferRevocation(PayloadMessage):
    xml_name: ClassVar[str] = "FlexOfferRevocation"

    flex_offer_message_id: MessageId = Field(alias="FlexOfferMessageID")


class FlexOfferRevocationResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexOfferRevocationResponse"
    reference_field: ClassVar[str] = "flex_offer_revocation_message_id"

    flex_offer_revocation_message_id: MessageId = Field(alias="FlexOfferRevocationMessageID")


class FlexOrder(FlexMessage):
    xml_name: ClassVar[str] = "FlexOrder"

    unsolicited: bool | None = Field(default=None, alias="Unsolicited")
    # Optional since 3.1.0 (direct orders); required in 3.0.0.
    flex_offer_message_id: MessageId | None = Field(default=None, alias="FlexOfferMessageID")
    service_type: XmlText | None = Field(default=None, alias="ServiceType")
    contract_id: XmlText | None = Field(default=None, alias="ContractID")
    d_prognosis_message_id: MessageId | None = Field(default=None, alias="D-PrognosisMessageID")
    baseline_reference: XmlText | None = Field(default=None, alias="BaselineReference")
    price: Amount = Field(alias="Price")
    currency: Currency = Field(alias="Currency")
    order_reference: XmlText = Field(alias="OrderReference")
    option_reference: XmlText | None = Field(default=None, alias="OptionReference")
    activation_factor: ActivationFactor = Field(default=Decimal("1.00"), alias="ActivationFactor")
    isps: tuple[PowerISP, ...] = Field(alias="ISP", min_length=1)


class FlexOrderResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexOrderResponse"
    reference_field: ClassVar[str] = "flex_order_message_id"

    flex_order_message_id: MessageId = Field(alias="FlexOrderMessageID")


class FlexOrderSettlementISP(UftpModel):
    xml_name: ClassVar[str] = "ISP"

    start: PositiveInteger = Field(alias="Start")
    duration: PositiveInteger = Field(default=1, alias="Duration")
    baseline_power: int = Field(alias="BaselinePower")
    ordered_flex_power: int = Field(alias="OrderedFlexPower")
    actual_power: int = Field(alias="ActualPower")
    delivered_flex_power: int = Field(alias="DeliveredFlexPower")
    power_deficiency: int = Field(default=0, alias="PowerDeficiency")


class FlexOrderSettlement(UftpModel):
    xml_name: ClassVar[str] = "FlexOrderSettlement"

    order_reference: XmlText | None = Field(default=None, alias="OrderReference")
    period: date = Field(alias="Period")
    contract_id: XmlText | None = Field(default=None, alias="ContractID")
    d_prognosis_message_id: MessageId | None = Field(default=None, alias="D-PrognosisMessageID")
    baseline_reference: XmlText | None = Field(default=None, alias="BaselineReference")
    congestion_point: EntityAddress = Field(alias="CongestionPoint")
    price: Amount = Field(alias="Price")
    penalty: Amount = Field(default=Decimal(0), alias="Penalty")
    net_settlement: Amount = Field(alias="NetSettlement")
    isps: tuple[FlexOrderSettlementISP, ...] = Field(alias="ISP", min_length=1)


class ContractSettlementISP(UftpModel):
    xml_name: ClassVar[str] = "ISP"

    start: PositiveInteger = Field(alias="Start")
    duration: PositiveInteger = Field(default=1, alias="Duration")
    reserved_power: int = Field(alias="ReservedPower")
    requested_power: int | None = Field(default=None, alias="RequestedPower")
    available_power: int | None = Field(default=None, alias="AvailablePower")
    offered_power: int | None = Field(default=None, alias="OfferedPower")
    ordered_power: int | None = Field(default=None, alias="OrderedPower")


class ContractSettlementPeriod(UftpModel):
    xml_name: ClassVar[str] = "Period"

    period: date = Field(alias="Period")
    isps: tuple[ContractSettlementISP, ...] = Field(alias="ISP", min_length=1)


class ContractSettlement(UftpModel):
    xml_name: ClassVar[str] = "ContractSettlement"

    contract_id: XmlText | None = Field(default=None, alias="ContractID")
    periods: tuple[ContractSettlementPeriod, ...] = Field(alias="Period", min_length=1)


class FlexSettlement(PayloadMessage):
    """3.1.0 quirk (spec issue #53): the XSD derives it from the *response* base type, so a
    schema-valid FlexSettlement carries `Result`, and both item lists are minOccurs 1."""

    xml_name: ClassVar[str] = "FlexSettlement"

    result: AcceptedRejected = Field(default=AcceptedRejected.ACCEPTED, alias="Result")
    rejection_reason: XmlText | None = Field(default=None, alias="RejectionReason")
    period_start: date = Field(alias="PeriodStart")
    period_end: date = Field(alias="PeriodEnd")
    currency: Currency = Field(alias="Currency")
    flex_order_settlements: tuple[FlexOrderSettlement, ...] = Field(
        alias="FlexOrderSettlement", min_length=1
    )
    contract_settlements: tuple[ContractSettlement, ...] = Field(
        alias="ContractSettlement", min_length=1
    )


class FlexOrderSettlementStatus(UftpModel):
    xml_name: ClassVar[str] = "FlexOrderSettlementStatus"

    order_reference: XmlText | None = Field(default=None, alias="OrderReference")
    disposition: AcceptedDisputed = Field(alias="Disposition")
    dispute_reason: XmlText | None = Field(default=None, alias="DisputeReason")


class FlexSettlementResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "FlexSettlementResponse"
    reference_field: ClassVar[str] = "flex_settlement_message_id"

    flex_settlement_message_id: MessageId = Field(alias="FlexSettlementMessageID")
    flex_order_settlement_statuses: tuple[FlexOrderSettlementStatus, ...] = Field(
        alias="FlexOrderSettlementStatus", min_length=1
    )


# --- Metering (UFTP-metering.xsd) ---------------------------------------------------------------


class MeteringISP(UftpModel):
    xml_name: ClassVar[str] = "ISP"

    start: int = Field(alias="Start")
    value: MeteringValue = Field(alias="Value")


class MeteringProfile(UftpModel):
    xml_name: ClassVar[str] = "Profile"

    profile_type: MeteringProfileType = Field(alias="ProfileType")
    unit: MeteringUnit = Field(alias="Unit")
    isps: tuple[MeteringISP, ...] = Field(alias="ISP", min_length=1)


class Metering(PayloadMessage):
    """Not a FlexMessage: no CongestionPoint, but its own ISP calendar and a connection EAN."""

    xml_name: ClassVar[str] = "Metering"

    revision: Long = Field(alias="Revision")
    isp_duration: IspDuration = Field(alias="ISP-Duration")
    time_zone: TimeZoneName = Field(alias="TimeZone")
    currency: Currency | None = Field(default=None, alias="Currency")
    period: date = Field(alias="Period")
    ean: Ean = Field(alias="EAN")
    profiles: tuple[MeteringProfile, ...] = Field(alias="Profile", min_length=1)

    @property
    def isp_minutes(self) -> int:
        return int(self.isp_duration.total_seconds()) // 60


class MeteringResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "MeteringResponse"
    reference_field: ClassVar[str] = "metering_message_id"

    metering_message_id: MessageId = Field(alias="MeteringMessageID")


# --- AGR <-> CRO (UFTP-agr-cro.xsd) -------------------------------------------------------------


class AGRPortfolioUpdateConnection(UftpModel):
    xml_name: ClassVar[str] = "Connection"

    entity_address: EntityAddress = Field(alias="EntityAddress")
    start_period: date = Field(alias="StartPeriod")
    end_period: date | None = Field(default=None, alias="EndPeriod")


class AGRPortfolioUpdate(PayloadMessage):
    xml_name: ClassVar[str] = "AGRPortfolioUpdate"

    time_zone: TimeZoneName = Field(alias="TimeZone")
    connections: tuple[AGRPortfolioUpdateConnection, ...] = Field(alias="Connection", min_length=1)


class AGRPortfolioUpdateResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "AGRPortfolioUpdateResponse"
    reference_field: ClassVar[str] = "agr_portfolio_update_message_id"

    agr_portfolio_update_message_id: MessageId = Field(alias="AGRPortfolioUpdateMessageID")


class AGRPortfolioQuery(PayloadMessage):
    xml_name: ClassVar[str] = "AGRPortfolioQuery"

    time_zone: TimeZoneName = Field(alias="TimeZone")
    period: date = Field(alias="Period")


class PortfolioConnection(UftpModel):
    xml_name: ClassVar[str] = "Connection"

    entity_address: EntityAddress = Field(alias="EntityAddress")


class AGRPortfolioQueryCongestionPoint(UftpModel):
    xml_name: ClassVar[str] = "CongestionPoint"

    entity_address: EntityAddress = Field(alias="EntityAddress")
    mutex_offers_supported: bool = Field(alias="MutexOffersSupported")
    day_ahead_redispatch_by: RedispatchBy = Field(alias="DayAheadRedispatchBy")
    # Absent: no intraday trading at this congestion point.
    intraday_redispatch_by: RedispatchBy | None = Field(default=None, alias="IntradayRedispatchBy")
    connections: tuple[PortfolioConnection, ...] = Field(alias="Connection", min_length=1)


class AGRPortfolioQueryDSOPortfolio(UftpModel):
    xml_name: ClassVar[str] = "DSO-Portfolio"

    dso_domain: InternetDomain = Field(alias="DSO-Domain")
    congestion_points: tuple[AGRPortfolioQueryCongestionPoint, ...] = Field(
        alias="CongestionPoint", min_length=1
    )


class AGRPortfolioQueryDSOView(UftpModel):
    xml_name: ClassVar[str] = "DSO-View"

    dso_portfolios: tuple[AGRPortfolioQueryDSOPortfolio, ...] = Field(
        alias="DSO-Portfolio", min_length=1
    )
    # Connections registered by the AGR that no DSO has allocated.
    connections: tuple[PortfolioConnection, ...] = Field(default=(), alias="Connection")


class AGRPortfolioQueryResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "AGRPortfolioQueryResponse"
    reference_field: ClassVar[str] = "agr_portfolio_query_message_id"

    time_zone: TimeZoneName = Field(alias="TimeZone")
    agr_portfolio_query_message_id: MessageId = Field(alias="AGRPortfolioQueryMessageID")
    period: date = Field(alias="Period")
    dso_views: tuple[AGRPortfolioQueryDSOView, ...] = Field(alias="DSO-View", min_length=1)


# --- CRO <-> DSO (UFTP-cro-dso.xsd) -------------------------------------------------------------


# DSOPortfolioUpdateConnectionType has the same attributes as AGRPortfolioUpdateConnection.
DSOPortfolioUpdateConnection = AGRPortfolioUpdateConnection


class DSOPortfolioUpdateCongestionPoint(UftpModel):
    xml_name: ClassVar[str] = "CongestionPoint"

    entity_address: EntityAddress = Field(alias="EntityAddress")
    start_period: date = Field(alias="StartPeriod")
    end_period: date | None = Field(default=None, alias="EndPeriod")
    mutex_offers_supported: bool = Field(alias="MutexOffersSupported")
    day_ahead_redispatch_by: RedispatchBy = Field(alias="DayAheadRedispatchBy")
    intraday_redispatch_by: RedispatchBy | None = Field(default=None, alias="IntradayRedispatchBy")
    connections: tuple[DSOPortfolioUpdateConnection, ...] = Field(alias="Connection", min_length=1)


class DSOPortfolioUpdate(PayloadMessage):
    xml_name: ClassVar[str] = "DSOPortfolioUpdate"

    time_zone: TimeZoneName = Field(alias="TimeZone")
    congestion_points: tuple[DSOPortfolioUpdateCongestionPoint, ...] = Field(
        alias="CongestionPoint", min_length=1
    )


class DSOPortfolioUpdateResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "DSOPortfolioUpdateResponse"
    # The XSD really names it DSOPortfolioUpdateResponseMessageID.
    reference_field: ClassVar[str] = "dso_portfolio_update_response_message_id"

    dso_portfolio_update_response_message_id: MessageId = Field(
        alias="DSOPortfolioUpdateResponseMessageID"
    )


class DSOPortfolioQuery(PayloadMessage):
    xml_name: ClassVar[str] = "DSOPortfolioQuery"

    time_zone: TimeZoneName = Field(alias="TimeZone")
    period: date = Field(alias="Period")
    entity_address: EntityAddress = Field(alias="EntityAddress")


class DSOPortfolioQueryConnection(UftpModel):
    xml_name: ClassVar[str] = "Connection"

    entity_address: EntityAddress = Field(alias="EntityAddress")
    agr_domain: InternetDomain | None = Field(default=None, alias="AGR-Domain")


class DSOPortfolioQueryCongestionPoint(UftpModel):
    xml_name: ClassVar[str] = "CongestionPoint"

    entity_address: EntityAddress = Field(alias="EntityAddress")
    connections: tuple[DSOPortfolioQueryConnection, ...] = Field(alias="Connection", min_length=1)


class DSOPortfolioQueryResponse(PayloadMessageResponse):
    xml_name: ClassVar[str] = "DSOPortfolioQueryResponse"
    reference_field: ClassVar[str] = "dso_portfolio_query_message_id"

    congestion_point: DSOPortfolioQueryCongestionPoint | None = Field(
        default=None, alias="CongestionPoint"
    )
    dso_portfolio_query_message_id: MessageId = Field(alias="DSOPortfolioQueryMessageID")
    time_zone: TimeZoneName = Field(alias="TimeZone")
    period: date = Field(alias="Period")


# --- catalogue ----------------------------------------------------------------------------------

MESSAGE_TYPES: dict[str, type[PayloadMessage]] = {
    cls.xml_name: cls
    for cls in (
        TestMessage,
        TestMessageResponse,
        DPrognosis,
        DPrognosisResponse,
        FlexReservationUpdate,
        FlexReservationUpdateResponse,
        FlexRequest,
        FlexRequestResponse,
        FlexOffer,
        FlexOfferResponse,
        FlexOfferRevocation,
        FlexOfferRevocationResponse,
        FlexOrder,
        FlexOrderResponse,
        FlexSettlement,
        FlexSettlementResponse,
        Metering,
        MeteringResponse,
        AGRPortfolioUpdate,
        AGRPortfolioUpdateResponse,
        AGRPortfolioQuery,
        AGRPortfolioQueryResponse,
        DSOPortfolioUpdate,
        DSOPortfolioUpdateResponse,
        DSOPortfolioQuery,
        DSOPortfolioQueryResponse,
    )
}

# Request type -> the response type that answers it (TestMessageResponse has no Result in 3.1.0).
RESPONSE_TYPES: dict[type[PayloadMessage], type[PayloadMessage]] = {
    TestMessage: TestMessageResponse,
    DPrognosis: DPrognosisResponse,
    FlexReservationUpdate: FlexReservationUpdateResponse,
    FlexRequest: FlexRequestResponse,
    FlexOffer: FlexOfferResponse,
    FlexOfferRevocation: FlexOfferRevocationResponse,
    FlexOrder: FlexOrderResponse,
    FlexSettlement: FlexSettlementResponse,
    Metering: MeteringResponse,
    AGRPortfolioUpdate: AGRPortfolioUpdateResponse,
    AGRPortfolioQuery: AGRPortfolioQueryResponse,
    DSOPortfolioUpdate: DSOPortfolioUpdateResponse,
    DSOPortfolioQuery: DSOPortfolioQueryResponse,
}


# Which role sends which message type (spec §4 / the use cases), used to reject a role sending a
# type it may not send. Keyed by (sender role, recipient role).
def _kinds(*types: type[PayloadMessage]) -> frozenset[type[PayloadMessage]]:
    return frozenset(types)


SENDABLE: dict[tuple[Role, Role], frozenset[type[PayloadMessage]]] = {
    (Role.AGR, Role.DSO): _kinds(
        DPrognosis,
        FlexOffer,
        FlexOfferRevocation,
        Metering,
        FlexRequestResponse,
        FlexOrderResponse,
        FlexReservationUpdateResponse,
        FlexSettlementResponse,
    ),
    (Role.DSO, Role.AGR): _kinds(
        FlexRequest,
        FlexOrder,
        FlexReservationUpdate,
        FlexSettlement,
        DPrognosisResponse,
        FlexOfferResponse,
        FlexOfferRevocationResponse,
        MeteringResponse,
    ),
    (Role.AGR, Role.CRO): _kinds(AGRPortfolioUpdate, AGRPortfolioQuery),
    (Role.CRO, Role.AGR): _kinds(AGRPortfolioUpdateResponse, AGRPortfolioQueryResponse),
    (Role.DSO, Role.CRO): _kinds(DSOPortfolioUpdate, DSOPortfolioQuery),
    (Role.CRO, Role.DSO): _kinds(DSOPortfolioUpdateResponse, DSOPortfolioQueryResponse),
}
_ANY_TO_ANY = _kinds(TestMessage, TestMessageResponse)


def may_send(sender: Role, recipient: Role, message_type: type[PayloadMessage]) -> bool:
    if message_type in _ANY_TO_ANY:
        return True
    return message_type in SENDABLE.get((sender, recipient), _kinds())


def reference_of(message: PayloadMessage) -> str | None:
    """The MessageID this message refers to: the answered message for a response, the offer for
    an order or revocation, the request for an offer. Used to correlate conversations."""
    if isinstance(message, PayloadMessageResponse):
        return message.reference_message_id
    if isinstance(message, FlexOrder | FlexOfferRevocation):
        return message.flex_offer_message_id
    if isinstance(message, FlexOffer):
        return message.flex_request_message_id
    return None


P = TypeVar("P", bound=PayloadMessage)


def with_fields(message: P, **changes: Any) -> P:
    """A validated copy with some fields changed (`model_copy` would skip validation)."""
    data = message.model_dump()
    data.update(changes)
    return type(message).model_validate(data)
