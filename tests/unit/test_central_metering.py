"""agent.central.portfolio: a congestion point's metering from its sites' meter data (a site
without a value makes the ISP unknown, never 0) and the check of a FlexSettlement item on it."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central.grid import ISP
from agent.central.portfolio import check_settlement, congestion_point_metering
from agent.fleet.protocol import Metering
from uftp.models import AcceptedDisputed, FlexOrderSettlement, FlexOrderSettlementStatus

CP = "ean.871685900012636543"
DAY = date(2026, 12, 2)
T0 = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)  # ISP 73 of the day in Europe/Amsterdam
FIRST_INDEX = 73
ISPS = [T0 + k * ISP for k in range(4)]
ACCEPTED = FlexOrderSettlementStatus(order_reference="O-1", disposition=AcceptedDisputed.ACCEPTED)


def metering(
    site: str, energy: list[float | None], *, sent: int = 0, start: datetime = T0, cp: str = CP
) -> Metering:
    return Metering(
        id=f"{site}-m{sent}",
        site=site,
        sent_at=datetime(2026, 12, 3, 1, 0, tzinfo=UTC) + timedelta(minutes=sent),
        start=start,
        congestion_point=cp,
        energy_wh=energy,
    )


def item(actual_w: list[int]) -> FlexOrderSettlement:
    return FlexOrderSettlement.model_validate(
        {
            "OrderReference": "O-1",
            "Period": DAY,
            "CongestionPoint": CP,
            "Price": Decimal("1.00"),
            "NetSettlement": Decimal("1.00"),
            "ISP": [
                {
                    "Start": FIRST_INDEX + k,
                    "BaselinePower": 0,
                    "OrderedFlexPower": -1000,
                    "ActualPower": a,
                    "DeliveredFlexPower": -1000,
                }
                for k, a in enumerate(actual_w)
            ],
        }
    )


def test_the_sites_energy_adds_up_and_a_site_without_a_value_makes_the_isp_unknown() -> None:
    summed = congestion_point_metering(
        CP,
        ["a", "b"],
        {
            "a": [metering("a", [100.0, 200.0, 0.0, 50.0])],
            "b": [metering("b", [10.0, None, 0.0])],
        },
        ISPS,
    )
    assert [i.energy_wh for i in summed.isps] == [110.0, None, 0.0, None]
    assert [i.missing for i in summed.isps] == [(), ("b",), (), ("b",)]
    assert summed.average_w() == {T0: 440.0, T0 + 2 * ISP: 0.0}


def test_a_newer_message_fills_an_older_gap_and_a_later_gap_withdraws_nothing() -> None:
    summed = congestion_point_metering(
        CP,
        ["a"],
        {
            "a": [
                metering("a", [100.0, None, 7.0], sent=0),
                metering("a", [None, 200.0, 9.0], sent=5),
                metering("a", [999.0], cp="ean.000000000000000001", sent=9),
            ]
        },
        ISPS[:3],
    )
    assert [i.energy_wh for i in summed.isps] == [100.0, 200.0, 9.0]


def test_a_settlement_item_is_disputed_where_the_sum_differs_and_unjudged_where_unknown() -> None:
    summed = congestion_point_metering(
        CP,
        ["a", "b"],
        {"a": [metering("a", [500.0, 500.0, 500.0])], "b": [metering("b", [250.0, None, 250.0])]},
        ISPS[:3],
    )
    # 750 Wh in a quarter hour = 3 kW.
    checked = check_settlement(
        item([3_000, 9_000, 5_000]),
        ACCEPTED,
        summed,
        "Europe/Amsterdam",
        tolerance_w=100,
        tolerance_fraction=0.05,
    )
    assert checked.unjudged == (FIRST_INDEX + 1,)
    assert checked.status.disposition is AcceptedDisputed.DISPUTED
    assert checked.status.dispute_reason is not None
    assert f"ISP {FIRST_INDEX + 2}: 5000 W" in checked.status.dispute_reason
    assert f"ISP {FIRST_INDEX}:" not in checked.status.dispute_reason
    assert f"ISP {FIRST_INDEX + 1}:" not in checked.status.dispute_reason


def test_an_item_that_agrees_with_the_metering_is_accepted() -> None:
    summed = congestion_point_metering(CP, ["a"], {"a": [metering("a", [500.0])]}, ISPS[:1])
    checked = check_settlement(
        item([2_050]),
        ACCEPTED,
        summed,
        "Europe/Amsterdam",
        tolerance_w=100,
        tolerance_fraction=0.05,
    )
    assert checked.status == ACCEPTED
    assert checked.unjudged == ()


# --- properties --------------------------------------------------------------------------------

energy = st.one_of(st.none(), st.floats(min_value=0, max_value=50_000, allow_nan=False))


@given(st.lists(st.lists(energy, min_size=4, max_size=4), min_size=0, max_size=6))
@settings(max_examples=200, deadline=None)
def test_an_isp_is_the_exact_sum_where_every_site_has_a_value_and_none_otherwise(
    per_site: list[list[float | None]],
) -> None:
    sites = [f"s{i}" for i in range(len(per_site))]
    summed = congestion_point_metering(
        CP, sites, {s: [metering(s, e)] for s, e in zip(sites, per_site, strict=True)}, ISPS
    )
    for k, isp in enumerate(summed.isps):
        values = [e[k] for e in per_site]
        lacking = tuple(s for s, v in zip(sites, values, strict=True) if v is None)
        assert isp.missing == lacking
        if lacking or not sites:
            assert isp.energy_wh is None
        else:
            assert isp.energy_wh == math.fsum(v for v in values if v is not None)


@given(
    st.lists(st.lists(energy, min_size=4, max_size=4), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=200_000), min_size=4, max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_the_settlement_check_judges_exactly_the_fully_metered_isps(
    per_site: list[list[float | None]], actual: list[int]
) -> None:
    sites = [f"s{i}" for i in range(len(per_site))]
    summed = congestion_point_metering(
        CP, sites, {s: [metering(s, e)] for s, e in zip(sites, per_site, strict=True)}, ISPS
    )
    checked = check_settlement(
        item(actual), ACCEPTED, summed, "Europe/Amsterdam", tolerance_w=100, tolerance_fraction=0.05
    )
    unknown = [FIRST_INDEX + k for k, i in enumerate(summed.isps) if i.energy_wh is None]
    assert list(checked.unjudged) == unknown
    differing = []
    for k, isp in enumerate(summed.isps):
        if isp.energy_wh is None:
            continue
        ours = isp.energy_wh * 4
        gap = abs(actual[k] - ours)
        if gap > 100 and gap > 0.05 * max(abs(ours), 1.0):
            differing.append(FIRST_INDEX + k)
    assert (checked.status.disposition is AcceptedDisputed.DISPUTED) == bool(differing)


def test_an_off_grid_isp_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="grid"):
        congestion_point_metering(CP, ["a"], {}, [T0 + timedelta(minutes=1)])
