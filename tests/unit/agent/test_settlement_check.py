"""The AGR disputes a settlement item exactly where the DSO's ActualPower and its own metering
disagree beyond both tolerances."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from agent.trading.settlement import dispute_by_metering
from uftp.models import AcceptedDisputed, FlexOrderSettlement, FlexOrderSettlementStatus

ACCEPTED = FlexOrderSettlementStatus(order_reference="O-1", disposition=AcceptedDisputed.ACCEPTED)


def item(actual: list[int]) -> FlexOrderSettlement:
    isps = [
        {
            "Start": i + 1,
            "BaselinePower": 0,
            "OrderedFlexPower": -1000,
            "ActualPower": a,
            "DeliveredFlexPower": -1000,
        }
        for i, a in enumerate(actual)
    ]
    return FlexOrderSettlement.model_validate(
        {
            "OrderReference": "O-1",
            "Period": date(2026, 6, 1),
            "CongestionPoint": "ean.871685900012636543",
            "Price": Decimal("1.00"),
            "NetSettlement": Decimal("1.00"),
            "ISP": isps,
        }
    )


def test_an_item_that_agrees_stays_accepted_and_one_that_differs_names_its_isps() -> None:
    measured = {1: 5_000.0, 2: 5_000.0, 3: 5_000.0}
    assert dispute_by_metering(item([5_050, 4_990, 5_000]), ACCEPTED, measured, 100, 0.05) == (
        ACCEPTED
    )
    disputed = dispute_by_metering(item([5_050, 9_000, 0]), ACCEPTED, measured, 100, 0.05)
    assert disputed.disposition is AcceptedDisputed.DISPUTED
    assert disputed.dispute_reason is not None
    assert "ISP 2: 9000 W, we measured 5000 W" in disputed.dispute_reason
    assert "ISP 3: 0 W" in disputed.dispute_reason
    assert "ISP 1" not in disputed.dispute_reason


def test_an_earlier_dispute_reason_is_kept_and_long_lists_are_counted() -> None:
    earlier = FlexOrderSettlementStatus(
        order_reference="O-1", disposition=AcceptedDisputed.DISPUTED, dispute_reason="price"
    )
    measured = dict.fromkeys(range(1, 9), 0.0)
    disputed = dispute_by_metering(item([9_000] * 8), earlier, measured, 100, 0.05)
    assert disputed.dispute_reason is not None
    assert disputed.dispute_reason.startswith("price; ActualPower differs")
    assert disputed.dispute_reason.endswith("; and 3 more ISP(s)")


@given(
    st.lists(st.integers(0, 50_000), min_size=1, max_size=12),
    st.lists(st.floats(-200, 200), min_size=12, max_size=12),
)
def test_a_gap_within_the_absolute_tolerance_is_never_disputed(
    ours: list[int], offsets: list[float]
) -> None:
    measured = {i + 1: float(w) for i, w in enumerate(ours)}
    actual = [round(w + offsets[i] / 2) for i, w in enumerate(ours)]  # within 100 W + rounding
    assert dispute_by_metering(item(actual), ACCEPTED, measured, 101, 0.0) == ACCEPTED
