"""The life cycle of the AGR's trade records: their statuses and the one table of transitions.

A record's status is the agent's memory of where a UFTP conversation stands, and money rests on
it: an offer that is "ordered" is delivered and settled, one that is "revoked" must never be
ordered. So statuses change only through `TRANSITIONS`, each change is an event naming the
statuses it may start from, and the store applies it as a guarded UPDATE that refuses any other
predecessor (`agent.storage.trades.apply`). A terminal status is never left. The values are the
strings stored (and shown by the status API and metrics) since the first schema.

Pure: no I/O, so the table is property-tested on its own and against SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class PrognosisStatus(StrEnum):
    """A D-Prognosis revision we sent, and the DSO's D-PrognosisResponse to it."""

    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RequestStatus(StrEnum):
    """Our verdict on a FlexRequest (the FlexRequestResponse), fixed when it arrives."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class OfferState(StrEnum):
    """Where answering an accepted FlexRequest stands (`flex_request.offer_state`)."""

    TODO = "todo"  # accepted; its FlexOffer is still to be sized (resumes after a restart)
    OFFERED = "offered"  # a FlexOffer was queued
    NONE = "none"  # no offer, the record's reason says why
    NOT_APPLICABLE = "n/a"  # the request was rejected


class OfferStatus(StrEnum):
    """A FlexOffer we sent."""

    SENT = "sent"
    ACCEPTED = "accepted"  # the DSO's FlexOfferResponse accepted it
    REJECTED = "rejected"  # the DSO's FlexOfferResponse rejected it
    ORDERED = "ordered"  # we accepted a FlexOrder for it
    REVOKED = "revoked"  # we queued a FlexOfferRevocation
    EXPIRED = "expired"  # its ExpirationDateTime passed while it was open


class OrderStatus(StrEnum):
    """Our verdict on a FlexOrder (the FlexOrderResponse), fixed when it arrives."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class SettlementResult(StrEnum):
    """Our FlexSettlementResponse's result (the spec's spelling, as stored)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class Record:
    """A kind of record: its table, the column naming one record and its status column."""

    table: str
    key: str
    column: str
    statuses: tuple[str, ...]

    def __str__(self) -> str:
        return self.table if self.column == "status" else f"{self.table}.{self.column}"


PROGNOSIS = Record("prognosis", "message_id", "status", tuple(PrognosisStatus))
FLEX_REQUEST = Record("flex_request", "message_id", "status", tuple(RequestStatus))
REQUEST_OFFER = Record("flex_request", "message_id", "offer_state", tuple(OfferState))
FLEX_OFFER = Record("flex_offer", "message_id", "status", tuple(OfferStatus))
FLEX_ORDER = Record("flex_order", "message_id", "status", tuple(OrderStatus))
FLEX_SETTLEMENT = Record("flex_settlement", "message_id", "result", tuple(SettlementResult))

RECORDS = (PROGNOSIS, FLEX_REQUEST, REQUEST_OFFER, FLEX_OFFER, FLEX_ORDER, FLEX_SETTLEMENT)


class Event(StrEnum):
    PROGNOSIS_QUEUED = "prognosis queued"
    PROGNOSIS_ACCEPTED = "D-PrognosisResponse accepted"
    PROGNOSIS_REJECTED = "D-PrognosisResponse rejected"
    REQUEST_ACCEPTED = "FlexRequest accepted"
    REQUEST_REJECTED = "FlexRequest rejected"
    REQUEST_OFFERED = "FlexOffer queued for the request"
    REQUEST_NOT_OFFERED = "no FlexOffer for the request"
    OFFER_QUEUED = "FlexOffer queued"
    OFFER_ACCEPTED = "FlexOfferResponse accepted"
    OFFER_REJECTED = "FlexOfferResponse rejected"
    OFFER_ORDERED = "FlexOrder accepted for the offer"
    OFFER_REVOKED = "FlexOfferRevocation queued"
    OFFER_EXPIRED = "FlexOffer expired"
    ORDER_ACCEPTED = "FlexOrder accepted"
    ORDER_REJECTED = "FlexOrder rejected"
    SETTLEMENT_ACCEPTED = "FlexSettlement accepted"
    SETTLEMENT_REJECTED = "FlexSettlement rejected"


@dataclass(frozen=True)
class Transition:
    """`event` takes a `record` from one of `sources` to `target`; no sources: it creates one."""

    record: Record
    sources: frozenset[str]
    target: str

    @property
    def creates(self) -> bool:
        return not self.sources


def _t(record: Record, sources: tuple[str, ...], target: str) -> Transition:
    if target not in record.statuses or not set(sources) <= set(record.statuses):
        raise ValueError(f"{record}: {sources} -> {target} names an unknown status")
    return Transition(record, frozenset(sources), target)


_OPEN = (OfferStatus.SENT, OfferStatus.ACCEPTED)

TRANSITIONS: Mapping[Event, Transition] = {
    # Each revision is a record of its own; the DSO answers it once.
    Event.PROGNOSIS_QUEUED: _t(PROGNOSIS, (), PrognosisStatus.SENT),
    Event.PROGNOSIS_ACCEPTED: _t(PROGNOSIS, (PrognosisStatus.SENT,), PrognosisStatus.ACCEPTED),
    Event.PROGNOSIS_REJECTED: _t(PROGNOSIS, (PrognosisStatus.SENT,), PrognosisStatus.REJECTED),
    # A FlexRequest is judged once; an accepted one gets at most one FlexOffer.
    Event.REQUEST_ACCEPTED: _t(REQUEST_OFFER, (), OfferState.TODO),
    Event.REQUEST_REJECTED: _t(REQUEST_OFFER, (), OfferState.NOT_APPLICABLE),
    Event.REQUEST_OFFERED: _t(REQUEST_OFFER, (OfferState.TODO,), OfferState.OFFERED),
    Event.REQUEST_NOT_OFFERED: _t(REQUEST_OFFER, (OfferState.TODO,), OfferState.NONE),
    # A FlexOffer is open (sent, or accepted by the DSO) until it is ordered once, revoked by
    # us, rejected by the DSO or expires; whichever comes first closes it for good. A
    # FlexOfferResponse answers a sent offer only: after our revocation or an order it is late.
    Event.OFFER_QUEUED: _t(FLEX_OFFER, (), OfferStatus.SENT),
    Event.OFFER_ACCEPTED: _t(FLEX_OFFER, (OfferStatus.SENT,), OfferStatus.ACCEPTED),
    Event.OFFER_REJECTED: _t(FLEX_OFFER, (OfferStatus.SENT,), OfferStatus.REJECTED),
    Event.OFFER_ORDERED: _t(FLEX_OFFER, _OPEN, OfferStatus.ORDERED),
    Event.OFFER_REVOKED: _t(FLEX_OFFER, _OPEN, OfferStatus.REVOKED),
    Event.OFFER_EXPIRED: _t(FLEX_OFFER, _OPEN, OfferStatus.EXPIRED),
    # Orders and settlements are judged once, when they arrive.
    Event.ORDER_ACCEPTED: _t(FLEX_ORDER, (), OrderStatus.ACCEPTED),
    Event.ORDER_REJECTED: _t(FLEX_ORDER, (), OrderStatus.REJECTED),
    Event.SETTLEMENT_ACCEPTED: _t(FLEX_SETTLEMENT, (), SettlementResult.ACCEPTED),
    Event.SETTLEMENT_REJECTED: _t(FLEX_SETTLEMENT, (), SettlementResult.REJECTED),
}

# A FlexRequest's verdict follows from the event that recorded it.
REQUEST_VERDICT: Mapping[Event, RequestStatus] = {
    Event.REQUEST_ACCEPTED: RequestStatus.ACCEPTED,
    Event.REQUEST_REJECTED: RequestStatus.REJECTED,
}

# The statuses of an offer the DSO may still order (and we may still revoke).
OPEN_OFFER: tuple[str, ...] = tuple(sorted(TRANSITIONS[Event.OFFER_ORDERED].sources))


# The statuses no event leaves, per record kind (tests/unit/agent/test_records.py holds them to
# the table).
TERMINAL: Mapping[Record, frozenset[str]] = {
    PROGNOSIS: frozenset({PrognosisStatus.ACCEPTED, PrognosisStatus.REJECTED}),
    FLEX_REQUEST: frozenset(RequestStatus),
    REQUEST_OFFER: frozenset({OfferState.OFFERED, OfferState.NONE, OfferState.NOT_APPLICABLE}),
    FLEX_OFFER: frozenset(
        {OfferStatus.REJECTED, OfferStatus.ORDERED, OfferStatus.REVOKED, OfferStatus.EXPIRED}
    ),
    FLEX_ORDER: frozenset(OrderStatus),
    FLEX_SETTLEMENT: frozenset(SettlementResult),
}


def terminal(record: Record) -> frozenset[str]:
    """The statuses no event leaves."""
    return TERMINAL[record]


def left_by_some_event(record: Record) -> frozenset[str]:
    return frozenset(s for t in TRANSITIONS.values() if t.record == record for s in t.sources)


def initial(record: Record) -> frozenset[str]:
    """The statuses a record of this kind may be created with."""
    return frozenset(t.target for t in TRANSITIONS.values() if t.record == record and t.creates)


def next_status(event: Event, current: str | None) -> str | None:
    """The status `event` leads to from `current` (None: no record yet), or None if refused."""
    transition = TRANSITIONS[event]
    if current is None:
        return transition.target if transition.creates else None
    return transition.target if current in transition.sources else None


class TransitionRefused(RuntimeError):
    """An event met a record in a status it may not start from (or no record at all)."""

    def __init__(self, event: Event, key: str, current: str | None) -> None:
        transition = TRANSITIONS[event]
        self.event = event
        self.record = transition.record
        self.key = key
        self.current = current
        self.target = transition.target
        allowed = ", ".join(sorted(transition.sources)) or "a new record"
        found = "no such record" if current is None else f"it is {current!r}"
        super().__init__(
            f"{transition.record} {key}: {event.value!r} cannot make it '{transition.target}': "
            f"{found} (allowed from: {allowed})"
        )


def check_new(event: Event, status: str) -> None:
    """A record being inserted carries the status its creating event gives it."""
    transition = TRANSITIONS[event]
    if not transition.creates or transition.target != status:
        raise ValueError(
            f"{transition.record}: {event.value!r} creates '{transition.target}', not {status!r}"
        )
