"""When a refused schedule's back-off is cut short: only for a schedule that allows less."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ocpp_bridge.events import PowerPeriod
from ocpp_bridge.smart_charging import stricter

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SAFE_W = 4_000.0


def schedule(*steps: tuple[int, float]) -> tuple[PowerPeriod, ...]:
    return tuple(PowerPeriod(T0 + timedelta(minutes=m), w) for m, w in steps)


def test_a_lower_limit_now_is_stricter_and_a_higher_one_is_not() -> None:
    old = schedule((0, 11_000))
    assert stricter(schedule((0, 7_000)), old, T0, SAFE_W)
    assert not stricter(schedule((0, 16_000)), old, T0, SAFE_W)


def test_a_lower_limit_later_in_the_schedule_counts() -> None:
    old = schedule((0, 11_000), (30, 8_000))
    new = schedule((0, 11_000), (30, 8_000), (45, 3_000))
    assert stricter(new, old, T0, SAFE_W)


def test_rounding_between_dispatch_rounds_is_not_stricter() -> None:
    assert not stricter(schedule((0, 10_900)), schedule((0, 11_000)), T0, SAFE_W)


def test_what_lies_before_since_is_not_compared() -> None:
    old = schedule((0, 11_000), (10, 6_000))
    new = schedule((0, 2_000), (10, 6_000))
    assert not stricter(new, old, T0 + timedelta(minutes=10), SAFE_W)


def test_before_its_first_period_a_schedule_holds_the_safe_limit() -> None:
    # The new schedule starts later: until then its profile holds the safe limit, which is
    # lower than the refused 11 kW.
    assert stricter(schedule((15, 11_000)), schedule((0, 11_000)), T0, SAFE_W)


limits = st.floats(min_value=0.0, max_value=50_000.0, allow_nan=False)
steps = st.lists(st.tuples(st.integers(0, 120), limits), min_size=1, max_size=6).map(
    lambda xs: schedule(*sorted(dict(xs).items()))
)


@given(steps)
def test_a_schedule_is_never_stricter_than_itself(periods: tuple[PowerPeriod, ...]) -> None:
    assert not stricter(periods, periods, T0, SAFE_W)


@given(steps, st.floats(min_value=231.0, max_value=10_000.0))
def test_lowering_every_period_is_stricter_where_there_is_room(
    periods: tuple[PowerPeriod, ...], drop_w: float
) -> None:
    lowered = tuple(PowerPeriod(p.start, max(0.0, p.limit_w - drop_w)) for p in periods)
    # Stricter wherever a period came down by more than the rounding margin (230 W).
    room = any(min(p.limit_w, drop_w) > 230.0 for p in periods)
    assert stricter(lowered, periods, periods[0].start, SAFE_W) == room
