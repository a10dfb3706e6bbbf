"""Safe and dynamic layers against simulated chargers that keep and combine profiles."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from ocpp_bridge.connection import _IN_HANDLER, CallFromHandlerError
from ocpp_bridge.events import CapabilitiesKnown, CommandStatus, PowerPeriod
from ocpp_bridge.profiles import DYNAMIC_PROFILE_ID_BASE, SAFE_PROFILE_ID, ElectricalData
from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from ocpp_bridge.simulator import SimCharger16, SimCharger201, running
from ocpp_bridge.smart_charging import retry_delay_s
from ocpp_bridge.timestamps import utc_now
from tests.integration.ocpp_bridge.conftest import PASSWORD, RunningBridge, run_bridge, test_hash

pytestmark = pytest.mark.integration

SIMS = [SimCharger16, SimCharger201]
MAX = {"ChargePointMaxProfile", "ChargingStationMaxProfile"}
ELECTRICAL = ElectricalData(
    phases=3, nominal_voltage_v=230.0, min_current_a=6.0, max_current_a=32.0
)


def record(charger_id: str = "CP1", safe_w: float = 6_900) -> ChargerRecord:
    return ChargerRecord(charger_id, test_hash(), electrical=ELECTRICAL, safe_power_w=safe_w)


def settings(validity_s: float = 900.0) -> BridgeSettings:
    return BridgeSettings(host="127.0.0.1", port=0, dynamic_validity_s=validity_s)


async def booted(bridge: RunningBridge, sim: Any) -> None:
    await sim.boot()
    await bridge.log.wait_for(
        lambda: (
            bridge.system.snapshot()[0].safe_purpose is not None
            or any(p["stack_level"] == 0 for p in sim.store.history[1:])
        ),
        what="safe layer",
    )


def dynamic_in_history(sim: Any) -> list[dict[str, Any]]:
    return [p for p in sim.store.history if p["stack_level"] > 0]


def profile_id(profile: dict[str, Any]) -> int:
    return int(profile.get("charging_profile_id", profile.get("id")))


@pytest.mark.parametrize("sim_class", SIMS)
async def test_safe_layer_is_installed_after_boot(sim_class: Any) -> None:
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)
        [safe] = sim.store.profiles
        assert safe.purpose in MAX
        assert safe.stack_level == 0
        assert safe.valid_to is None
        assert safe.evse_id == 0
        assert safe.profile_id == SAFE_PROFILE_ID
        assert safe.periods == [(0, 10.0, 3)]  # 6900 W / (230 V x 3) = 10 A
        assert sim.store.limit_a_at(utc_now()) == 10.0
        caps = await bridge.log.wait_for(lambda: bridge.log.of(CapabilitiesKnown))
        assert "max_stack_level" in caps[0].capabilities.reported


@pytest.mark.parametrize("sim_class", SIMS)
async def test_dynamic_schedule_applies_reads_back_in_watts_and_clears(sim_class: Any) -> None:
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)
        now = utc_now()
        result = await bridge.system.set_dynamic_schedule(
            "CP1",
            [PowerPeriod(now, 16_560), PowerPeriod(now + timedelta(minutes=30), 0)],
            now + timedelta(hours=1),
        )
        assert result.status is CommandStatus.ACCEPTED, result.reason
        composite = await bridge.system.composite_schedule("CP1", 0, 3600)
        assert composite.result.accepted
        assert composite.periods[0].limit_w == pytest.approx(16_560)  # 24 A x 3 x 230 V
        assert [p.limit_w for p in composite.periods][-1] == pytest.approx(6_900)
        cleared = await bridge.system.clear_dynamic_schedule("CP1")
        assert cleared.accepted
        assert {p.stack_level for p in sim.store.profiles} == {0}
        after = await bridge.system.composite_schedule("CP1", 0, 600)
        assert [p.limit_w for p in after.periods] == [pytest.approx(6_900)]


@pytest.mark.parametrize("sim_class", SIMS)
async def test_dynamic_layer_is_refreshed_under_the_same_id_before_valid_to(sim_class: Any) -> None:
    async with (
        run_bridge(settings(validity_s=3.0), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)
        now = utc_now()
        await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 11_040)], now + timedelta(minutes=10)
        )
        sent = await bridge.log.wait_for(
            lambda: len(dynamic_in_history(sim)) >= 3 and dynamic_in_history(sim),
            what="refreshes",
        )
        assert {profile_id(p) for p in sent} == {DYNAMIC_PROFILE_ID_BASE}
        valid_tos = [p["valid_to"] for p in sent]
        assert valid_tos == sorted(valid_tos)
        assert len(set(valid_tos)) == len(valid_tos)
        # Still held: the refresh came before each validTo passed.
        assert sim.store.limit_a_at(utc_now()) == 16.0
        if sim_class is SimCharger201:
            schedule_ids = [p["charging_schedule"][0]["id"] for p in sim.store.history]
            assert len(set(schedule_ids)) == len(schedule_ids)  # unique per charger


@pytest.mark.parametrize("sim_class", SIMS)
async def test_refused_max_purpose_falls_back_to_tx_default_and_is_remembered(
    sim_class: Any,
) -> None:
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD, refuse_purposes=MAX) as sim,
    ):
        await booted(bridge, sim)
        await bridge.log.wait_for(lambda: bridge.system.snapshot()[0].safe_purpose, what="safe")
        [snapshot] = bridge.system.snapshot()
        assert snapshot.safe_purpose == "TxDefault"
        assert snapshot.rejected_purposes == ("ChargingStationMax",)
        [safe] = sim.store.profiles
        assert safe.purpose == "TxDefaultProfile"
        assert safe.stack_level == 0
        tried = len(sim.store.history)
        now = utc_now()
        result = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 4_140)], now + timedelta(minutes=30)
        )
        assert result.accepted
        assert result.purpose == "TxDefault"
        # Remembered: no second attempt with the refused purpose.
        assert [p["charging_profile_purpose"] for p in sim.store.history[tried:]] == [
            "TxDefaultProfile"
        ]
        assert sim.store.limit_a_at(utc_now()) == 6.0


async def test_charger_taking_only_tx_profiles_gets_them_on_its_transaction() -> None:
    refuse = MAX | {"TxDefaultProfile"}
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(SimCharger16, bridge.url, "CP1", PASSWORD, refuse_purposes=refuse) as sim,
    ):
        await sim.boot()
        await bridge.log.wait_for(
            lambda: len(sim.store.history) >= 2, what="both safe purposes tried"
        )
        now = utc_now()
        pending = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 8_280)], now + timedelta(minutes=30)
        )
        assert pending.accepted
        assert pending.purpose == "Tx"
        transaction_id = await sim.start_transaction(1, 0)
        [tx] = await bridge.log.wait_for(
            lambda: [p for p in sim.store.profiles if p.purpose == "TxProfile"],
            what="TxProfile",
        )
        assert tx.evse_id == 1
        assert tx.transaction_id == str(transaction_id)
        assert tx.periods[0][1] == 12.0  # 8280 W / 690 V
        [snapshot] = bridge.system.snapshot()
        assert snapshot.safe_purpose is None  # no safe layer possible: reported, not faked


@pytest.mark.parametrize("sim_class", SIMS)
async def test_reconnect_reapplies_safe_and_dynamic_layers(sim_class: Any) -> None:
    async with run_bridge(settings(), records=[record()]) as bridge:
        now = utc_now()
        offline = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 9_660)], now + timedelta(hours=1)
        )
        assert offline.status is CommandStatus.OFFLINE
        await bridge.system.set_safe_limit("CP1", 5_520)
        for _ in range(2):  # first connection, then a reconnect with an empty charger
            async with running(sim_class, bridge.url, "CP1", PASSWORD) as sim:
                await sim.boot()
                await bridge.log.wait_for(
                    lambda sim=sim: {p.stack_level for p in sim.store.profiles} == {0, 1},
                    what="both layers",
                )
                assert sim.store.limit_a_at(utc_now()) == 14.0  # 9660 W / 690 V
                safe = next(p for p in sim.store.profiles if p.stack_level == 0)
                assert safe.periods[0][1] == 8.0  # 5520 W / 690 V
            await bridge.log.wait_for(
                lambda: not bridge.system.snapshot()[0].online, what="offline"
            )


async def test_set_safe_limit_updates_a_connected_charger() -> None:
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(SimCharger201, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)
        result = await bridge.system.set_safe_limit("CP1", 11_040)
        assert result.accepted
        assert sim.store.limit_a_at(utc_now()) == 16.0
        with pytest.raises(ValueError, match=">= 0"):
            await bridge.system.set_safe_limit("CP1", -1)


async def test_commands_for_unknown_chargers_are_rejected() -> None:
    async with run_bridge(settings(), records=[]) as bridge:
        result = await bridge.system.set_safe_limit("NOPE", 1000)
        assert result.status is CommandStatus.REJECTED
        assert "unknown" in (result.reason or "")


async def test_a_charger_that_does_not_answer_times_out() -> None:
    fast = BridgeSettings(host="127.0.0.1", port=0, response_timeout_s=0.5)
    async with (
        run_bridge(fast, records=[record()]) as bridge,
        running(SimCharger16, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)

        async def silent(**kwargs: Any) -> Any:
            await asyncio.sleep(5)

        sim.route_map["GetCompositeSchedule"]["_on_action"] = silent
        composite = await bridge.system.composite_schedule("CP1", 0, 60)
        assert composite.result.status is CommandStatus.TIMEOUT


async def test_a_call_from_inside_a_handler_is_refused_not_deadlocked() -> None:
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(SimCharger16, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)
        charger = bridge.system._chargers["CP1"]
        connection = charger.connection
        assert connection is not None
        token = _IN_HANDLER.set(connection)
        try:
            with pytest.raises(CallFromHandlerError, match="@after"):
                await connection.call_raw(
                    "GetCompositeSchedule", {"connectorId": 0, "duration": 60}
                )
        finally:
            _IN_HANDLER.reset(token)


async def test_a_charger_that_drops_mid_call_is_offline_not_a_timeout() -> None:
    slow = BridgeSettings(host="127.0.0.1", port=0, response_timeout_s=60)
    async with (
        run_bridge(slow, records=[record()]) as bridge,
        running(SimCharger201, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await booted(bridge, sim)

        async def hang_up(**kwargs: Any) -> Any:
            await sim._connection.close()
            await asyncio.sleep(3600)  # never answers

        sim.route_map["GetCompositeSchedule"]["_on_action"] = hang_up
        async with asyncio.timeout(10):  # far below the 60 s response timeout
            composite = await bridge.system.composite_schedule("CP1", 0, 60)
        assert composite.result.status is CommandStatus.OFFLINE
        now = utc_now()
        later = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(now, 5_000)], now + timedelta(minutes=5)
        )
        assert later.status is CommandStatus.OFFLINE  # kept, and sent on the next connect


async def start_a_transaction(sim: Any) -> None:
    if isinstance(sim, SimCharger16):
        await sim.start_transaction(1, 0)
    else:
        await sim.transaction_event(
            "Started", "tx-1", 0, 0.0, trigger_reason="Authorized", charging_state="Charging"
        )


@pytest.mark.parametrize("sim_class", SIMS)
async def test_a_refused_schedule_is_retried_with_back_off_by_one_stream(sim_class: Any) -> None:
    """A charger that refuses every purpose while a transaction runs: the bridge's own refresh
    and a caller pushing the schedule again and again (as dispatch rounds do) share one
    stream per EVSE; between the attempts of its growing back-off the caller gets the
    remembered refusal without another call to the charger."""
    refuse = MAX | {"TxDefaultProfile", "TxProfile"}
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD, refuse_purposes=refuse) as sim,
    ):
        await sim.boot()
        await start_a_transaction(sim)
        await bridge.log.wait_for(
            lambda: len(sim.store.history) >= 2, what="both safe purposes tried"
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        results = []
        while loop.time() - began < 12.0:
            now = utc_now()
            results.append(
                await bridge.system.set_dynamic_schedule(
                    "CP1", [PowerPeriod(now, 8_280)], now + timedelta(minutes=30)
                )
            )
            await asyncio.sleep(0.5)
        attempts = [p for p in dynamic_in_history(sim) if p["charging_profile_purpose"] in MAX]
        # Back-off of 5 s, then 10 s: attempts at 0 and 5 s, the next one only at 15 s.
        assert 2 <= len(attempts) <= 3, len(attempts)
        assert all(not r.accepted for r in results)
        assert len(results) > 10
        assert "refused" in (results[-1].reason or "")


@pytest.mark.parametrize("sim_class", SIMS)
async def test_a_lower_limit_is_tried_at_once_despite_the_back_off(sim_class: Any) -> None:
    """Within the back-off of a refused schedule, a lower limit (a new order, a tighter cap)
    goes to the charger at once; a higher or equal one gets the remembered refusal."""
    refuse = MAX | {"TxDefaultProfile", "TxProfile"}
    async with (
        run_bridge(settings(), records=[record()]) as bridge,
        running(sim_class, bridge.url, "CP1", PASSWORD, refuse_purposes=refuse) as sim,
    ):
        await sim.boot()
        await start_a_transaction(sim)
        await bridge.log.wait_for(
            lambda: len(sim.store.history) >= 2, what="both safe purposes tried"
        )

        def attempts() -> int:
            return len([p for p in dynamic_in_history(sim) if p["charging_profile_purpose"] in MAX])

        async def push(limit_w: float) -> Any:
            now = utc_now()
            return await bridge.system.set_dynamic_schedule(
                "CP1", [PowerPeriod(now, limit_w)], now + timedelta(minutes=30)
            )

        first = await push(11_000)
        assert not first.accepted
        assert attempts() == 1
        looser = await push(11_000)  # the same limit again: within the 5 s back-off
        assert "refused 1 time(s)" in (looser.reason or ""), looser
        assert attempts() == 1
        lower = await push(7_000)
        assert not lower.accepted
        assert "refused" not in (lower.reason or "").split(":")[0]
        assert attempts() == 2  # asked again at once
        higher = await push(9_000)
        assert "refused 2 time(s)" in (higher.reason or ""), higher
        assert attempts() == 2


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [retry_delay_s(n) for n in range(1, 12)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert delays == sorted(delays)
    assert max(delays) == 300.0
