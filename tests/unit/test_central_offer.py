"""agent.central.portfolio.offer_from_flex: what a congestion point's sites can offer for a
FlexRequest, from the envelopes they pushed, never more than an envelope minus its reservations."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central.grid import ISP
from agent.central.portfolio import RequestElement, offer_from_flex, request_elements
from agent.fleet.protocol import Flex
from uftp.calendar import CalendarError
from uftp.models import AvailableRequested, FlexRequest, FlexRequestISP

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
T0 = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
CP = "ean.871685900012636543"
N = 6


def flex(
    site: str,
    baseline: list[float],
    low: list[float],
    high: list[float],
    *,
    valid_until: datetime = NOW + timedelta(hours=12),
    cp: str = CP,
) -> Flex:
    return Flex(
        id=f"{site}-flex",
        site=site,
        sent_at=NOW,
        start=T0,
        congestion_point=cp,
        made_at=NOW,
        valid_until=valid_until,
        baseline_w=baseline,
        min_w=low,
        max_w=high,
    )


def flat(site: str, baseline: float, low: float, high: float, **kwargs: object) -> Flex:
    return flex(site, [baseline] * N, [low] * N, [high] * N, **kwargs)  # type: ignore[arg-type]


def reduce(start: datetime, isps: int, least: int, most: int) -> RequestElement:
    return RequestElement(start, isps, True, -most, -least)


def test_the_offer_is_the_summed_room_shared_by_room() -> None:
    offer = offer_from_flex(
        CP,
        [reduce(T0, 2, 1_000, 50_000)],
        {"a": flat("a", 6_000, 2_000, 8_000), "b": flat("b", 3_000, 1_000, 4_000)},
        {},
        NOW,
    )
    assert offer.change_per_isp() == {T0: -6_000, T0 + ISP: -6_000}
    assert offer.contributions["a"][T0].change_w == pytest.approx(-4_000)
    assert offer.contributions["b"][T0].change_w == pytest.approx(-2_000)


def test_reservations_of_outstanding_offers_are_kept_and_the_request_bounds_the_offer() -> None:
    offer = offer_from_flex(
        CP,
        [reduce(T0, 1, 1_000, 3_000)],
        {"a": flat("a", 6_000, 2_000, 8_000), "b": flat("b", 3_000, 1_000, 4_000)},
        {"a": {T0: -3_000}},
        NOW,
    )
    # a has 1 kW left, b 2 kW; the DSO takes at most 3 kW.
    assert offer.change_per_isp() == {T0: -3_000}
    assert offer.contributions["a"][T0].change_w == pytest.approx(-1_000)


def test_an_expired_envelope_or_one_for_another_congestion_point_is_never_used() -> None:
    offer = offer_from_flex(
        CP,
        [reduce(T0, 1, 1_000, 50_000)],
        {
            "a": flat("a", 6_000, 2_000, 8_000, valid_until=NOW),
            "b": flat("b", 3_000, 1_000, 4_000),
            "c": flat("c", 3_000, 0, 4_000, cp="ean.000000000000000001"),
        },
        {},
        NOW,
    )
    assert offer.change_per_isp() == {T0: -2_000}
    assert set(offer.contributions) == {"b"}
    assert set(offer.sites_left_out) == {"a", "c"}
    assert "expired" in offer.sites_left_out["a"]


def test_an_element_below_the_smallest_requested_change_or_too_soon_is_not_offered() -> None:
    offer = offer_from_flex(
        CP,
        [reduce(T0, 1, 100, 50_000), reduce(T0 + ISP, 1, 5_000, 50_000)],
        {"a": flat("a", 3_000, 0, 4_000)},
        {},
        NOW,
        lead=timedelta(hours=9, minutes=10),
    )
    assert offer.elements == ()
    assert [start for start, _ in offer.not_offered] == [T0, T0 + ISP]
    assert "lead time" in offer.not_offered[0][1]
    assert "smallest change" in offer.not_offered[1][1]


def test_a_raise_uses_the_room_above_the_baseline() -> None:
    offer = offer_from_flex(
        CP,
        [RequestElement(T0, 1, True, 500, 10_000)],
        {"a": flat("a", 3_000, 0, 4_000), "b": flat("b", 1_000, 0, 3_000)},
        {},
        NOW,
    )
    assert offer.change_per_isp() == {T0: 3_000}


def flex_request(*isps: FlexRequestISP) -> FlexRequest:
    """A FlexRequest of the DSO for CP on 2 December 2026 (a CET day) with these ISPs."""
    return FlexRequest(
        sender_domain="dso.example.com",
        recipient_domain="agr.example.com",
        time_stamp=NOW,
        message_id="8c1a7c8e-7d7e-4a8b-9f3e-2f1b5c0e9d11",
        conversation_id="0f5f3c9a-2b8e-4d0c-8b8e-5d2a4c1e7f22",
        isp_duration=timedelta(minutes=15),
        time_zone="Europe/Amsterdam",
        period=date(2026, 12, 2),
        congestion_point=CP,
        revision=1,
        expiration_date_time=NOW + timedelta(hours=2),
        isps=isps,
    )


def test_a_flex_request_becomes_utc_elements_at_the_uftp_edge() -> None:
    request = flex_request(
        FlexRequestISP(
            disposition=AvailableRequested.REQUESTED,
            min_power=-50_000,
            max_power=-6_000,
            start=73,
            duration=4,
        ),
        FlexRequestISP(
            disposition=AvailableRequested.AVAILABLE, min_power=0, max_power=9_000, start=77
        ),
    )
    elements = request_elements(request)
    # ISP 73 of a CET day starts at 18:00 local, 17:00 UTC.
    assert elements[0] == RequestElement(T0, 4, True, -50_000, -6_000)
    assert elements[1] == RequestElement(T0 + 4 * ISP, 1, False, 0, 9_000)


def test_a_request_element_outside_its_period_or_on_another_grid_is_refused() -> None:
    request = flex_request(
        FlexRequestISP(
            disposition=AvailableRequested.REQUESTED,
            min_power=-50_000,
            max_power=-6_000,
            start=95,
            duration=4,
        ),
    )
    with pytest.raises(CalendarError):
        request_elements(request)
    with pytest.raises(ValueError, match="15-minute"):
        request_elements(request.model_copy(update={"isp_duration": timedelta(minutes=5)}))


def test_overlapping_elements_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        offer_from_flex(CP, [reduce(T0, 2, 1, 5), reduce(T0 + ISP, 1, 1, 5)], {}, {}, NOW)


# --- properties --------------------------------------------------------------------------------

power = st.floats(min_value=-5_000, max_value=30_000, allow_nan=False)


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[dict[str, Flex], dict[str, dict[datetime, float]]]:
    flexes: dict[str, Flex] = {}
    reservations: dict[str, dict[datetime, float]] = {}
    for i in range(draw(st.integers(min_value=0, max_value=6))):
        site = f"s{i}"
        bounds = [sorted(draw(st.tuples(power, power))) for _ in range(N)]
        baseline = draw(st.lists(power, min_size=N, max_size=N))
        expired = draw(st.booleans())
        flexes[site] = flex(
            site,
            baseline,
            [lo for lo, _ in bounds],
            [hi for _, hi in bounds],
            valid_until=NOW - timedelta(seconds=1) if expired else NOW + timedelta(hours=1),
        )
        reservations[site] = {
            T0 + k * ISP: draw(st.floats(min_value=-10_000, max_value=10_000))
            for k in range(N)
            if draw(st.booleans())
        }
    return flexes, reservations


@st.composite
def elements(draw: st.DrawFn) -> list[RequestElement]:
    out = []
    free = 0
    for k in sorted(draw(st.sets(st.integers(min_value=0, max_value=N + 1), max_size=3))):
        if k < free:
            continue  # UFTP requests never overlap
        least = draw(st.integers(min_value=0, max_value=20_000))
        most = draw(st.integers(min_value=least, max_value=80_000))
        isps = draw(st.integers(min_value=1, max_value=3))
        free = k + isps
        if draw(st.booleans()):
            out.append(RequestElement(T0 + k * ISP, isps, True, -most, -least))
        else:
            out.append(RequestElement(T0 + k * ISP, isps, True, least, max(most, 1)))
    return out


def room(flex: Flex, at: int, reserved: float, raises: bool) -> float:
    """The room as a site would work it out by hand: its envelope minus its reservations."""
    low, high = flex.min_w[at], flex.max_w[at]
    level = min(max(min(max(flex.baseline_w[at], low), high) + reserved, low), high)
    return high - level if raises else level - low


@given(envelopes(), elements())
@settings(max_examples=200, deadline=None)
def test_no_site_gives_more_than_its_envelope_minus_its_reservations(
    sites: tuple[dict[str, Flex], dict[str, dict[datetime, float]]],
    request: list[RequestElement],
) -> None:
    flexes, reservations = sites
    offer = offer_from_flex(CP, request, flexes, reservations, NOW)
    offered = offer.change_per_isp()
    by_start = {t: e for e in request for t in e.starts}
    for site, per in offer.contributions.items():
        f = flexes[site]
        assert f.valid_until > NOW, "an expired envelope contributed"
        for t, c in per.items():
            at = (t - T0) // ISP
            raises = by_start[t].raises
            limit = room(f, at, reservations[site].get(t, 0.0), raises)
            assert abs(c.change_w) <= limit + 1e-6
            assert (c.change_w > 0) == raises
            assert math.copysign(1, c.change_w) == math.copysign(1, offered[t])
    for element in offer.elements:
        magnitude = abs(element.change_w)
        assert max(element.element.least_w, 1) <= magnitude <= element.element.most_w
        for t in element.element.starts:
            total = math.fsum(per[t].change_w for per in offer.contributions.values() if t in per)
            assert total == pytest.approx(element.change_w, abs=1e-6)


@given(envelopes(), elements())
@settings(max_examples=100, deadline=None)
def test_the_offer_is_deterministic_whatever_order_the_sites_come_in(
    sites: tuple[dict[str, Flex], dict[str, dict[datetime, float]]],
    request: list[RequestElement],
) -> None:
    flexes, reservations = sites
    first = offer_from_flex(CP, request, flexes, reservations, NOW)
    shuffled = dict(reversed(list(flexes.items())))
    assert offer_from_flex(CP, request, shuffled, reservations, NOW) == first


@given(envelopes(), elements())
@settings(max_examples=100, deadline=None)
def test_every_requested_element_is_either_offered_or_says_why_not(
    sites: tuple[dict[str, Flex], dict[str, dict[datetime, float]]],
    request: list[RequestElement],
) -> None:
    flexes, reservations = sites
    offer = offer_from_flex(CP, request, flexes, reservations, NOW)
    offered = [e.element.start for e in offer.elements]
    refused = [start for start, _ in offer.not_offered]
    assert sorted(offered + refused) == sorted(e.start for e in request)
