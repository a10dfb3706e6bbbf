"""ClockCheck: when the agent stops and starts trusting the wall clock, from readings alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agent.runtime.clock import ClockCheck

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def check(**kwargs: object) -> ClockCheck:
    return ClockCheck(max_step_s=300.0, settle_s=60.0, **kwargs)  # type: ignore[arg-type]


def test_a_clock_behind_the_recorded_high_water_mark_is_not_trusted_until_it_catches_up() -> None:
    c = check(high_water=T0)
    booted = T0 - timedelta(days=2000)  # a Raspberry Pi without its clock
    assert c.observe(booted, 0.0) is not None
    assert c.observe(booted + timedelta(seconds=2), 2.0) is not None
    # NTP sets the clock: the step itself is held for settle_s, then all is well.
    assert c.observe(T0 + timedelta(seconds=10), 4.0) is not None
    assert c.observe(T0 + timedelta(seconds=70), 64.0) is None
    assert c.high_water == T0 + timedelta(seconds=70)


def test_a_step_either_way_holds_for_settle_s() -> None:
    for step in (timedelta(hours=2), -timedelta(hours=2)):
        c = check()
        assert c.observe(T0, 0.0) is None
        assert c.observe(T0 + timedelta(seconds=10), 10.0) is None
        reason = c.observe(T0 + timedelta(seconds=20) + step, 20.0)
        assert reason is not None
        later = T0 + timedelta(seconds=79) + step
        assert c.observe(later, 79.0) is not None
        settled = c.observe(T0 + timedelta(seconds=81) + step, 81.0)
        # Forward: trusted after settle_s. Back: still earlier than what it read before.
        assert (settled is None) == (step > timedelta(0))


def test_a_small_backward_correction_is_tolerated() -> None:
    c = check()
    assert c.observe(T0, 0.0) is None
    assert c.observe(T0 + timedelta(seconds=9), 10.0) is None


def test_the_rate_of_a_scaled_clock_is_no_step() -> None:
    c = check(rate=720.0)
    for n in range(10):
        assert c.observe(T0 + timedelta(seconds=720 * n), float(n)) is None


@given(
    drift=st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=200),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1)),
)
def test_a_clock_that_runs_steadily_is_always_trusted(drift: list[float], start: datetime) -> None:
    c = check()
    wall, mono = start.replace(tzinfo=UTC), 100.0
    for d in drift:
        assert c.observe(wall, mono) is None
        wall += timedelta(seconds=5.0 + d)
        mono += 5.0
    assert c.high_water is not None
    assert c.high_water <= wall


@given(
    back_s=st.floats(min_value=5.1, max_value=10 * 365 * 86400.0),
    steady=st.integers(min_value=1, max_value=50),
)
def test_never_trusted_while_earlier_than_what_it_read(back_s: float, steady: int) -> None:
    c = check()
    mono = 0.0
    wall = T0
    for _ in range(steady):
        c.observe(wall, mono)
        wall += timedelta(seconds=1)
        mono += 1.0
    mark = c.high_water
    assert mark is not None
    wall = mark - timedelta(seconds=back_s)
    for _ in range(100):
        if wall >= mark - timedelta(seconds=5):
            break
        assert c.observe(wall, mono) is not None
        wall += timedelta(seconds=3600)
        mono += 3600.0
