"""A plan never pauses a plugged-in EV by itself: property tests from the allocation to the
SetChargingProfile payload a charger receives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.dispatch import _periods, allocate_limits, keep_charging
from agent.site.forecasting import SessionNeed
from agent.site.model import ActiveSession
from ocpp_bridge import SessionInfo
from ocpp_bridge.capabilities import DEFAULTS, Purpose, RateUnit
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.profiles import (
    ElectricalData,
    Layer,
    ProfileTarget,
    build_dynamic_profile,
    limit_in_unit,
)

ISP = timedelta(minutes=15)
T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
ELECTRICAL = ElectricalData(
    phases=3, nominal_voltage_v=230.0, min_current_a=6.0, max_current_a=16.0
)
PMIN = 6.0 * 690.0
PMAX = 16.0 * 690.0
VALIDITY = timedelta(seconds=900)
TAIL_S = 150.0


def need(i: int, energy_wh: float, leave: datetime, one_phase: bool) -> SessionNeed:
    info = SessionInfo(f"C{i}/1", f"C{i}", 1, "1", None, T0 - ISP)
    factor = 3.0 if one_phase else 1.0
    return SessionNeed(
        ActiveSession(info, "cp"), leave, energy_wh, PMIN / factor, PMAX / factor, factor
    )


sessions = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=40_000.0),  # energy still wanted
        st.integers(min_value=1, max_value=12),  # leaves after this many ISPs
        st.booleans(),  # one-phase car
        st.sampled_from([PMIN, 6_900.0, PMAX]),  # the charger's safe limit
    ),
    min_size=1,
    max_size=4,
)
caps = st.lists(
    st.sampled_from([0.0, 2_000.0, 5_000.0, 9_000.0, 20_000.0, 150_000.0]),
    min_size=2,
    max_size=10,
)


@settings(deadline=None, max_examples=150)
@given(
    rows=sessions,
    cap_values=caps,
    offset_s=st.integers(min_value=0, max_value=899),
)
def test_the_last_period_of_every_profile_keeps_a_plugged_in_ev_charging_within_the_safe_level(
    rows: list[tuple[float, int, bool, float]], cap_values: list[float], offset_s: int
) -> None:
    """For any plan: the last period of each EV's dynamic profile is above 0 unless the cap
    (an order or the site limit) leaves no room for the EV's minimum, and never above the
    level the charger's safe layer allows."""
    grid = [T0 + k * ISP for k in range(len(cap_values))]
    now = T0 + timedelta(seconds=offset_s)
    cap = np.array(cap_values)
    needs = [
        need(i, energy, max(now + ISP, T0 + leave * ISP), one_phase)
        for i, (energy, leave, one_phase, _) in enumerate(rows)
    ]
    safe = [s for *_, s in rows]
    limits, used, _ = allocate_limits(needs, grid[0], cap, 15, safe)
    assert np.all(used <= cap + 1e-6)  # the fill never breaks the site cap
    drawn = [limit / n.limit_factor for n, limit in zip(needs, limits, strict=True)]
    valid_to = min(grid[-1] + ISP, now + VALIDITY)
    for i, n in enumerate(needs):
        periods = _periods(grid, limits[i], now)
        built = build_dynamic_profile(
            ProtocolVersion.OCPP16,
            ProfileTarget(Layer.DYNAMIC, Purpose.STATION_MAX, 0),
            DEFAULTS,
            ELECTRICAL,
            periods,
            now,
            valid_to,
            1,
            fill_limit_w=safe[i],
            tail_s=TAIL_S,
        )
        start, last = built.limits[-1]
        assert last <= limit_in_unit(safe[i], RateUnit.AMPS, ELECTRICAL)
        if last == 0:
            k = max(j for j, g in enumerate(grid) if g <= max(start, now))
            others = sum(d[k] for j, d in enumerate(drawn) if j != i)
            assert cap[k] - others < n.pmin_w, (k, cap[k], others, n.pmin_w)


def test_an_ev_whose_estimated_need_is_met_keeps_charging_at_its_safe_share() -> None:
    """The allocation gives a car its estimated 2 kWh in the first ISP and nothing after;
    the car keeps its charger's safe limit in the following ISPs instead of a pause."""
    grid = [T0 + k * ISP for k in range(4)]
    cap = np.full(4, 150_000.0)
    (limit,), _, _ = allocate_limits([need(0, 2_000.0, T0 + 8 * ISP, False)], T0, cap, 15, [6_900])
    assert limit[0] >= 2_000.0 * 4  # its energy as early as it can
    assert list(limit[1:]) == [6_900.0] * 3
    assert all(p.limit_w > 0 for p in _periods(grid, limit, T0))


def test_keep_charging_shares_only_the_room_the_cap_leaves() -> None:
    schedule = np.array([[0.0, 0.0], [0.0, 0.0]])
    out = keep_charging(
        schedule,
        np.array([4_140.0, 4_140.0]),
        np.array([6_900.0, 6_900.0]),
        np.array([10_000.0, 3_000.0]),
    )
    # ISP 0: the first gets its level, the second the 3100 W left, below its minimum: 0.
    # ISP 1: 3000 W of room is below either minimum, so neither is raised.
    assert out.tolist() == [[6_900.0, 0.0], [0.0, 0.0]]
