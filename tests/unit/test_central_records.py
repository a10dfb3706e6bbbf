"""The aggregator's records as it stores them: what an offer and an order keep survive the JSON
column exactly, upstream subjects are read strictly, a D-prognosis revision is due only when a
flagged site's data improved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agent.central.fleet_io import command_msg_id, subject_parts
from agent.central.portfolio import PortfolioOffer, SiteContribution
from agent.central.split import SiteShare, Split
from agent.central.trading import (
    _contributions_from_json,
    _contributions_json,
    _improved,
    _split_from_json,
    _split_json,
)

T0 = datetime(2026, 12, 3, 16, 0, tzinfo=UTC)
CP = "ean.871685900012636543"
sites = st.sampled_from(["a", "b", "site-7", "depot_1"])
isps = st.integers(0, 191).map(lambda i: T0 + timedelta(minutes=15 * i))
watts = st.floats(-1e7, 1e7, allow_nan=False, allow_infinity=False)


@given(
    st.dictionaries(
        sites,
        st.dictionaries(isps, st.tuples(watts, watts, watts, watts), min_size=1),
        max_size=4,
    )
)
def test_an_offers_contributions_survive_the_json_column(
    raw: dict[str, dict[datetime, tuple[float, float, float, float]]],
) -> None:
    contributions = {
        site: {t: SiteContribution(*values) for t, values in per.items()}
        for site, per in raw.items()
    }
    offer = PortfolioOffer(CP, (), contributions)
    assert _contributions_from_json(_contributions_json(offer)) == contributions


@given(
    st.dictionaries(
        sites,
        st.dictionaries(isps, st.tuples(watts, watts, watts, watts, watts, watts), min_size=1),
        max_size=4,
    ),
    st.dictionaries(isps, watts, max_size=3),
)
def test_an_orders_split_survives_the_json_column(
    raw: dict[str, dict[datetime, tuple[float, ...]]], shortfall: dict[datetime, float]
) -> None:
    split = Split(
        CP,
        {site: {t: SiteShare(*values) for t, values in per.items()} for site, per in raw.items()},
        shortfall,
    )
    assert _split_from_json(CP, _split_json(split)) == split


def test_upstream_subjects_are_read_strictly() -> None:
    assert subject_parts("fleet.up.site-1.flex") == ("site-1", "flex")
    assert subject_parts("fleet.up.site-1.flex.extra") is None
    assert subject_parts("fleet.cmd.site-1") is None
    assert subject_parts("other.up.site-1.flex") is None
    assert command_msg_id("o-1", "site-1", 3) == "o-1:site-1:3"


def test_a_revision_is_due_only_when_a_flagged_site_improved() -> None:
    assert _improved(["a"], ["b"], ["a", "b"], [])  # b: missing -> substituted
    assert _improved(["a"], [], [], [])  # a: substituted -> fresh
    assert not _improved(["a"], ["b"], ["a"], ["b"])  # nothing new
    assert not _improved([], [], [], ["c"])  # a new missing site is no improvement
    assert _improved(["a"], ["b"], [], ["b", "c"])  # a improved although c is new
