"""agent.central.portfolio.aggregate_prognosis: a congestion point's D-prognosis from its sites'
forecasts, with substituted and missing sites flagged."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central.grid import ISP
from agent.central.portfolio import aggregate_prognosis, combine_deviation
from agent.fleet.protocol import Forecast

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
DAY_AHEAD = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
CP = "ean.871685900012636543"
ISPS = [DAY_AHEAD + i * ISP for i in range(96)]


def forecast(
    site: str,
    start: datetime,
    p50: list[float],
    *,
    below: float = 100.0,
    above: float = 200.0,
    made_at: datetime = NOW,
    cp: str = CP,
) -> Forecast:
    return Forecast(
        id=f"{site}-{made_at.isoformat()}-{start.isoformat()}",
        site=site,
        sent_at=made_at,
        start=start,
        congestion_point=cp,
        made_at=made_at,
        p10_w=[v - below for v in p50],
        p50_w=p50,
        p90_w=[v + above for v in p50],
    )


def test_fresh_sites_add_up_and_their_bands_combine_as_independent() -> None:
    prognosis = aggregate_prognosis(
        CP,
        ["a", "b"],
        {
            "a": [forecast("a", DAY_AHEAD, [1_000.0] * 96, below=300, above=400)],
            "b": [forecast("b", DAY_AHEAD, [2_000.0] * 96, below=400, above=300)],
        },
        ISPS,
        NOW,
    )
    first = prognosis.isps[0]
    assert first.p50_w == 3_000
    assert first.p10_w == pytest.approx(3_000 - 500)  # sqrt(300² + 400²)
    assert first.p90_w == pytest.approx(3_000 + 500)
    assert prognosis.complete
    assert prognosis.sites["a"].state == prognosis.sites["b"].state == "fresh"


def test_a_site_without_a_forecast_for_the_day_is_substituted_from_yesterday_and_flagged() -> None:
    yesterday = DAY_AHEAD - timedelta(days=1)
    old = NOW - timedelta(days=1)
    evening = [500.0] * 68 + [7_000.0] * 28
    prognosis = aggregate_prognosis(
        CP,
        ["a", "b"],
        {
            "a": [forecast("a", DAY_AHEAD, [1_000.0] * 96)],
            "b": [forecast("b", yesterday, evening, made_at=old)],
        },
        ISPS,
        NOW,
    )
    assert [i.p50_w for i in prognosis.isps] == [1_000 + v for v in evening]
    use = prognosis.sites["b"]
    assert use.state == "substituted"
    assert use.age == timedelta(days=1)
    assert use.shift_days == 1
    assert use.substituted == tuple(ISPS)
    assert prognosis.substituted_sites == ("b",)
    assert all(i.substituted == ("b",) for i in prognosis.isps)


def test_the_newest_covering_forecast_wins_over_an_older_one() -> None:
    prognosis = aggregate_prognosis(
        CP,
        ["a"],
        {
            "a": [
                forecast("a", DAY_AHEAD, [1_000.0] * 96, made_at=NOW - timedelta(hours=6)),
                forecast("a", DAY_AHEAD, [1_500.0] * 96),
            ]
        },
        ISPS,
        NOW,
    )
    assert {i.p50_w for i in prognosis.isps} == {1_500}


def test_a_site_with_nothing_usable_is_missing_and_left_out_of_the_sums() -> None:
    long_ago = DAY_AHEAD - timedelta(days=9)
    prognosis = aggregate_prognosis(
        CP,
        ["a", "b", "c"],
        {
            "a": [forecast("a", DAY_AHEAD, [1_000.0] * 96)],
            "b": [forecast("b", long_ago, [9_000.0] * 96, made_at=NOW - timedelta(days=10))],
            "c": [forecast("c", DAY_AHEAD, [9_000.0] * 96, cp="ean.000000000000000001")],
        },
        ISPS,
        NOW,
    )
    assert {i.p50_w for i in prognosis.isps} == {1_000}
    assert prognosis.missing_sites == ("b", "c")
    assert not prognosis.complete
    assert prognosis.isps[0].missing == ("b", "c")


def test_a_partly_covered_day_is_fresh_where_covered_and_substituted_elsewhere() -> None:
    prognosis = aggregate_prognosis(
        CP,
        ["a"],
        {"a": [forecast("a", DAY_AHEAD - timedelta(hours=12), [800.0] * 96)]},
        ISPS,
        NOW,
    )
    use = prognosis.sites["a"]
    assert use.state == "substituted"
    # Covered: 00:00..11:45 of the day (48 ISPs); the afternoon from the day before.
    assert use.substituted == tuple(ISPS[48:])
    assert {i.p50_w for i in prognosis.isps} == {800}


def test_the_newest_forecast_substitutes_even_from_a_later_day() -> None:
    old = NOW - timedelta(days=2)
    prognosis = aggregate_prognosis(
        CP,
        ["a"],
        {
            "a": [
                forecast("a", DAY_AHEAD - timedelta(days=1), [100.0] * 96, made_at=old),
                forecast("a", DAY_AHEAD + timedelta(days=1), [300.0] * 96),
            ]
        },
        ISPS,
        NOW + timedelta(hours=1),
    )
    use = prognosis.sites["a"]
    assert use.state == "substituted"
    assert {i.p50_w for i in prognosis.isps} == {300.0}
    assert use.age == timedelta(hours=1)
    assert use.shift_days == 1


def test_a_correlation_of_one_adds_the_bands() -> None:
    assert combine_deviation([300.0, 400.0], 1.0) == 700
    assert combine_deviation([300.0, 400.0], 0.0) == 500
    assert combine_deviation([], 0.5) == 0
    with pytest.raises(ValueError, match="correlation"):
        combine_deviation([1.0], 1.5)


def test_an_off_grid_or_repeated_isp_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="grid"):
        aggregate_prognosis(CP, ["a"], {}, [DAY_AHEAD + timedelta(minutes=5)], NOW)
    with pytest.raises(ValueError, match="distinct"):
        aggregate_prognosis(CP, ["a"], {}, [DAY_AHEAD, DAY_AHEAD], NOW)


# --- properties --------------------------------------------------------------------------------

watts = st.floats(min_value=0, max_value=50_000, allow_nan=False)
spread = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@st.composite
def site_forecasts(draw: st.DrawFn) -> list[tuple[float, float, float]]:
    """Per site: (p50, below, above) for one ISP."""
    return draw(st.lists(st.tuples(watts, spread, spread), min_size=1, max_size=12))


def _one_isp(values: list[tuple[float, float, float]], correlation: float) -> tuple[float, ...]:
    sites = [f"s{i}" for i in range(len(values))]
    prognosis = aggregate_prognosis(
        CP,
        sites,
        {
            site: [forecast(site, DAY_AHEAD, [p50], below=below, above=above)]
            for site, (p50, below, above) in zip(sites, values, strict=True)
        },
        [DAY_AHEAD],
        NOW,
        correlation=correlation,
    )
    isp = prognosis.isps[0]
    return isp.p10_w, isp.p50_w, isp.p90_w


@given(site_forecasts(), st.floats(min_value=0, max_value=1))
@settings(max_examples=150, deadline=None)
def test_the_aggregate_band_lies_between_the_widest_site_and_the_sum_of_the_sites(
    values: list[tuple[float, float, float]], correlation: float
) -> None:
    p10, p50, p90 = _one_isp(values, correlation)
    assert p50 == pytest.approx(math.fsum(p for p, _, _ in values))
    assert p10 <= p50 <= p90
    below = [b for _, b, _ in values]
    assert p50 - p10 <= math.fsum(below) + 1e-6
    assert p50 - p10 >= max(below) - 1e-6
    assert p90 - p50 <= math.fsum(a for _, _, a in values) + 1e-6
    assert p90 - p50 >= max(a for _, _, a in values) - 1e-6


@given(site_forecasts())
@settings(max_examples=100, deadline=None)
def test_one_site_alone_is_its_own_prognosis_and_the_site_order_does_not_matter(
    values: list[tuple[float, float, float]],
) -> None:
    p50, below, above = values[0]
    assert _one_isp([values[0]], 0.3) == pytest.approx((p50 - below, p50, p50 + above))
    assert _one_isp(values, 0.3) == pytest.approx(_one_isp(list(reversed(values)), 0.3))


@given(site_forecasts(), st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
@settings(max_examples=100, deadline=None)
def test_a_higher_correlation_never_narrows_the_band(
    values: list[tuple[float, float, float]], rho_a: float, rho_b: float
) -> None:
    low, high = sorted((rho_a, rho_b))
    p10_low, _, p90_low = _one_isp(values, low)
    p10_high, _, p90_high = _one_isp(values, high)
    assert p10_high <= p10_low + 1e-6
    assert p90_high >= p90_low - 1e-6


@given(
    st.lists(st.sampled_from(["fresh", "yesterday", "stale", "none"]), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=96),
)
@settings(max_examples=100, deadline=None)
def test_every_site_is_flagged_by_what_it_had_and_the_sum_is_over_the_sites_with_a_value(
    kinds: list[str], length: int
) -> None:
    sites = [f"s{i}" for i in range(len(kinds))]
    starts = {"fresh": DAY_AHEAD, "yesterday": DAY_AHEAD - timedelta(days=1)}
    forecasts = {}
    for i, (site, kind) in enumerate(zip(sites, kinds, strict=True)):
        if kind == "stale":
            forecasts[site] = [forecast(site, DAY_AHEAD - timedelta(days=30), [1.0 + i] * 96)]
        elif kind in starts:
            forecasts[site] = [forecast(site, starts[kind], [1.0 + i] * 96)]
    prognosis = aggregate_prognosis(CP, sites, forecasts, ISPS[:length], NOW)
    expected_state = {"fresh": "fresh", "yesterday": "substituted", "stale": "missing"}
    for site, kind in zip(sites, kinds, strict=True):
        use = prognosis.sites[site]
        assert use.state == expected_state.get(kind, "missing")
        assert (use.age is not None) == (kind == "yesterday")
        for isp in prognosis.isps:
            assert (site in isp.missing) == (kind in ("stale", "none"))
            assert (site in isp.substituted) == (kind == "yesterday")
    with_value = [1.0 + i for i, k in enumerate(kinds) if k in starts]
    assert all(isp.p50_w == pytest.approx(math.fsum(with_value)) for isp in prognosis.isps)
