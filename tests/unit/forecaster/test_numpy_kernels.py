"""The numpy twins the agent process runs equal the numba kernels exactly, and the agent's own
process never loads numba."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from forecaster import numpy_kernels as twin
from forecaster.flexibility import SessionSet, loaded_kernels
from forecaster.kernels import flex
from forecaster.kernels import sessions as session_kernels

# Round figures as well as arbitrary ones: equal laxities (the sort's tie-breaks), setpoints
# that meet the room or the minimum exactly, and sums whose rounding depends on their order.
session_rows = st.lists(
    st.tuples(
        st.integers(-4, 30),  # arrival ISP
        st.integers(0, 30),  # stay in ISPs
        st.one_of(st.sampled_from([0.0, 1_000.0, 2_760.0, 5_520.0]), st.floats(0, 60_000)),
        st.one_of(st.sampled_from([0.0, 0.125, 1.0]), st.floats(0, 1)),  # pmin / pmax
        st.one_of(st.sampled_from([1_380.0, 4_140.0, 11_040.0]), st.floats(1, 22_000)),
    ),
    min_size=0,
    max_size=30,
)
watts = st.one_of(st.sampled_from([0.0, 4_140.0, 11_040.0, 0.1]), st.floats(0, 200_000))


def kernel_arrays(
    rows: list[tuple[int, int, float, float, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sessions = SessionSet(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[0] + r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] * r[4] for r in rows], dtype=np.float64),
        np.array([r[4] for r in rows], dtype=np.float64),
    )
    return sessions.kernel_arrays()


def per_isp(values: list[float], horizon: int) -> np.ndarray:
    return np.resize(np.array(values, dtype=np.float64), horizon)


@settings(max_examples=400, deadline=None)
@given(
    rows=session_rows,
    horizon=st.integers(1, 40),
    limit=st.lists(watts, min_size=1, max_size=8),
    target=st.lists(watts, min_size=1, max_size=8),
    isp_minutes=st.sampled_from([5, 15, 30, 60]),
)
# Equal laxity (0.75 h), different departures: the earlier one goes first.
@example(
    rows=[(0, 5, 5_520.0, 0.0, 11_040.0), (0, 4, 2_760.0, 0.0, 11_040.0)],
    horizon=6,
    limit=[50_000.0],
    target=[3_000.0],
    isp_minutes=15,
)
def test_allocate_twin_equals_the_kernel(
    rows: list[tuple[int, int, float, float, float]],
    horizon: int,
    limit: list[float],
    target: list[float],
    isp_minutes: int,
) -> None:
    arrays = kernel_arrays(rows)
    dt = isp_minutes / 60.0
    lim, tgt = per_isp(limit, horizon), per_isp(target, horizon)
    expected = flex.allocate(*arrays, lim, tgt, dt)
    got = twin.allocate(*arrays, lim, tgt, dt)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(g, e)


@settings(max_examples=400, deadline=None)
@given(
    rows=session_rows,
    horizon=st.integers(1, 40),
    limit=st.lists(watts, min_size=1, max_size=8),
    isp_minutes=st.sampled_from([5, 15, 30, 60]),
)
def test_envelope_twin_equals_the_kernel(
    rows: list[tuple[int, int, float, float, float]],
    horizon: int,
    limit: list[float],
    isp_minutes: int,
) -> None:
    arrays = kernel_arrays(rows)
    dt = isp_minutes / 60.0
    lim = per_isp(limit, horizon)
    expected = flex.envelope(*arrays, lim, dt)
    got = twin.envelope(*arrays, lim, dt)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(g, e)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    count=st.integers(0, 40),
    isp_minutes=st.sampled_from([5, 15, 30, 60]),
)
def test_arrival_load_twin_equals_the_kernel(
    data: st.DataObject, count: int, isp_minutes: int
) -> None:
    isp = isp_minutes * 60
    slots = 86_400 // isp + data.draw(st.sampled_from([-60 // isp_minutes, 0, 60 // isp_minutes]))
    slot = np.array(data.draw(st.lists(st.integers(0, slots - 1), min_size=count, max_size=count)))
    kind = np.array(data.draw(st.lists(st.integers(0, 2), min_size=count, max_size=count)))
    floats = st.lists(st.floats(0, isp - 1), min_size=count, max_size=count)
    offset = np.array(data.draw(floats), dtype=np.float64)
    durations = st.lists(st.floats(0, 2 * 86_400), min_size=count, max_size=count)
    duration = np.array(data.draw(durations), dtype=np.float64)
    powers = st.lists(st.floats(1, 22_000), min_size=count, max_size=count)
    power = np.array(data.draw(powers), dtype=np.float64)
    args = (slot.astype(np.int64), kind.astype(np.int64), offset, duration, power, slots, isp)
    np.testing.assert_array_equal(twin.arrival_load(*args), session_kernels.arrival_load(*args))


def test_a_process_without_numba_gets_the_twins_and_keeps_numba_out() -> None:
    code = (
        "import sys, numpy as np\n"
        "from forecaster.flexibility import SessionSet, allocate, flexibility_envelope,"
        " loaded_kernels\n"
        "from forecaster.calendar import SiteCalendar\n"
        "from forecaster.intraday import SessionCalibration\n"
        "s = SessionSet(np.array([0]), np.array([8]), np.array([5e3]), np.array([1e3]),"
        " np.array([7e3]))\n"
        "allocate(s, np.full(8, 3e3), 2e4)\n"
        "flexibility_envelope(s, 2e4, 8)\n"
        "a = np.arange(30, dtype=np.int64) * 86_400 + 1_700_000_000\n"
        "SessionCalibration.fit(SiteCalendar.of('Europe/Amsterdam'), a, a + 30_000,"
        " np.full(30, 9e3), np.full(30, 2e4), (a + 28_000).astype(float), 7e3)\n"
        "print(loaded_kernels('forecaster.kernels.flex').__name__, 'numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["forecaster.numpy_kernels", "False"]


def test_a_process_with_numba_gets_the_compiled_kernels() -> None:
    assert loaded_kernels("forecaster.kernels.flex") is flex
