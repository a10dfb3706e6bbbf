"""The simulated station's composite schedule, as OCPP 1.6 §3.13 and 2.0.1 K01/K08 describe it.

Hand-made profiles with known answers, then properties over random profile sets: the
composite is the step function of the point-wise limit, changes only at the change points
the station reports, a station never allows more than its station-wide maximum, only
profiles valid at a moment (validFrom inclusive, validTo exclusive) have a say, and a
profile above every other of its purpose decides that purpose while it is valid.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_bridge.simulator import (
    DEFAULT_LIMIT_A,
    ProfileRefused,
    ProfileStore,
    StoredProfile,
    StoreLimits,
    share_current,
    stored_profile,
)

T0 = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)
MAX16 = "ChargePointMaxProfile"
TXD = "TxDefaultProfile"
TX = "TxProfile"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def profile(
    profile_id: int,
    purpose: str,
    limit: float,
    *,
    evse: int = 0,
    level: int = 0,
    start: datetime | None = T0,
    periods: list[tuple[int, float]] | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    unit: str = "A",
    phases: int = 3,
    kind: str = "Absolute",
    recurrency: str | None = None,
    duration_s: int | None = None,
    transaction_id: str | None = None,
) -> StoredProfile:
    steps = periods or [(0, limit)]
    return StoredProfile(
        profile_id=profile_id,
        evse_id=evse,
        stack_level=level,
        purpose=purpose,
        valid_from=valid_from,
        valid_to=valid_to,
        start=start,
        unit=unit,
        periods=[(o, v, phases) for o, v in steps],
        transaction_id=transaction_id,
        kind=kind,
        recurrency=recurrency,
        duration_s=duration_s,
    )


def store(*profiles: StoredProfile, evses: int = 1, **kwargs: Any) -> ProfileStore:
    s = ProfileStore(range(1, evses + 1), limits=StoreLimits(units=frozenset("AW")), **kwargs)
    for p in profiles:
        s.check(p)
        s.install(p)
    return s


# --- stacking and validity -------------------------------------------------------------------


def test_nothing_installed_means_the_default_limit() -> None:
    assert store().limit_a_at(T0, 1) == DEFAULT_LIMIT_A
    assert store(evses=2).limit_a_at(T0, 0) == 2 * DEFAULT_LIMIT_A


def test_the_highest_valid_stack_level_wins_within_a_purpose() -> None:
    s = store(
        profile(1, MAX16, 10),
        profile(2, MAX16, 24, level=1, valid_to=at(600)),
    )
    assert s.limit_a_at(at(0)) == 24
    assert s.limit_a_at(at(599)) == 24
    # validTo passed: the lower level rules again (the fail-safe layering of docs/architecture.md).
    assert s.limit_a_at(at(600)) == 10


def test_a_profile_is_silent_before_valid_from_and_before_its_start() -> None:
    s = store(
        profile(1, MAX16, 10),
        profile(2, MAX16, 20, level=1, valid_from=at(300)),
        profile(3, MAX16, 30, level=2, start=at(900)),
    )
    assert s.limit_a_at(at(0)) == 10
    assert s.limit_a_at(at(300)) == 20
    assert s.limit_a_at(at(900)) == 30


def test_past_its_duration_a_profile_falls_back_to_lower_levels() -> None:
    s = store(profile(1, MAX16, 10), profile(2, MAX16, 32, level=1, duration_s=1800))
    assert s.limit_a_at(at(1799)) == 32
    assert s.limit_a_at(at(1800)) == 10


def test_the_station_max_caps_tx_default_and_tx_profile() -> None:
    s = store(profile(1, MAX16, 12), profile(2, TXD, 16, level=1))
    assert s.limit_a_at(T0, 1) == 12
    s.transaction_started(1, "42", T0)
    tx = profile(3, TX, 32, evse=1, level=0, transaction_id="42")
    s.check(tx)
    s.install(tx)
    assert s.limit_a_at(T0, 1) == 12  # TxProfile overrides TxDefault, the max still caps


def test_a_tx_profile_overrides_tx_default_whatever_their_levels() -> None:
    s = store(profile(1, TXD, 16, level=3))
    s.transaction_started(1, "7", T0)
    s.install(profile(2, TX, 8, evse=1, level=0, transaction_id="7"))
    assert s.limit_a_at(T0, 1) == 8


def test_tx_profiles_end_with_their_transaction() -> None:
    s = store(profile(1, TXD, 16))
    s.transaction_started(1, "7", T0)
    s.install(profile(2, TX, 8, evse=1, transaction_id="7"))
    s.transaction_ended(1)
    assert [p.profile_id for p in s.profiles] == [1]
    assert s.limit_a_at(T0, 1) == 16


def test_an_evse_own_tx_default_beats_the_one_for_all_evses_at_equal_level() -> None:
    s = store(profile(1, TXD, 16), profile(2, TXD, 10, evse=2), evses=2)
    assert s.limit_a_at(T0, 1) == 16
    assert s.limit_a_at(T0, 2) == 10


def test_watts_are_total_power_over_the_periods_phases() -> None:
    s = store(profile(1, MAX16, 11_040, unit="W"))
    assert s.limit_a_at(T0, 1) == pytest.approx(16.0)  # 11040 / (230 x 3)
    one_phase = store(profile(1, MAX16, 7_360, unit="W", phases=1))
    assert one_phase.limit_a_at(T0, 1) == pytest.approx(32.0)


def test_daily_recurring_profiles_repeat_and_relative_ones_follow_the_transaction() -> None:
    recurring = store(
        profile(
            1,
            TXD,
            0,
            periods=[(0, 32), (3600, 6)],
            kind="Recurring",
            recurrency="Daily",
        )
    )
    assert recurring.limit_a_at(at(86_400 + 60), 1) == 32
    assert recurring.limit_a_at(at(86_400 + 3600), 1) == 6
    relative = store(profile(1, TXD, 0, periods=[(0, 32), (3600, 6)], start=None, kind="Relative"))
    relative.transaction_started(1, "9", at(7200))
    assert relative.limit_a_at(at(7200 + 3599), 1) == 32
    assert relative.limit_a_at(at(7200 + 3600), 1) == 6


def test_the_station_composite_is_min_of_station_max_and_the_sum_of_its_evses() -> None:
    s = store(profile(1, TXD, 16), evses=2)
    assert s.limit_a_at(T0, 0) == 32
    s.install(profile(2, MAX16, 20))
    assert s.limit_a_at(T0, 0) == 20


def test_composite_lists_every_change_and_merges_equal_neighbours() -> None:
    s = store(
        profile(1, MAX16, 10),
        profile(2, MAX16, 0, level=1, periods=[(0, 24), (600, 24), (1200, 0)], valid_to=at(1800)),
    )
    assert s.composite(T0, 3600) == [(0, 24.0), (1200, 0.0), (1800, 10.0)]
    assert s.next_change(T0) == at(600)  # a period boundary, even without a new value


# --- accepting and refusing -------------------------------------------------------------------


def test_same_id_or_same_level_and_purpose_replaces() -> None:
    s = store(profile(1, MAX16, 10), profile(1, MAX16, 12, level=2))
    assert [(p.profile_id, p.stack_level) for p in s.profiles] == [(1, 2)]
    s.install(profile(5, MAX16, 14, level=2))  # 1.6 §3.13.2: same level and purpose
    assert [p.profile_id for p in s.profiles] == [5]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (profile(1, TX, 16, evse=1, transaction_id="1"), "TxProfileEvseHasNoActiveTransaction"),
        (profile(1, MAX16, 16, evse=1), "InvalidEvseId"),
        (profile(1, TX, 16, evse=0), "InvalidEvseId"),
        (profile(1, TXD, 16, start=None), "ChargingProfileMissingRequiredStartSchedule"),
        (profile(1, TXD, 16, level=9), "InvalidStackLevel"),
        (profile(1, TXD, 16, periods=[(60, 16)]), "InvalidSchedule"),
        (profile(1, TXD, 16, periods=[(0, 16), (0, 8)]), "InvalidSchedule"),
        (profile(1, TXD, -1), "InvalidSchedule"),
        (profile(1, TXD, 16, evse=3), "EvseDoesNotExist"),
        (profile(1, MAX16, 16, start=None, kind="Relative"), "InvalidProfileKind"),
        (profile(1, TXD, 16, kind="Recurring"), "InvalidSchedule"),
    ],
)
def test_profiles_a_station_must_refuse(bad: StoredProfile, reason: str) -> None:
    s = store()
    with pytest.raises(ProfileRefused) as refused:
        s.check(bad)
    assert refused.value.reason == reason


def test_units_periods_and_count_follow_the_advertised_limits() -> None:
    s = ProfileStore(limits=StoreLimits(max_periods=2, max_installed=1, units=frozenset("A")))
    with pytest.raises(ProfileRefused, match="rate unit W"):
        s.check(profile(1, TXD, 11_000, unit="W"))
    with pytest.raises(ProfileRefused, match="3 periods"):
        s.check(profile(1, TXD, 0, periods=[(0, 6), (60, 8), (120, 10)]))
    s.install(profile(1, TXD, 16))
    s.check(profile(1, TXD, 10))  # replacing is fine
    with pytest.raises(ProfileRefused, match="MaxProfilesInstalled"):
        s.check(profile(2, MAX16, 10))


def test_2_0_1_refuses_overlapping_profiles_at_one_level_instead_of_replacing() -> None:
    s = store(profile(1, TXD, 16, level=1, valid_to=at(3600)), strict_2_0_1=True)
    with pytest.raises(ProfileRefused, match="DuplicateProfileValidityPeriod"):
        s.check(profile(2, TXD, 10, level=1))
    s.check(profile(1, TXD, 10, level=1))  # K01.FR.05: the same id replaces
    s.check(profile(2, TXD, 10, level=1, valid_from=at(3600)))  # no overlap
    s2 = store(profile(1, TXD, 16, level=1), evses=2, strict_2_0_1=True)
    with pytest.raises(ProfileRefused, match="DuplicateTxDefaultProfileFound"):
        s2.check(profile(3, TXD, 10, level=1, evse=2))
    s2.check(profile(3, TXD, 10, level=2, evse=2))


def test_clear_by_id_or_by_criteria() -> None:
    s = store(
        profile(1, MAX16, 10),
        profile(2, TXD, 16, level=1),
        profile(3, TXD, 12, level=2, evse=1),
    )
    assert not s.clear(profile_id=99)
    assert s.clear(profile_id=2)
    assert s.clear(purpose=TXD, evse_id=1)
    assert [p.profile_id for p in s.profiles] == [1]
    assert s.clear()  # no criteria: everything
    assert s.profiles == []


def test_received_payloads_become_stored_profiles() -> None:
    payload = {
        "charging_profile_id": 200,
        "stack_level": 1,
        "charging_profile_purpose": TXD,
        "charging_profile_kind": "Absolute",
        "valid_to": "2024-03-04T13:00:00Z",
        "charging_schedule": {
            "start_schedule": "2024-03-04T11:59:00.500Z",
            "charging_rate_unit": "A",
            "duration": 600,
            "charging_schedule_period": [{"start_period": 0, "limit": 10.5}],
        },
    }
    p = stored_profile(payload, payload["charging_schedule"], 200, 0)
    assert p.valid_to == at(3600)
    assert p.start == at(-59.5)
    assert p.periods == [(0, 10.5, 3)]
    assert p.duration_s == 600


# --- properties -------------------------------------------------------------------------------

purposes = st.sampled_from([MAX16, TXD, TX])
offsets = st.integers(min_value=-3600, max_value=7200)


@st.composite
def random_profile(draw: st.DrawFn, profile_id: int) -> StoredProfile:
    purpose = draw(purposes)
    evse = 0 if purpose == MAX16 else draw(st.sampled_from([0, 1, 2] if purpose == TXD else [1, 2]))
    starts = sorted(set(draw(st.lists(st.integers(0, 3600), min_size=1, max_size=4))))
    steps = [(0, draw(st.floats(0, 40)))] + [(o, draw(st.floats(0, 40))) for o in starts if o]
    valid_from = draw(st.none() | offsets.map(at))
    valid_to = draw(st.none() | offsets.map(at))
    return profile(
        profile_id,
        purpose,
        0,
        evse=evse,
        level=draw(st.integers(0, 3)),
        start=at(draw(offsets)),
        periods=steps,
        valid_from=valid_from,
        valid_to=valid_to,
        unit=draw(st.sampled_from(["A", "W"])),
        phases=draw(st.sampled_from([1, 3])),
        duration_s=draw(st.none() | st.integers(60, 7200)),
        transaction_id="T1" if purpose == TX else None,
    )


@st.composite
def random_store(draw: st.DrawFn) -> ProfileStore:
    s = ProfileStore((1, 2), limits=StoreLimits(units=frozenset("AW"), max_installed=50))
    s.transaction_started(1, "T1", at(-600))
    s.transaction_started(2, "T1", at(-600))
    for i in range(draw(st.integers(0, 6))):
        s.install(draw(random_profile(i + 1)))
    return s


@settings(max_examples=150, deadline=None)
@given(random_store(), st.sampled_from([0, 1, 2]), st.lists(st.integers(0, 7199), max_size=20))
def test_composite_is_the_step_function_of_the_point_limits(
    s: ProfileStore, evse: int, probes: list[int]
) -> None:
    periods = s.composite(T0, 7200, evse)
    assert periods[0][0] == 0
    assert [o for o, _ in periods] == sorted({o for o, _ in periods})
    for probe in probes:
        in_force = [limit for offset, limit in periods if offset <= probe][-1]
        assert in_force == round(s.limit_a_at(at(probe), evse), 1)


@settings(max_examples=150, deadline=None)
@given(random_store(), st.lists(st.integers(0, 7199), min_size=1, max_size=20))
def test_limits_are_never_negative_and_never_above_the_station_max(
    s: ProfileStore, probes: list[int]
) -> None:
    for probe in probes:
        moment = at(probe)
        station = s.station_max_a_at(moment)
        for evse in (0, 1, 2):
            limit = s.limit_a_at(moment, evse)
            assert limit >= 0
            if station is not None:
                assert limit <= station


@settings(max_examples=100, deadline=None)
@given(random_store(), st.integers(0, 7000))
def test_the_limit_holds_until_the_next_reported_change(s: ProfileStore, probe: int) -> None:
    moment = at(probe)
    change = s.next_change(moment)
    until = at(7200) if change is None else min(change, at(7200))
    step = max((until - moment) / 7, timedelta(microseconds=1))
    probes = [moment + step * k for k in range(7) if moment + step * k < until]
    for evse in (1, 2):
        assert {s.limit_a_at(p, evse) for p in probes} == {s.limit_a_at(moment, evse)}


def valid(p: StoredProfile, moment: datetime) -> bool:
    """validFrom inclusive, validTo exclusive (1.6 §7.9, 2.0.1 ChargingProfileType)."""
    return (p.valid_from is None or p.valid_from <= moment) and (
        p.valid_to is None or moment < p.valid_to
    )


@settings(max_examples=150, deadline=None)
@given(random_store(), st.lists(st.integers(-3600, 7199), min_size=1, max_size=10))
def test_only_the_profiles_valid_at_a_moment_have_a_say(s: ProfileStore, probes: list[int]) -> None:
    for probe in probes:
        moment = at(probe)
        in_force = ProfileStore(s.evse_ids, limits=s.limits)
        in_force.transactions = dict(s.transactions)
        in_force.profiles = [p for p in s.profiles if valid(p, moment)]
        assert in_force.station_max_a_at(moment) == s.station_max_a_at(moment)
        for evse in (0, 1, 2):
            assert in_force.limit_a_at(moment, evse) == s.limit_a_at(moment, evse)


@settings(max_examples=150, deadline=None)
@given(
    random_store(),
    st.sampled_from([MAX16, TX]),
    st.floats(0, 40),
    st.none() | offsets.map(at),
    st.none() | offsets.map(at),
    st.lists(st.integers(-3600, 7199), min_size=1, max_size=10),
)
def test_a_profile_above_all_others_of_its_purpose_bounds_the_limit_until_its_valid_to(
    s: ProfileStore,
    purpose: str,
    limit: float,
    valid_from: datetime | None,
    valid_to: datetime | None,
    probes: list[int],
) -> None:
    """The random profiles have stack levels 0..3; one more at level 4, started before every
    probe, decides its purpose wherever it is valid and has no say anywhere else."""
    before = {
        (probe, evse): s.limit_a_at(at(probe), evse) for probe in probes for evse in (0, 1, 2)
    }
    top = profile(
        99,
        purpose,
        limit,
        evse=0 if purpose == MAX16 else 1,
        level=4,
        start=at(-7200),
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id="T1" if purpose == TX else None,
    )
    s.install(top)
    for probe in probes:
        moment = at(probe)
        station = s.station_max_a_at(moment)
        if not valid(top, moment):
            for evse in (0, 1, 2):
                assert s.limit_a_at(moment, evse) == before[probe, evse]
        elif purpose == MAX16:
            assert station == limit
            for evse in (0, 1, 2):
                assert s.limit_a_at(moment, evse) <= limit
        else:
            assert s.limit_a_at(moment, 1) == (limit if station is None else min(limit, station))
    if valid_from is None and valid_to is None:
        for evse in (1,) if purpose == TX else (0, 1, 2):
            assert all(value <= round(limit, 1) for _, value in s.composite(T0, 7200, evse))


# --- sharing the station's current ------------------------------------------------------------


def test_sharing_gives_everyone_what_they_ask_when_it_fits() -> None:
    assert share_current([16, 8], 32, 6) == [16, 8]


def test_sharing_splits_equally_and_gives_the_rest_of_small_demands_to_others() -> None:
    assert share_current([16, 16], 16, 6) == [8, 8]
    assert share_current([16, 7, 16], 27, 6) == [10, 7, 10]


def test_below_the_minimum_current_an_evse_pauses_and_others_take_its_share() -> None:
    assert share_current([16, 16, 16], 16, 6) == [8, 8, 0]  # ties: the highest EVSE pauses
    assert share_current([5, 16], 32, 6) == [0, 16]
    assert share_current([16], 5, 6) == [0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0, 40), max_size=5),
    st.floats(0, 100),
    st.floats(0, 10),
)
def test_shares_fit_the_cap_the_demands_and_the_minimum(
    demands: list[float], cap: float, minimum: float
) -> None:
    shares = share_current(demands, cap, minimum)
    assert len(shares) == len(demands)
    assert sum(shares) <= cap + 1e-9
    for share, demand in zip(shares, demands, strict=True):
        assert share <= demand + 1e-9
        assert share == 0 or share >= minimum - 1e-9
    if sum(d for d in demands if d >= minimum) <= cap:
        assert shares == [d if d >= minimum and d > 0 else 0 for d in demands]


# --- independence ------------------------------------------------------------------------------


def test_the_simulator_imports_nothing_else_from_ocpp_bridge() -> None:
    """It is the independent second reading of the spec the bridge is tested against."""
    package = Path(__file__).resolve().parents[3] / "ocpp_bridge" / "simulator"
    sources = sorted(package.glob("*.py"))
    assert package / "schedule.py" in sources
    imported: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against the package
                    base = "ocpp_bridge.simulator".rsplit(".", node.level - 1)[0]
                    imported.add(f"{base}.{node.module}" if node.module else base)
                elif node.module:
                    imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    outside = {
        m
        for m in imported
        if m.split(".")[0] == "ocpp_bridge" and m.split(".")[:2] != ["ocpp_bridge", "simulator"]
    }
    assert outside == set()
