"""Energy per ISP: every Wh the register counted lands in exactly one ISP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.site.energy import EnergyAccumulator, isp_start, split_energy

T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
ISP = 900


def test_split_across_two_isps() -> None:
    parts = split_energy(T0 + timedelta(minutes=10), T0 + timedelta(minutes=20), 1000.0, ISP)
    assert parts == [(T0, 500.0), (T0 + timedelta(minutes=15), 500.0)]


def test_zero_length_interval_keeps_energy() -> None:
    assert split_energy(T0, T0, 5.0, ISP) == [(T0, 5.0)]
    assert split_energy(T0, T0, 0.0, ISP) == []


def test_rejects_backwards_interval_and_negative_energy() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        split_energy(T0, T0 - timedelta(seconds=1), 1.0, ISP)
    with pytest.raises(ValueError, match="negative energy"):
        split_energy(T0, T0, -1.0, ISP)


def test_register_reset_is_not_negative_energy() -> None:
    acc = EnergyAccumulator(ISP)
    acc.add("cp1", T0, 10_000)
    acc.add("cp1", T0 + timedelta(minutes=5), 10_500)
    acc.add("cp1", T0 + timedelta(minutes=6), 20)  # meter replaced
    acc.add("cp1", T0 + timedelta(minutes=7), 120)
    assert acc.drain() == {("cp1", T0): pytest.approx(600.0)}
    assert acc.resets == 1


def test_out_of_order_reading_is_ignored() -> None:
    acc = EnergyAccumulator(ISP)
    acc.add("cp1", T0, 0)
    acc.add("cp1", T0 + timedelta(minutes=10), 100)
    acc.add("cp1", T0 + timedelta(minutes=5), 50)
    acc.add("cp1", T0 + timedelta(minutes=14), 140)
    assert acc.drain() == {("cp1", T0): pytest.approx(140.0)}


@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=7200), st.floats(0, 50_000)),
        min_size=1,
        max_size=40,
    )
)
def test_energy_is_conserved(steps: list[tuple[int, float]]) -> None:
    acc = EnergyAccumulator(ISP)
    at, register = T0 + timedelta(seconds=123), 1000.0
    acc.add("m", at, register)
    for seconds, wh in steps:
        at += timedelta(seconds=seconds)
        register += wh
        acc.add("m", at, register)
    drained = acc.drain()
    assert sum(drained.values()) == pytest.approx(register - 1000.0, rel=1e-9, abs=1e-6)
    assert all(v >= 0 for v in drained.values())
    assert all(isp_start(b, ISP) == b for (_, b) in drained)


def test_reported_power_puts_a_cap_in_its_own_isp() -> None:
    # 30 kW until the boundary at 08:15, 10 kW after it; readings at 08:14 and 08:16.
    before, after = T0 + timedelta(minutes=14), T0 + timedelta(minutes=16)
    wh = 30_000 / 60 + 10_000 / 60
    parts = split_energy(before, after, wh, ISP, 30_000, 10_000)
    assert parts == [
        (T0, pytest.approx(500.0)),
        (T0 + timedelta(minutes=15), pytest.approx(10_000 / 60)),
    ]


@given(
    st.integers(0, 3600),
    st.integers(1, 7200),
    st.floats(0, 50_000),
    st.floats(0, 50_000),
    st.floats(0, 50_000),
)
def test_weighted_split_conserves_energy(
    offset: int, length: int, wh: float, p0: float, p1: float
) -> None:
    start = T0 + timedelta(seconds=offset)
    parts = split_energy(start, start + timedelta(seconds=length), wh, ISP, p0, p1)
    assert sum(v for _, v in parts) == pytest.approx(wh, rel=1e-9, abs=1e-9)
    assert all(v >= 0 for _, v in parts)
