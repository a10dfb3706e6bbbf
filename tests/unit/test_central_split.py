"""agent.central.split: an order's change as per-site caps, and moved off offline sites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.central.grid import ISP
from agent.central.portfolio import RequestElement, SiteContribution, offer_from_flex
from agent.central.split import cap_series, reassign, split_order
from agent.fleet.protocol import Flex

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
T0 = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
CP = "ean.871685900012636543"


def flex(site: str, baseline: float, low: float, high: float, *, n: int = 4) -> Flex:
    return Flex(
        id=f"{site}-flex",
        site=site,
        sent_at=NOW,
        start=T0,
        congestion_point=CP,
        made_at=NOW,
        valid_until=NOW + timedelta(hours=12),
        baseline_w=[baseline] * n,
        min_w=[low] * n,
        max_w=[high] * n,
    )


def contribution(change: float, baseline: float, low: float, high: float) -> SiteContribution:
    return SiteContribution(change_w=change, baseline_w=baseline, min_w=low, max_w=high)


def test_an_order_is_shared_in_proportion_to_the_contributions() -> None:
    offer = offer_from_flex(
        CP,
        [RequestElement(T0, 1, True, -10_000, -1_000)],
        {"a": flex("a", 6_000, 2_000, 8_000), "b": flex("b", 3_000, 1_000, 4_000)},
        {},
        NOW,
    )
    # Room: a 4 kW, b 2 kW; 6 kW offered.
    assert offer.change_per_isp() == {T0: -6_000}
    split = split_order(CP, offer.contributions, {T0: -3_000})
    assert split.caps("a") == {T0: pytest.approx(4_000)}
    assert split.caps("b") == {T0: pytest.approx(2_000)}
    assert split.shortfall_w == {}


def test_an_order_beyond_the_contributions_says_its_shortfall() -> None:
    contributions = {"a": {T0: contribution(-2_000, 5_000, 1_000, 6_000)}}
    split = split_order(CP, contributions, {T0: -3_000, T0 + ISP: -500})
    assert split.caps("a") == {T0: 3_000}
    assert split.shortfall_w == {T0: -1_000, T0 + ISP: -500}


def test_caps_never_go_below_zero_even_where_the_envelope_does() -> None:
    contributions = {"a": {T0: contribution(-3_000, 1_000, -2_000, 4_000)}}
    split = split_order(CP, contributions, {T0: -3_000})
    assert split.caps("a") == {T0: 0.0}
    assert split.shortfall_w == {T0: -2_000}


def test_other_orders_held_by_a_site_are_kept_under_its_new_cap() -> None:
    contributions = {"a": {T0: contribution(-2_000, 5_000, 0, 6_000)}}
    split = split_order(CP, contributions, {T0: -2_000}, held_w={"a": {T0: -1_000}})
    assert split.caps("a") == {T0: 2_000}


def test_cap_series_puts_none_in_the_gaps() -> None:
    start, caps = cap_series({T0: 1.0, T0 + 3 * ISP: 2.0})
    assert start == T0
    assert caps == [1.0, None, None, 2.0]


def test_an_offline_sites_share_moves_to_the_online_sites_with_room() -> None:
    contributions = {
        "a": {T0: contribution(-2_000, 4_000, 0, 6_000)},
        "b": {T0: contribution(-1_000, 3_000, 1_000, 4_000)},
    }
    split = split_order(CP, contributions, {T0: -3_000})
    moved = reassign(
        split,
        {"a"},
        {"b": flex("b", 3_000, 1_000, 4_000), "c": flex("c", 2_000, 0, 4_000)},
        {},
        NOW,
    )
    # a's 2 kW: b has 1 kW of room left, c 2 kW; shared 1:2.
    assert moved.changed["a"] == {T0: None}
    assert moved.changed["b"] == {T0: pytest.approx(3_000 - 1_000 - 2_000 / 3)}
    assert moved.changed["c"] == {T0: pytest.approx(2_000 - 4_000 / 3)}
    assert moved.unplaced_w == {}
    assert moved.split.change_w(T0) == pytest.approx(-3_000)
