"""Use case "Process Settlement Items": dispute items, reject only the
message's bounds, missing items or an already settled period."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from tests.support import uftp as build
from uftp import reasons
from uftp.models import AcceptedDisputed, FlexOrder, FlexOrderSettlement, with_fields
from uftp.validation import SettledOrder, SettlementAssessment, assess_flex_settlement

TODAY = date(2030, 2, 3)
JANUARY = (date(2030, 1, 1), date(2030, 1, 31))


def ordered(day: int, reference: str) -> FlexOrder:
    offer = build.flex_offer(period=date(2030, 1, day))
    return build.flex_order(offer, order_reference=reference)


ORDERS = [ordered(10, "ORD-1"), ordered(20, "ORD-2")]
OURS = [
    SettledOrder(
        order_reference=o.order_reference,
        period=o.period,
        congestion_point=o.congestion_point,
        price=o.price,
        ordered_power=dict.fromkeys(range(69, 73), -8000),
    )
    for o in ORDERS
]


def assess(settlement_orders: list[FlexOrder] = ORDERS) -> SettlementAssessment:
    settlement = build.flex_settlement(settlement_orders, *JANUARY)
    return assess_flex_settlement(settlement, OURS, TODAY)


def test_everything_as_ordered_is_accepted_item_by_item() -> None:
    result = assess()
    assert result.rejections == []
    assert [(s.order_reference, s.disposition) for s in result.statuses] == [
        ("ORD-1", AcceptedDisputed.ACCEPTED),
        ("ORD-2", AcceptedDisputed.ACCEPTED),
    ]


def test_missing_settlement_items() -> None:
    result = assess([ORDERS[0]])
    assert [reasons.reason_of(r) for r in result.rejections] == [reasons.MISSING_SETTLEMENT_ITEMS]
    assert "ORD-2" in result.rejections[0]


def test_period_start_and_end_rejected() -> None:
    future = assess_flex_settlement(
        build.flex_settlement(ORDERS, date(2030, 2, 3), date(2030, 2, 28)), OURS, TODAY
    )
    assert [reasons.reason_of(r) for r in future.rejections] == [
        reasons.PERIOD_START_REJECTED,
        reasons.PERIOD_END_REJECTED,
    ]
    backwards = assess_flex_settlement(
        build.flex_settlement(ORDERS, date(2030, 1, 31), date(2030, 1, 1)), OURS, TODAY
    )
    assert reasons.PERIOD_END_REJECTED in [reasons.reason_of(r) for r in backwards.rejections]


def test_already_settled_period() -> None:
    settlement = build.flex_settlement(ORDERS, *JANUARY)
    result = assess_flex_settlement(settlement, OURS, TODAY, already_settled=True)
    assert [reasons.reason_of(r) for r in result.rejections] == [reasons.INVALID_MESSAGE]


def test_disagreements_are_disputed_not_rejected() -> None:
    settlement = build.flex_settlement(ORDERS, *JANUARY)
    first, second = settlement.flex_order_settlements
    wrong_price = with_fields(first, price=Decimal("13"), net_settlement=Decimal("13"))
    wrong_net = with_fields(second, penalty=Decimal("1"), net_settlement=second.price)
    settlement = with_fields(settlement, flex_order_settlements=[wrong_price, wrong_net])
    result = assess_flex_settlement(settlement, OURS, TODAY)
    assert result.rejections == []
    assert [s.disposition for s in result.statuses] == [AcceptedDisputed.DISPUTED] * 2
    assert "Price 13" in (result.statuses[0].dispute_reason or "")
    assert "NetSettlement" in (result.statuses[1].dispute_reason or "")


def test_ordered_power_and_unknown_orders_are_disputed() -> None:
    settlement = build.flex_settlement(ORDERS, *JANUARY)
    first, second = settlement.flex_order_settlements
    isp = with_fields(first.isps[0], ordered_flex_power=-7000)
    changed = with_fields(first, isps=[isp])
    stranger: FlexOrderSettlement = with_fields(second, order_reference="ORD-X")
    result = assess_flex_settlement(
        with_fields(settlement, flex_order_settlements=[changed, second, stranger]), OURS, TODAY
    )
    assert [s.disposition for s in result.statuses] == [
        AcceptedDisputed.DISPUTED,
        AcceptedDisputed.ACCEPTED,
        AcceptedDisputed.DISPUTED,
    ]
    assert "OrderedFlexPower" in (result.statuses[0].dispute_reason or "")
    assert "unknown OrderReference" in (result.statuses[2].dispute_reason or "")


def test_an_order_settled_twice_is_disputed() -> None:
    settlement = build.flex_settlement(ORDERS, *JANUARY)
    items = [*settlement.flex_order_settlements, settlement.flex_order_settlements[0]]
    result = assess_flex_settlement(
        with_fields(settlement, flex_order_settlements=items), OURS, TODAY
    )
    assert result.statuses[-1].disposition is AcceptedDisputed.DISPUTED
