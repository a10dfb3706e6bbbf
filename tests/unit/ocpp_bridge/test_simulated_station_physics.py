"""What a simulated station's EVs draw and what its meter counts, without a network.

The station is never started here: the tests move a manual clock and let the station step to
it, so energy, fill-up and departure times can be checked exactly. (Over real sockets against
the bridge: tests/integration/ocpp_bridge/test_simulated_station.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ocpp_bridge.simulator import (
    ProtocolName,
    SimulatedStation,
    StationSpec,
    StoredProfile,
)

T0 = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)


class ManualClock:
    def __init__(self) -> None:
        self.moment = T0

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("these tests move the clock themselves")

    def to(self, seconds: float) -> datetime:
        self.moment = T0 + timedelta(seconds=seconds)
        return self.moment


def station(
    protocol: ProtocolName = ProtocolName.OCPP16, evses: int = 1, **spec: object
) -> tuple[SimulatedStation, ManualClock]:
    clock = ManualClock()
    sim = SimulatedStation(
        StationSpec("CP1", protocol, evse_count=evses, **spec),  # type: ignore[arg-type]
        "ws://127.0.0.1:1/ocpp",
        clock=clock,
    )
    return sim, clock


def limit(
    sim: SimulatedStation, amps: float, purpose: str = "ChargePointMaxProfile", level: int = 0
) -> None:
    """Install a profile the way a SetChargingProfile handler does."""
    sim.profiles_changing()
    sim.store.install(
        StoredProfile(
            profile_id=100 + level,
            evse_id=0,
            stack_level=level,
            purpose=purpose,
            valid_from=None,
            valid_to=None,
            start=T0 - timedelta(days=1),
            unit="A",
            periods=[(0, amps, 3)],
        )
    )
    sim.profiles_changed()


def test_an_ev_draws_its_own_maximum_when_the_station_allows_more() -> None:
    sim, clock = station()
    sim.plug_in(1, 50_000, 11_000, T0 + timedelta(hours=8), "TAG")
    sim._step(clock.to(1800))
    assert sim.power_w(1) == 11_000
    assert sim.energy_wh(1) == pytest.approx(5_500)
    assert sim.evses[1].state == "Charging"


def test_the_station_hardware_limits_a_faster_ev() -> None:
    sim, _ = station(max_current_a=16)
    sim.plug_in(1, 50_000, 22_000, T0 + timedelta(hours=8), "TAG")
    assert sim.power_w(1) == pytest.approx(16 * 230 * 3)


def test_a_one_phase_ev_draws_on_one_phase_only() -> None:
    sim, _ = station(max_current_a=16)
    sim.plug_in(1, 50_000, 7_400, T0 + timedelta(hours=8), "TAG", ev_phases=1)
    assert sim.power_w(1) == pytest.approx(16 * 230)
    assert sim._phase_currents(sim.evses[1]) == (16.0,)


def test_a_full_ev_stops_drawing_and_stays_until_its_departure() -> None:
    sim, clock = station()
    ev = sim.plug_in(1, 2_000, 11_000, T0 + timedelta(hours=2), "TAG")
    wake = sim._step(clock.to(60))
    sim._step(clock.to(3600))
    assert ev.delivered_wh == pytest.approx(2_000)
    assert ev.full_at == T0 + timedelta(seconds=2_000 * 3600 / 11_000)
    assert sim.power_w(1) == 0
    assert sim.evses[1].state == "SuspendedEV"
    assert wake is not None
    assert ev.full_at is not None
    assert wake <= ev.full_at
    sim._step(clock.to(7200))
    assert sim.session(1) is None
    assert [s.stop_reason for s in sim.sessions] == ["EVDisconnected"]
    assert sim.sessions[0].unplugged_at == T0 + timedelta(hours=2)


def test_an_ev_can_leave_as_soon_as_it_is_full() -> None:
    sim, clock = station()
    sim.plug_in(1, 2_000, 11_000, T0 + timedelta(hours=2), "TAG", unplug_when_full=True)
    sim._step(clock.to(3600))
    assert sim.session(1) is None
    assert sim.sessions[0].delivered_wh == pytest.approx(2_000)


def test_below_six_amps_the_ev_pauses() -> None:
    sim, clock = station()
    limit(sim, 5)
    sim.plug_in(1, 10_000, 11_000, T0 + timedelta(hours=2), "TAG")
    sim._step(clock.to(600))
    assert sim.power_w(1) == 0
    assert sim.evses[1].state == "SuspendedEVSE"
    assert sim.energy_wh(1) == 0


def test_a_new_limit_applies_from_the_moment_it_is_installed() -> None:
    sim, clock = station()
    sim.plug_in(1, 50_000, 11_000, T0 + timedelta(hours=8), "TAG")
    clock.to(900)
    limit(sim, 6)  # 4140 W from 15 min on
    sim._step(clock.to(1800))
    assert sim.energy_wh(1) == pytest.approx(11_000 / 4 + 4_140 / 4)
    assert sim.limit_w(1) == pytest.approx(4_140)


def test_the_station_max_is_shared_by_its_evses() -> None:
    sim, _ = station(evses=2, max_current_a=16)
    limit(sim, 20)
    sim.plug_in(1, 50_000, 11_000, T0 + timedelta(hours=8), "A")
    sim.plug_in(2, 50_000, 11_000, T0 + timedelta(hours=8), "B")
    assert sim.power_w(1) == pytest.approx(10 * 690)
    assert sim.power_w(2) == pytest.approx(10 * 690)
    assert sim.limit_w(0) == pytest.approx(20 * 690)
    limit(sim, 10)  # 5 A each would be below the minimum: one EV pauses
    assert sorted([sim.power_w(1), sim.power_w(2)]) == [0, pytest.approx(10 * 690)]


def test_meter_samples_are_clock_aligned_and_wakeups_cover_every_change() -> None:
    sim, clock = station(meter_interval_s=60)
    clock.to(10)
    sim.plug_in(1, 50_000, 11_000, T0 + timedelta(hours=8), "TAG")
    assert sim.evses[1].next_sample == T0 + timedelta(seconds=60)
    sim.store.install(
        StoredProfile(
            7, 0, 1, "ChargePointMaxProfile", None, T0 + timedelta(seconds=30), T0, "A", [(0, 8, 3)]
        )
    )
    assert sim._step(clock.to(11)) == T0 + timedelta(seconds=30)  # the profile's validTo


def test_an_offline_station_queues_transaction_messages_and_drops_status() -> None:
    sim, clock = station(meter_interval_s=60)
    sim.plug_in(1, 50_000, 11_000, T0 + timedelta(minutes=3), "TAG")
    queued = [o.what for o in sim._outbox]
    assert queued == ["start 1"]  # no status, no Authorize while offline (sent as state later)
    for second in (60, 120, 180):
        sim._step(clock.to(second))
    assert [o.what.split()[0] for o in sim._outbox] == ["start", "meter", "meter", "stop"]
    assert all(o.transactional for o in sim._outbox)


def test_a_2_0_1_station_tells_charging_states_in_transaction_events() -> None:
    sim, _ = station(ProtocolName.OCPP201)
    ev = sim.plug_in(1, 50_000, 11_000, T0 + timedelta(hours=1), "TAG", requested_energy_wh=40_000)
    kinds = [o.what.split()[0] for o in sim._outbox]
    assert kinds == ["started", "needs", "state"]
    assert ev.transaction_id is not None
    assert sim.store.transactions[1].transaction_id == ev.transaction_id


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"evse_id": 2}, "no EVSE 2"),
        ({"energy_needed_wh": 0}, "energy needed"),
        ({"ev_max_power_w": -1}, "EV max power"),
        ({"departure": T0}, "departure"),
        ({"departure": datetime(2024, 3, 5)}, "departure"),
        ({"requested_energy_wh": 0}, "requested energy"),
    ],
)
def test_bad_plug_ins_are_refused_with_the_offending_value(
    kwargs: dict[str, object], message: str
) -> None:
    sim, _ = station()
    args: dict[str, object] = {
        "evse_id": 1,
        "energy_needed_wh": 10_000,
        "ev_max_power_w": 11_000,
        "departure": T0 + timedelta(hours=1),
        "id_token": "TAG",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sim.plug_in(**args)  # type: ignore[arg-type]


def test_an_occupied_evse_takes_no_second_ev() -> None:
    sim, _ = station()
    sim.plug_in(1, 10_000, 11_000, T0 + timedelta(hours=1), "A")
    with pytest.raises(ValueError, match="occupied"):
        sim.plug_in(1, 10_000, 11_000, T0 + timedelta(hours=1), "B")
    sim.unplug(1)
    with pytest.raises(ValueError, match="no EV"):
        sim.unplug(1)
