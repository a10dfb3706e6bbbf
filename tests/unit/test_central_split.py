"""agent.central.split: an order's change as per-site caps, and moved off offline sites."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central.grid import ISP
from agent.central.portfolio import RequestElement, SiteContribution, offer_from_flex
from agent.central.split import Split, cap_series, order_changes, reassign, split_order
from agent.fleet.protocol import Command, Flex
from uftp.models import FlexOrder

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


def test_a_contribution_that_is_not_finite_is_refused_rather_than_made_a_cap() -> None:
    contributions = {"a": {T0: contribution(-2_000, math.inf, 1_000, math.inf)}}
    with pytest.raises(ValueError, match="not finite"):
        split_order(CP, contributions, {T0: -1_000})
    with pytest.raises(ValueError, match="not finite"):
        split_order(CP, {}, {T0: math.nan})
    fine = {"a": {T0: contribution(-2_000, 5_000, 1_000, 6_000)}}
    with pytest.raises(ValueError, match="not finite"):
        split_order(CP, fine, {T0: -1_000}, held_w={"a": {T0: math.nan}})


def test_a_reservation_that_is_not_finite_is_refused_rather_than_made_a_cap() -> None:
    contributions = {"a": {T0: contribution(-2_000, 4_000, 0, 6_000)}}
    split = split_order(CP, contributions, {T0: -2_000})
    with pytest.raises(ValueError, match="not finite"):
        reassign(split, {"a"}, {"b": flex("b", 3_000, 0, 4_000)}, {"b": {T0: math.nan}}, NOW)
    with pytest.raises(ValueError, match="not finite"):
        offer_from_flex(
            CP,
            [RequestElement(T0, 1, True, -5_000, -1)],
            {"b": flex("b", 3_000, 0, 4_000)},
            {"b": {T0: math.nan}},
            NOW,
        )


def test_a_flex_orders_isps_become_utc_changes_at_the_uftp_edge() -> None:
    order = FlexOrder.model_validate(
        {
            "SenderDomain": "dso.example.com",
            "RecipientDomain": "agr.example.com",
            "TimeStamp": NOW,
            "MessageID": "8c1a7c8e-7d7e-4a8b-9f3e-2f1b5c0e9d11",
            "ConversationID": "0f5f3c9a-2b8e-4d0c-8b8e-5d2a4c1e7f22",
            "ISP-Duration": timedelta(minutes=15),
            "TimeZone": "Europe/Amsterdam",
            "Period": date(2026, 12, 2),
            "CongestionPoint": CP,
            "Price": Decimal("10.00"),
            "Currency": "EUR",
            "OrderReference": "O-1",
            "ActivationFactor": Decimal("0.50"),
            "ISP": [{"Start": 73, "Duration": 2, "Power": -3000}],
        }
    )
    # ISP 73 of a CET day is 17:00 UTC; the powers already carry the activation factor.
    assert order_changes(order) == {T0: -3_000.0, T0 + ISP: -3_000.0}


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


def test_the_offline_sites_share_that_finds_no_room_is_unplaced() -> None:
    contributions = {
        "a": {T0: contribution(-2_000, 4_000, 0, 6_000)},
        "b": {T0: contribution(-1_000, 3_000, 1_000, 4_000)},
    }
    split = split_order(CP, contributions, {T0: -3_000})
    moved = reassign(split, {"a"}, {"b": flex("b", 3_000, 1_000, 4_000)}, {}, NOW)
    assert moved.changed["a"] == {T0: None}
    assert moved.changed["b"] == {T0: pytest.approx(1_000)}
    assert moved.unplaced_w == {T0: pytest.approx(-1_000)}


def test_isps_already_over_stay_as_they_were_and_expired_envelopes_take_nothing() -> None:
    contributions = {
        "a": {
            T0: contribution(-2_000, 4_000, 0, 6_000),
            T0 + ISP: contribution(-2_000, 4_000, 0, 6_000),
        },
    }
    split = split_order(CP, contributions, {T0: -2_000, T0 + ISP: -2_000})
    late = T0 + ISP + timedelta(minutes=1)
    expired = flex("c", 2_000, 0, 4_000).model_copy(update={"valid_until": late})
    moved = reassign(split, {"a"}, {"b": flex("b", 2_000, 0, 4_000), "c": expired}, {}, late)
    assert moved.changed["a"] == {T0: 2_000, T0 + ISP: None}
    assert moved.changed["b"] == {T0: None, T0 + ISP: pytest.approx(0)}
    assert "c" not in moved.changed


def test_the_changed_caps_make_valid_commands_with_the_next_seq() -> None:
    contributions = {
        "a": {t: contribution(-2_000, 4_000, 0, 6_000) for t in (T0, T0 + 2 * ISP)},
        "b": {T0: contribution(-1_000, 3_000, 1_000, 4_000)},
    }
    split = split_order(CP, contributions, {T0: -3_000, T0 + 2 * ISP: -2_000})
    moved = reassign(split, {"a"}, {"b": flex("b", 3_000, 1_000, 4_000)}, {}, NOW)
    commands = {}
    for site, caps in moved.changed.items():
        start, series = cap_series(caps)
        commands[site] = Command(
            id=f"O-1-{site}-2",
            site=site,
            sent_at=NOW,
            start=start,
            order_id="O-1",
            seq=2,
            valid_until=T0 + 3 * ISP,
            congestion_point=CP,
            cap_w=series,
        )
    assert commands["a"].cap_w == [None, None, None]
    # b was at 2 kW in the first ISP with 1 kW of room left; in the third it had no cap and
    # takes all of a's 2 kW from its 3 kW baseline.
    assert commands["b"].cap_w == [pytest.approx(1_000), None, pytest.approx(1_000)]
    assert moved.unplaced_w == {T0: pytest.approx(-1_000)}


# --- properties --------------------------------------------------------------------------------

Contributions = dict[str, dict[datetime, SiteContribution]]
# What `offered` draws: the sites' contributions and the order's change per ISP.
Offered = tuple[Contributions, dict[datetime, float]]
W = st.floats(min_value=-2_000, max_value=30_000, allow_nan=False)
ISPS = [T0 + k * ISP for k in range(4)]


@st.composite
def offered(
    draw: st.DrawFn,
) -> Offered:
    """Contributions as an offer makes them (each within its envelope, one sign per ISP) and an
    order's change per ISP, sometimes beyond what was offered, sometimes of the other sign."""
    signs = {t: draw(st.sampled_from([-1.0, 1.0])) for t in ISPS}
    contributions: dict[str, dict[datetime, SiteContribution]] = {}
    for i in range(draw(st.integers(min_value=0, max_value=6))):
        per = {}
        for t in ISPS:
            if not draw(st.booleans()):
                continue
            low, baseline, high = sorted(draw(st.tuples(W, W, W)))
            room = high - baseline if signs[t] > 0 else baseline - low
            share = draw(st.floats(min_value=0, max_value=1)) * room
            per[t] = contribution(signs[t] * share, baseline, low, high)
        if per:
            contributions[f"s{i}"] = per
    ordered = {}
    for t in ISPS:
        if draw(st.booleans()):
            total = sum(abs(per[t].change_w) for per in contributions.values() if t in per)
            factor = draw(st.floats(min_value=0, max_value=1.5))
            sign = signs[t] if draw(st.integers(0, 9)) else -signs[t]
            ordered[t] = sign * factor * total if total else sign * 1_000
    return contributions, ordered


@given(offered())
@settings(max_examples=300, deadline=None)
def test_split_caps_are_finite_non_negative_within_the_envelope_and_add_up_with_the_shortfall(
    case: Offered,
) -> None:
    contributions, ordered = case
    split = split_order(CP, contributions, ordered)
    for site, per in contributions.items():
        for t, c in per.items():
            if t not in ordered:
                assert t not in split.shares.get(site, {})
                continue
            share = split.shares[site][t]  # never "no cap" where the order constrains the ISP
            assert math.isfinite(share.cap_w)
            assert share.cap_w >= 0
            assert max(c.min_w, 0) - 1e-9 <= share.cap_w <= max(c.max_w, 0) + 1e-9
            # A share never exceeds the contribution, and has the order's sign.
            assert abs(share.change_w) <= abs(c.change_w) + 1e-6
            assert share.change_w * ordered[t] >= 0
    for t, change in ordered.items():
        placed = split.change_w(t)
        assert placed + split.shortfall_w.get(t, 0.0) == pytest.approx(change, abs=1e-6)
        reachable = sum(
            abs(per[t].change_w)
            for per in contributions.values()
            if t in per and per[t].change_w * change > 0
        )
        # A cap is a consumption limit: a site feeding in cannot be capped below 0 W.
        caps_can_follow = all(
            min(per[t].baseline_w, per[t].baseline_w + per[t].change_w) >= 0
            for per in contributions.values()
            if t in per
        )
        if abs(change) <= reachable and caps_can_follow:
            assert t not in split.shortfall_w


@given(offered())
@settings(max_examples=200, deadline=None)
def test_shares_follow_the_contributions_in_proportion(
    case: Offered,
) -> None:
    contributions, ordered = case
    split = split_order(CP, contributions, ordered)
    for t, change in ordered.items():
        givers = {
            site: per[t].change_w
            for site, per in contributions.items()
            if t in per
            and per[t].change_w * change > 0
            and min(per[t].baseline_w, per[t].baseline_w + per[t].change_w) >= 0
        }
        total = sum(givers.values())
        if (
            not givers
            or abs(change) > abs(total)
            or len(givers)
            < len(
                [1 for per in contributions.values() if t in per and per[t].change_w * change > 0]
            )
        ):
            continue
        for site, c in givers.items():
            assert split.shares[site][t].change_w == pytest.approx(change * c / total, abs=1e-6)


# What `reassignments` draws: a split, the offline sites, every site's flexibility and
# reservations, and the moment of the reassignment.
Reassignment = tuple[Split, set[str], dict[str, Flex], dict[str, dict[datetime, float]], datetime]


@st.composite
def reassignments(
    draw: st.DrawFn,
) -> Reassignment:
    contributions, ordered = draw(offered())
    split = split_order(CP, contributions, ordered)
    sites = sorted(set(contributions) | {f"s{i}" for i in range(6, 6 + draw(st.integers(0, 3)))})
    offline = {s for s in sites if draw(st.booleans())}
    flexes: dict[str, Flex] = {}
    reservations: dict[str, dict[datetime, float]] = {}
    for site in sites:
        if site in offline or not draw(st.integers(0, 5)):
            continue
        bounds = [sorted(draw(st.tuples(W, W))) for _ in range(4)]
        valid = draw(st.integers(0, 5)) > 0
        flexes[site] = Flex(
            id=f"{site}-flex",
            site=site,
            sent_at=NOW,
            start=T0,
            congestion_point=CP,
            made_at=NOW,
            valid_until=T0 + timedelta(hours=1) if valid else NOW,
            baseline_w=draw(st.lists(W, min_size=4, max_size=4)),
            min_w=[lo for lo, _ in bounds],
            max_w=[hi for _, hi in bounds],
        )
        reservations[site] = {
            t: draw(st.floats(-5_000, 5_000)) for t in ISPS if draw(st.booleans())
        }
    now = draw(st.sampled_from([NOW, T0 + ISP, T0 + 2 * ISP + timedelta(minutes=7)]))
    return split, offline, flexes, reservations, now


@given(reassignments())
@settings(max_examples=300, deadline=None)
def test_reassignment_moves_the_offline_share_without_losing_any_and_within_every_envelope(
    case: Reassignment,
) -> None:
    split, offline, flexes, reservations, now = case
    moved = reassign(split, offline, flexes, reservations, now)
    after = moved.split
    for t in {t for per in split.shares.values() for t in per}:
        if t + ISP <= now:
            for site, per in split.shares.items():  # over: untouched
                if t in per:
                    assert after.shares[site][t] == per[t]
            continue
        for site in offline:
            assert t not in after.shares.get(site, {})
        assert after.change_w(t) + moved.unplaced_w.get(t, 0.0) == pytest.approx(
            split.change_w(t), abs=1e-6
        )
        for site, per in after.shares.items():
            if t not in per:
                continue
            share = per[t]
            assert math.isfinite(share.cap_w)
            assert share.cap_w >= 0
            old = split.shares.get(site, {}).get(t)
            if old is not None and old == share:
                continue
            # A site that takes more has a valid envelope, stays within it and only moves
            # further in the order's direction.
            flex_ = flexes[site]
            assert flex_.valid_until > now
            at = (t - T0) // ISP
            assert max(flex_.min_w[at], 0) - 1e-9 <= share.cap_w <= max(flex_.max_w[at], 0) + 1e-9
            before = 0.0 if old is None else old.change_w
            assert (share.change_w - before) * split.change_w(t) >= -1e-9
    for site in set(split.shares) | set(after.shares):
        new_caps = after.caps(site)
        if new_caps != split.caps(site):
            assert moved.changed[site] == {
                t: new_caps.get(t)
                for t in sorted({t for per in split.shares.values() for t in per})
            }
        else:
            assert site not in moved.changed


@given(
    st.lists(
        st.tuples(st.lists(st.tuples(W, W, W), min_size=4, max_size=4), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
    st.floats(min_value=0.01, max_value=1.0),
)
@settings(max_examples=200, deadline=None)
def test_an_order_within_the_offer_is_split_in_full_onto_the_sites_that_offered_it(
    sites: list[tuple[list[tuple[float, float, float]], bool]], raises: bool, factor: float
) -> None:
    flexes = {}
    for i, (values, expired) in enumerate(sites):
        ordered_values = [sorted(abs(v) for v in triple) for triple in values]
        flexes[f"s{i}"] = Flex(
            id=f"s{i}-flex",
            site=f"s{i}",
            sent_at=NOW,
            start=T0,
            congestion_point=CP,
            made_at=NOW,
            valid_until=NOW if expired else T0,
            baseline_w=[mid for _, mid, _ in ordered_values],
            min_w=[low for low, _, _ in ordered_values],
            max_w=[high for _, _, high in ordered_values],
        )
    element = RequestElement(T0, 4, True, *((1, 10**6) if raises else (-(10**6), -1)))
    offer = offer_from_flex(CP, [element], flexes, {}, NOW)
    if not offer.elements:
        return
    ordered = {t: change * factor for t, change in offer.change_per_isp().items()}
    split = split_order(CP, offer.contributions, ordered)
    assert split.shortfall_w == {}
    for t, change in ordered.items():
        assert split.change_w(t) == pytest.approx(change, abs=1e-6)
    for site, per in split.shares.items():
        assert flexes[site].valid_until > NOW
        for t, share in per.items():
            at = (t - T0) // ISP
            assert flexes[site].min_w[at] - 1e-9 <= share.cap_w <= flexes[site].max_w[at] + 1e-9


@given(reassignments())
@settings(max_examples=150, deadline=None)
def test_reassigning_again_with_the_same_offline_sites_changes_nothing(
    case: Reassignment,
) -> None:
    split, offline, flexes, reservations, now = case
    once = reassign(split, offline, flexes, reservations, now)
    twice = reassign(once.split, offline, flexes, reservations, now)
    assert twice.changed == {}
    assert twice.unplaced_w == {}
    assert twice.split == once.split
