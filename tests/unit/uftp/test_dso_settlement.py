"""The DSO's side of the settle phase: a FlexSettlement computed from the orders, the baseline
each refers to and the DSO's own measurements, which the AGR's own check then accepts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import uftp as build
from uftp import codec
from uftp.dso import (
    OrderOutcome,
    SettlementError,
    flex_settlement,
    power_deficiency,
    prognosis_power,
    settle_order,
)
from uftp.models import (
    AcceptedDisputed,
    DPrognosisISP,
    FlexOrder,
    FlexSettlement,
    PowerISP,
    with_fields,
)
from uftp.validation import SettledOrder, assess_flex_settlement

PERIOD = date(2030, 1, 10)
# -8 kW in ISPs 69-72 for EUR 12.50, as the builders offer it.
ORDER = build.flex_order(build.flex_offer(period=PERIOD), order_reference="ORD-1")
BASELINE = dict.fromkeys(range(1, 97), 20_000)


def test_each_ordered_isp_is_settled_against_baseline_and_measurement() -> None:
    actual = {69: 12_000, 70: 13_000, 71: 11_000, 72: 25_000}
    item = settle_order(ORDER, BASELINE, actual)
    assert [
        (i.start, i.duration, i.baseline_power, i.ordered_flex_power, i.actual_power)
        for i in item.isps
    ] == [(k, 1, 20_000, -8000, actual[k]) for k in range(69, 73)]
    # Delivered flexibility is measured minus baseline; the deficiency is what fell short of -8 kW.
    assert [(i.delivered_flex_power, i.power_deficiency) for i in item.isps] == [
        (-8000, 0),
        (-7000, 1000),
        (-9000, 0),
        (5000, 8000),  # the wrong way: at most what was sold is missing
    ]
    assert (item.order_reference, item.period, item.congestion_point) == (
        "ORD-1",
        PERIOD,
        ORDER.congestion_point,
    )
    assert (item.price, item.penalty, item.net_settlement) == (
        Decimal("12.5"),
        Decimal(0),
        Decimal("12.5"),
    )


def test_a_penalty_comes_off_the_net_settlement() -> None:
    item = settle_order(ORDER, BASELINE, dict.fromkeys(range(69, 73), 15_000), penalty=Decimal(2))
    assert (item.penalty, item.net_settlement) == (Decimal(2), Decimal("10.5"))


def test_the_item_names_what_the_order_named() -> None:
    order = with_fields(
        ORDER, contract_id="C-7", d_prognosis_message_id=build.d_prognosis().message_id
    )
    item = settle_order(order, BASELINE, dict.fromkeys(range(69, 73), 0))
    assert item.contract_id == "C-7"
    assert item.d_prognosis_message_id == order.d_prognosis_message_id


def test_an_unmeasured_or_unforecast_isp_is_not_settled_as_zero() -> None:
    with pytest.raises(SettlementError, match=r"no measurement for ISP\(s\) 71, 72$"):
        settle_order(ORDER, BASELINE, {69: 0, 70: 0})
    with pytest.raises(SettlementError, match=r"no baseline for ISP\(s\) 69$"):
        settle_order(ORDER, {70: 0, 71: 0, 72: 0}, dict.fromkeys(range(69, 73), 0))


@given(
    ordered=st.integers(-100_000, 100_000),
    delivered=st.integers(-200_000, 200_000),
)
def test_deficiency_is_the_unmet_part_of_the_order(ordered: int, delivered: int) -> None:
    deficiency = power_deficiency(ordered, delivered)
    assert 0 <= deficiency <= abs(ordered)
    # Met or exceeded in the ordered direction: nothing is missing.
    met = delivered <= ordered if ordered < 0 else delivered >= ordered
    if met:
        assert deficiency == 0
    else:
        assert deficiency == min(abs(ordered), abs(delivered - ordered))


@given(
    actual=st.lists(st.integers(-50_000, 50_000), min_size=4, max_size=4),
    baseline=st.lists(st.integers(0, 50_000), min_size=4, max_size=4),
)
def test_delivered_is_measured_minus_baseline(actual: list[int], baseline: list[int]) -> None:
    isps = range(69, 73)
    item = settle_order(
        ORDER, dict(zip(isps, baseline, strict=True)), dict(zip(isps, actual, strict=True))
    )
    for isp, a, b in zip(item.isps, actual, baseline, strict=True):
        assert isp.delivered_flex_power == a - b
        assert (isp.actual_power, isp.baseline_power) == (a, b)


def outcome(order: FlexOrder, measured_w: int = 12_000) -> OrderOutcome:
    return OrderOutcome(order, BASELINE, dict.fromkeys(range(69, 73), measured_w))


def test_the_settlement_covers_the_orders_days_and_the_agr_accepts_it() -> None:
    second = build.flex_order(
        build.flex_offer(period=date(2030, 1, 20)),
        order_reference="ORD-2",
        isps=[PowerISP(power=-8000, start=69, duration=2), PowerISP(power=-4000, start=71)],
    )
    settlement = flex_settlement([outcome(ORDER), outcome(second)], time_stamp=build.NOW)
    assert (settlement.sender_domain, settlement.recipient_domain) == (build.DSO, build.AGR)
    assert (settlement.period_start, settlement.period_end) == (PERIOD, date(2030, 1, 20))
    assert [i.order_reference for i in settlement.flex_order_settlements] == ["ORD-1", "ORD-2"]
    assert [p.period for p in settlement.contract_settlements[0].periods] == [
        PERIOD,
        date(2030, 1, 20),
    ]
    # Schema-valid on the wire and back.
    assert codec.from_xml(codec.to_xml(settlement)) == settlement
    ours = [
        SettledOrder(
            o.order_reference,
            o.period,
            o.congestion_point,
            o.price,
            {k: isp.power for isp in o.isps for k in range(isp.start, isp.start + isp.duration)},
        )
        for o in (ORDER, second)
    ]
    verdict = assess_flex_settlement(settlement, ours, date(2030, 2, 3))
    assert verdict.rejections == []
    assert [s.disposition for s in verdict.statuses] == [AcceptedDisputed.ACCEPTED] * 2


def test_a_settlement_period_can_be_the_month() -> None:
    settlement = flex_settlement(
        [outcome(ORDER)], period_start=date(2030, 1, 1), period_end=date(2030, 1, 31)
    )
    assert isinstance(settlement, FlexSettlement)
    assert (settlement.period_start, settlement.period_end) == (date(2030, 1, 1), date(2030, 1, 31))
    with pytest.raises(SettlementError, match=r"ORD-1 outside 2030-01-11\.\.2030-01-31"):
        flex_settlement(
            [outcome(ORDER)], period_start=date(2030, 1, 11), period_end=date(2030, 1, 31)
        )


def test_orders_to_different_agrs_or_in_different_currencies_are_not_mixed() -> None:
    other_agr = with_fields(ORDER, recipient_domain="agr2.example.com", order_reference="ORD-9")
    with pytest.raises(SettlementError, match="recipient_domain"):
        flex_settlement([outcome(ORDER), outcome(other_agr)])
    with pytest.raises(SettlementError, match="at least one order"):
        flex_settlement([])


def test_the_baseline_is_the_prognosis_power_per_isp() -> None:
    prognosis = build.d_prognosis(
        powers=[0],
        isps=[DPrognosisISP(power=5000, start=1, duration=95), DPrognosisISP(power=7000, start=96)],
    )
    power = prognosis_power(prognosis)
    assert power == {**dict.fromkeys(range(1, 96), 5000), 96: 7000}
