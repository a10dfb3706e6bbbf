"""The dispatcher's pure schedule helpers: grid values -> OCPP periods, when a push may be
skipped, and when a charger's composite schedule shows more than we sent."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agent.control.dispatch import _excess, _limit_at, _periods, _same_from
from ocpp_bridge import PowerPeriod

ISP = timedelta(minutes=15)
T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
END = T0 + 3 * ISP

limits = st.floats(min_value=-5_000.0, max_value=500_000.0, allow_nan=False)


def grid_of(count: int) -> list[datetime]:
    return [T0 + k * ISP for k in range(count)]


@given(
    values=st.lists(limits, min_size=1, max_size=40),
    offset_s=st.floats(min_value=0.0, max_value=899.999),
)
def test_periods_follow_the_grid_from_now_on(values: list[float], offset_s: float) -> None:
    grid = grid_of(len(values))
    now = T0 + timedelta(seconds=offset_s)
    periods = _periods(grid, values, now)

    assert periods[0].start == now.replace(microsecond=0)
    for before, after in itertools.pairwise(periods):
        assert before.start < after.start
        assert before.limit_w != after.limit_w  # equal neighbours are merged
    for period in periods:
        assert period.limit_w >= 0.0
        assert period.limit_w == round(period.limit_w)
    # At every ISP start from now on (and at now itself) the limit is that ISP's value.
    moments = [now] + [g for g in grid if g > now]
    for moment in moments:
        k = max(i for i, g in enumerate(grid) if g <= moment)
        assert _limit_at(periods, moment) == max(0.0, round(values[k]))


def test_periods_never_go_negative_or_unbounded() -> None:
    periods = _periods(grid_of(3), [-1.0, 7_399.6, 0.4], T0)
    assert [(p.start, p.limit_w) for p in periods] == [
        (T0, 0.0),
        (T0 + ISP, 7_400.0),
        (T0 + 2 * ISP, 0.0),
    ]


def _steps(values: list[float]) -> list[PowerPeriod]:
    return [PowerPeriod(T0 + k * ISP, v) for k, v in enumerate(values)]


@given(
    old=st.lists(st.floats(min_value=0.0, max_value=50_000.0), min_size=1, max_size=8),
    delta=st.lists(st.floats(min_value=-20_000.0, max_value=20_000.0), min_size=1, max_size=8),
)
def test_a_push_is_skipped_only_when_no_limit_goes_down(
    old: list[float], delta: list[float]
) -> None:
    new_values = [max(0.0, o + d) for o, d in zip(old, delta, strict=False)]
    old_periods = _steps(old[: len(new_values)])
    new_periods = _steps(new_values)
    skipped = _same_from(old_periods, new_periods, T0)
    lowered = any(n < o for o, n in zip(old, new_values, strict=False))
    raised_much = any(n - o > max(250.0, 0.05 * o) for o, n in zip(old, new_values, strict=False))
    assert skipped == (not lowered and not raised_much)


def test_same_schedule_is_skipped_and_a_lower_one_never() -> None:
    held = _steps([11_000.0, 4_140.0])
    assert _same_from(held, held, T0)
    assert not _same_from(held, _steps([11_000.0, 4_139.0]), T0)
    assert _same_from(held, _steps([11_100.0, 4_140.0]), T0)  # a small rise waits


def test_composite_at_or_below_what_we_sent_is_fine() -> None:
    sent = _steps([11_000.0, 4_140.0, 0.0])
    assert _excess(sent, sent, END) is None
    assert _excess(_steps([10_900.0, 4_000.0, 0.0]), sent, END) is None
    # W -> A -> W rounding on the charger's side stays inside the tolerance.
    assert _excess(_steps([11_040.0, 4_200.0, 0.0]), sent, END) is None


def test_composite_above_what_we_sent_is_reported_at_its_period() -> None:
    sent = _steps([11_000.0, 4_140.0, 0.0])
    applied = [
        PowerPeriod(T0, 11_000.0),
        PowerPeriod(T0 + ISP, 11_000.0),  # the step down was not applied
    ]
    assert _excess(applied, sent, END) == (T0 + ISP, 11_000.0, 4_140.0)
    # The same when the charger reports one period across the boundary.
    assert _excess([PowerPeriod(T0, 11_000.0)], sent, END) == (T0 + ISP, 11_000.0, 4_140.0)


def test_a_later_period_is_compared_with_the_limit_sent_for_its_time() -> None:
    # A composite read a little after a boundary starts with the next ISP's (higher) limit:
    # comparing it with the first value we sent would raise a false alarm.
    sent = _steps([4_140.0, 22_000.0])
    read_at = T0 + ISP + timedelta(seconds=20)
    applied = [PowerPeriod(read_at, 22_000.0)]
    assert _excess(applied, sent, read_at + ISP) is None


def test_clock_skew_at_a_step_down_is_not_an_excess() -> None:
    sent = _steps([22_000.0, 4_140.0])
    applied = [
        PowerPeriod(T0, 22_000.0),
        PowerPeriod(T0 + ISP - timedelta(seconds=3), 22_000.0),
        PowerPeriod(T0 + ISP + timedelta(seconds=2), 4_140.0),
    ]
    assert _excess(applied, sent, END) is None
    late = [PowerPeriod(T0, 22_000.0), PowerPeriod(T0 + ISP + timedelta(seconds=30), 22_000.0)]
    assert _excess(late, sent, END) == (T0 + ISP, 22_000.0, 4_140.0)
