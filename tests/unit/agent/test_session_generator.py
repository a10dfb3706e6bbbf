"""The simulated site's sessions: drawn from the real Caltech sessions, reproducible, plausible.

Plausibility is checked against the source itself (sessions per EVSE per day, morning arrivals,
energies), not against numbers typed in here.
"""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.demo.pool import ATTRIBUTION, POOL_FILE, SessionPool, SessionPoolError
from agent.demo.simulation import (
    CHANGEOVER,
    EV_MIX,
    PlannedSession,
    SessionGenerator,
    charger_config,
    charger_records,
    default_fleet,
    drawn_power_w,
)
from agent.runtime.config import ChargerConfig
from forecaster.calendar import CalendarError
from ocpp_bridge.passwords import ScryptParameters, verify_password
from ocpp_bridge.simulator import ProtocolName

DATA = Path(__file__).resolve().parents[2] / "data" / "acn-caltech"
SOURCES = sorted(DATA.glob("*.csv.gz"))
ZONE = "Europe/Amsterdam"
MONDAY = date(2024, 6, 3)


@pytest.fixture(scope="module")
def pool() -> SessionPool:
    return SessionPool.read()


@pytest.fixture(scope="module")
def generator(pool: SessionPool) -> SessionGenerator:
    return SessionGenerator(default_fleet(), ZONE, seed=7, pool=pool)


def key(s: PlannedSession) -> tuple[object, ...]:
    return (s.arrival, s.departure, s.energy_needed_wh, s.ev_max_power_w, s.id_token)


# --- the packaged pool ---------------------------------------------------------------------------


def test_the_packaged_pool_is_what_the_vendored_caltech_files_give(tmp_path: Path) -> None:
    fresh = tmp_path / "pool.csv.gz"
    SessionPool.derive(SOURCES).write(fresh)
    packaged = resources.files("agent.demo").joinpath(POOL_FILE).read_bytes()
    assert gzip.decompress(fresh.read_bytes()) == gzip.decompress(packaged)


def test_the_pool_carries_its_attribution_and_source_facts(pool: SessionPool) -> None:
    text = gzip.decompress(resources.files("agent.demo").joinpath(POOL_FILE).read_bytes()).decode()
    assert text.startswith(f"# {ATTRIBUTION}\n")
    assert "CC BY 4.0" in ATTRIBUTION
    assert pool.source_evses == 53  # distinct station_id in the Caltech files
    assert pool.count == 6_704
    assert pool.days[0] == date(2019, 5, 1)
    assert pool.days[-1] == date(2019, 12, 31)
    assert int(pool.day_start[-1]) == pool.count
    assert np.all(pool.energy_wh > 0)
    assert np.all(pool.stay_s > 0)


def test_a_damaged_pool_file_is_refused_with_its_name_and_line(tmp_path: Path) -> None:
    good = gzip.decompress(resources.files("agent.demo").joinpath(POOL_FILE).read_bytes()).decode()
    lines = good.splitlines()
    lines[6] = lines[6].replace(",", ",x", 1)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(SessionPoolError, match=r"bad\.csv\.gz:7"):
        SessionPool.read(bad)
    not_gzip = tmp_path / "plain.csv.gz"
    not_gzip.write_text(good)
    with pytest.raises(SessionPoolError, match="not a gzip"):
        SessionPool.read(not_gzip)


# --- reproducible --------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_day_and_another_seed_another(pool: SessionPool) -> None:
    fleet = default_fleet()
    first = SessionGenerator(fleet, ZONE, seed=7, pool=pool).plan(MONDAY)
    again = SessionGenerator(fleet, ZONE, seed=7, pool=pool).plan(MONDAY)
    other = SessionGenerator(fleet, ZONE, seed=8, pool=pool).plan(MONDAY)
    assert first == again
    assert first.sessions
    assert [key(s) for s in first.sessions] != [key(s) for s in other.sessions]


def test_a_days_draw_does_not_depend_on_the_other_days_drawn(generator: SessionGenerator) -> None:
    alone = {key(s) for s in generator.plan(MONDAY).sessions}
    week = generator.plan(MONDAY - timedelta(days=3), 7)
    midnight = datetime(2024, 6, 3, tzinfo=ZoneInfo(ZONE))
    inside = {key(s) for s in week.sessions if midnight <= s.arrival < midnight + timedelta(days=1)}
    assert inside <= alone
    assert len(alone - inside) <= week.turned_away  # only a full site can tell them apart


# --- plausible -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eight_weeks(generator: SessionGenerator) -> list[PlannedSession]:
    return list(generator.plan(date(2024, 4, 1), 56).sessions)


def test_no_departure_before_arrival_and_every_ev_needs_energy(
    eight_weeks: list[PlannedSession],
) -> None:
    assert eight_weeks
    for s in eight_weeks:
        assert s.departure > s.arrival
        assert s.energy_needed_wh > 0
        assert s.ev_max_power_w > 0
        assert s.arrival.tzinfo is not None
        if s.stated_departure is not None:
            assert s.stated_departure > s.arrival
        if s.requested_energy_wh is not None:
            assert s.requested_energy_wh > 0


def test_an_evse_never_holds_two_evs(eight_weeks: list[PlannedSession]) -> None:
    by_evse: dict[tuple[str, int], list[PlannedSession]] = {}
    for s in eight_weeks:
        by_evse.setdefault((s.charger_id, s.evse_id), []).append(s)
    for visits in by_evse.values():
        visits.sort(key=lambda s: s.arrival)
        for before, after in itertools.pairwise(visits):
            assert after.arrival >= before.departure + CHANGEOVER


def test_weekdays_are_as_busy_per_evse_as_caltech_and_weekends_quieter(
    pool: SessionPool, eight_weeks: list[PlannedSession]
) -> None:
    zone = ZoneInfo(ZONE)
    evses = sum(s.evse_count for s in default_fleet())
    per_day = Counter(s.arrival.astimezone(zone).date() for s in eight_weeks)
    days = [date(2024, 4, 1) + timedelta(days=d) for d in range(56)]
    weekday = np.mean([per_day[d] for d in days if d.weekday() < 5]) / evses
    weekend = np.mean([per_day[d] for d in days if d.weekday() >= 5]) / evses
    source_counts = np.diff(pool.day_start)
    source_weekday = source_counts[pool.day_types == 0].mean() / pool.source_evses
    assert weekday == pytest.approx(source_weekday, rel=0.25)
    assert weekend < 0.6 * weekday


def test_arrivals_keep_their_local_clock_time_and_energies_their_distribution(
    pool: SessionPool, eight_weeks: list[PlannedSession]
) -> None:
    zone = ZoneInfo(ZONE)
    local = [s.arrival.astimezone(zone) for s in eight_weeks]
    seconds = {t.hour * 3600 + t.minute * 60 + t.second for t in local}
    assert seconds <= set(pool.arrival_s.tolist())  # every arrival is a real one's clock time
    morning = sum(1 for t in local if 6 <= t.hour < 11) / len(local)
    source_morning = np.mean((pool.arrival_s >= 6 * 3600) & (pool.arrival_s < 11 * 3600))
    assert morning == pytest.approx(source_morning, abs=0.1)
    energies = np.array([s.energy_needed_wh for s in eight_weeks])
    assert np.median(energies) == pytest.approx(np.median(pool.energy_wh), rel=0.25)


def test_the_ev_mix_follows_its_shares(eight_weeks: list[PlannedSession]) -> None:
    seen = Counter((s.ev_max_power_w, s.ev_phases) for s in eight_weeks)
    for power, phases, share in EV_MIX:
        assert seen[(power, phases)] / len(eight_weeks) == pytest.approx(share, abs=0.07)


def test_arrivals_keep_local_time_across_a_dst_change(generator: SessionGenerator) -> None:
    spring = date(2024, 3, 31)  # Europe/Amsterdam: 02:00 -> 03:00
    zone = ZoneInfo(ZONE)
    plan = generator.plan(spring)
    for s in plan.sessions:
        wall = s.arrival.astimezone(zone)
        if wall.hour >= 4:
            assert wall.utcoffset() == timedelta(hours=2)
    assert generator.power_history(spring, 1).length == 92
    assert generator.power_history(date(2024, 10, 27), 1).length == 100


def test_more_occupancy_means_more_drivers(pool: SessionPool) -> None:
    fleet = default_fleet()
    normal = SessionGenerator(fleet, ZONE, seed=3, pool=pool).plan(MONDAY, 14)
    busy = SessionGenerator(fleet, ZONE, seed=3, pool=pool, occupancy=2.0).plan(MONDAY, 14)
    assert len(busy.sessions) + busy.turned_away > 1.5 * len(normal.sessions)


# --- power history -------------------------------------------------------------------------------


def reference_asap(
    sessions: list[PlannedSession], power: list[float], start: datetime, isps: int
) -> list[float]:
    """Pure-Python ASAP charging on a 15-minute grid: the test's own reading."""
    out = [0.0] * isps
    t0 = start.timestamp()
    for s, p in zip(sessions, power, strict=True):
        begin = s.arrival.timestamp()
        stay = s.departure.timestamp() - begin
        duration = min(stay, s.energy_needed_wh * 3600 / p)
        rate = s.energy_needed_wh * 3600 / duration if duration == stay else p
        for k in range(isps):
            lo = max(begin, t0 + k * 900)
            hi = min(begin + duration, t0 + (k + 1) * 900)
            if hi > lo:
                out[k] += rate * (hi - lo) / 900
    return out


def test_power_history_is_asap_charging_of_the_same_sessions(generator: SessionGenerator) -> None:
    first = date(2024, 5, 6)
    history = generator.power_history(first, 3)
    assert history.values.shape == (len(generator.fleet), 3 * 96)
    plan = generator.plan(first - timedelta(days=1), 4)
    specs = {spec.charger_id: spec for spec in generator.fleet}
    for row, spec in enumerate(generator.fleet):
        mine = [s for s in plan.sessions if s.charger_id == spec.charger_id]
        power = [drawn_power_w(specs[s.charger_id], s) for s in mine]
        expected = reference_asap(mine, power, history.start, history.length)
        assert history.values[row] == pytest.approx(
            expected, rel=1e-7, abs=1e-6
        )  # epoch-second rounding
    site = history.values.sum(axis=0)
    assert site.max() <= sum(spec.max_power_w * spec.evse_count for spec in generator.fleet)
    assert np.all(site >= 0)


def test_an_ev_draws_what_it_and_its_evse_allow() -> None:
    [spec] = default_fleet(1)  # 16 A, three phases
    arrival = datetime(2024, 6, 3, 8, tzinfo=ZoneInfo(ZONE))

    def ev(power_w: float, phases: int) -> PlannedSession:
        return PlannedSession("DEMO-001", 1, arrival, arrival, 1, power_w, phases, "T")

    assert drawn_power_w(spec, ev(7_400, 1)) == pytest.approx(16 * 230)  # one phase only
    assert drawn_power_w(spec, ev(22_000, 3)) == pytest.approx(16 * 690)  # the EVSE caps
    assert drawn_power_w(spec, ev(3_600, 1)) == pytest.approx(3_600)  # the EV's own limit


# --- the fleet -----------------------------------------------------------------------------------


def test_the_default_fleet_mixes_versions_powers_and_evse_counts() -> None:
    fleet = default_fleet()
    assert len(fleet) == 20
    assert len({s.charger_id for s in fleet}) == 20
    assert {s.protocol for s in fleet} == {ProtocolName.OCPP16, ProtocolName.OCPP201}
    assert {s.max_power_w for s in fleet} == {16 * 690, 32 * 690}
    assert {s.evse_count for s in fleet} == {1, 2}
    kinds = {(s.protocol, s.max_current_a) for s in fleet}
    assert len(kinds) == 4  # 22 kW stations of both versions
    with pytest.raises(ValueError, match="at least one"):
        default_fleet(0)


def test_the_fleet_becomes_valid_agent_configuration_and_bridge_records() -> None:
    fleet = default_fleet(6)
    for entry in charger_config(fleet):
        ChargerConfig.model_validate(entry)
    records = charger_records(fleet, 7_000, "x" * 20, ScryptParameters(n=2**10))
    assert [r.charger_id for r in records] == [s.charger_id for s in fleet]
    two = next(r for r, s in zip(records, fleet, strict=True) if s.evse_count == 2)
    assert two.electrical.max_current_a == 32  # the station's supply, both EVSEs
    assert verify_password("x" * 20, records[0].password_hash or "")


def test_bad_generator_input_is_refused() -> None:
    fleet = default_fleet(2)
    with pytest.raises(CalendarError, match="Mars/Olympus"):
        SessionGenerator(fleet, "Mars/Olympus")
    with pytest.raises(ValueError, match="occupancy"):
        SessionGenerator(fleet, ZONE, occupancy=0)
    with pytest.raises(ValueError, match="fleet"):
        SessionGenerator([], ZONE)
    with pytest.raises(ValueError, match="days"):
        SessionGenerator(fleet, ZONE).plan(MONDAY, 0)
