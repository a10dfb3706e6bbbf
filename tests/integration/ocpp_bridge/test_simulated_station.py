"""Simulated stations with EVs against a real CentralSystem on loopback, on a scaled clock.

What the demo and the end-to-end tests rely on: stations of both versions boot and report;
the sessions the bridge reports carry the energy the EVs drew; the bridge's dynamic schedule
limits what the EVs draw (measured from the meter values the bridge received); after the
bridge dies the safe layer rules once validTo passes; a station reconnects to a restarted
bridge and nothing it metered meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.runtime.clock import ScaledClock
from ocpp_bridge.events import (
    ChargerConnected,
    ConnectorStatus,
    EvseStatusChanged,
    MeterSample,
    PowerPeriod,
    SessionEnded,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from ocpp_bridge.simulator import (
    ProtocolName,
    ReconnectPolicy,
    SimulatedStation,
    StationSpec,
)
from ocpp_bridge.timestamps import utc_now
from tests.integration.ocpp_bridge.conftest import PASSWORD, RunningBridge, run_bridge, test_hash
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

SPEED = 120.0  # simulated seconds per real second: a meter sample every 0.5 s
START = datetime(2024, 6, 3, 8, 0, tzinfo=UTC)
FAST_RECONNECT = ReconnectPolicy(wait_minimum_s=2.0, random_range_s=2.0, repeat_times=3)
BOTH = [ProtocolName.OCPP16, ProtocolName.OCPP201]


def record(spec: StationSpec, safe_w: float) -> ChargerRecord:
    return ChargerRecord(
        spec.charger_id,
        test_hash(),
        electrical=ElectricalData(
            phases=spec.phases,
            nominal_voltage_v=spec.nominal_voltage_v,
            max_current_a=spec.supply_current_a,
        ),
        safe_power_w=safe_w,
    )


def settings(port: int = 0, validity_s: float = 900.0) -> BridgeSettings:
    return BridgeSettings(
        host="127.0.0.1", port=port, dynamic_validity_s=validity_s, heartbeat_interval_s=60
    )


@contextlib.asynccontextmanager
async def stations(
    url: str, specs: Sequence[StationSpec], clock: ScaledClock
) -> AsyncIterator[list[SimulatedStation]]:
    running = [
        SimulatedStation(spec, url, password=PASSWORD, clock=clock, reconnect=FAST_RECONNECT)
        for spec in specs
    ]
    for station in running:
        await station.start()
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(s.wait_ready() for s in running))
        yield running
    finally:
        for station in running:
            await station.stop()


async def safe_layer_on(bridge: RunningBridge, station: SimulatedStation) -> None:
    await bridge.log.wait_for(
        lambda: any(p.stack_level == 0 for p in station.store.profiles), what="safe layer"
    )


def samples(bridge: RunningBridge, charger_id: str, evse_id: int) -> list[MeterSample]:
    return sorted(
        bridge.log.of(MeterSample, charger_id=charger_id, evse_id=evse_id), key=lambda s: s.at
    )


@pytest.mark.parametrize("protocol", BOTH)
async def test_a_station_boots_reports_status_and_sends_heartbeats(protocol: ProtocolName) -> None:
    clock = ScaledClock(START, SPEED)
    spec = StationSpec("CP1", protocol, evse_count=2, serial_number="SN-1")
    async with (
        run_bridge(settings(), records=[record(spec, 11_040)], clock=clock) as bridge,
        stations(bridge.url, [spec], clock) as [station],
    ):
        [connected] = await bridge.log.wait_for(lambda: bridge.log.of(ChargerConnected))
        assert connected.boot.serial_number == "SN-1"
        assert connected.boot.protocol.value == protocol.value.removeprefix("ocpp")
        await bridge.log.wait_for(
            lambda: {e.evse_id for e in bridge.log.of(EvseStatusChanged)} >= {1, 2},
            what="status of both EVSEs",
        )
        assert {e.status for e in bridge.log.of(EvseStatusChanged)} == {ConnectorStatus.AVAILABLE}
        await safe_layer_on(bridge, station)
        assert station.limit_w(0) == pytest.approx(11_040)
        # The bridge asked for a heartbeat every 60 s: that is every 0.5 s here.
        await bridge.log.wait_for(lambda: station.heartbeats_sent >= 3, what="heartbeats")
        assert station.heartbeat_interval_s == 60


@pytest.mark.parametrize("protocol", BOTH)
async def test_sessions_carry_the_energy_the_evs_drew(protocol: ProtocolName) -> None:
    clock = ScaledClock(START, SPEED)
    spec = StationSpec("CP1", protocol, evse_count=2)
    async with (
        run_bridge(settings(), records=[record(spec, 22_080)], clock=clock) as bridge,
        stations(bridge.url, [spec], clock) as [station],
    ):
        await safe_layer_on(bridge, station)
        now = clock.now()
        stated = (now + timedelta(minutes=25)).replace(microsecond=0)
        full = station.plug_in(1, 1_500, 11_000, now + timedelta(minutes=20), "TAG-FULL")
        busy = station.plug_in(
            2,
            40_000,
            7_400,
            now + timedelta(minutes=30),
            "TAG-BUSY",
            requested_energy_wh=30_000,
            stated_departure=stated,
            ev_phases=1,
        )
        ended = await bridge.log.wait_for(
            lambda: len(bridge.log.of(SessionEnded)) == 2 and bridge.log.of(SessionEnded),
            timeout_s=60,
            what="both sessions ended",
        )
        by_token = {e.session.id_token: e.session for e in ended}
        assert by_token["TAG-FULL"].energy_wh == pytest.approx(full.delivered_wh, abs=1.0)
        assert full.delivered_wh == pytest.approx(1_500)  # it filled up and waited
        assert by_token["TAG-BUSY"].energy_wh == pytest.approx(busy.delivered_wh, abs=1.0)
        assert busy.delivered_wh == pytest.approx(30 / 60 * 16 * 230, rel=0.02)  # 16 A, 1 phase
        assert {s.stop_reason for s in by_token.values()} == {"EVDisconnected"}
        started = {e.session.session_id for e in bridge.log.of(SessionStarted)}
        assert started == {s.session_id for s in by_token.values()}
        assert bridge.log.of(SessionUpdated)
        if protocol is ProtocolName.OCPP201:
            # NotifyEVChargingNeeds (ISO 15118): the driver's word, not the truth.
            assert by_token["TAG-BUSY"].requested_energy_wh == 30_000
            assert by_token["TAG-BUSY"].departure_time == stated
        registers = [s.energy_wh for s in samples(bridge, "CP1", 2)]
        assert registers == sorted(registers)
        assert registers[-1] == pytest.approx(station.register_wh(2), abs=1.0)  # 1.6: whole Wh


@pytest.mark.parametrize("protocol", BOTH)
async def test_a_dynamic_schedule_limits_what_the_evs_draw(protocol: ProtocolName) -> None:
    clock = ScaledClock(START, SPEED)
    spec = StationSpec("CP1", protocol, evse_count=2, max_current_a=16)
    async with (
        run_bridge(settings(), records=[record(spec, 22_080)], clock=clock) as bridge,
        stations(bridge.url, [spec], clock) as [station],
    ):
        await safe_layer_on(bridge, station)
        now = clock.now()
        for evse_id in (1, 2):
            station.plug_in(evse_id, 60_000, 11_000, now + timedelta(hours=2), f"TAG{evse_id}")
        await clock.sleep(300)
        begin = clock.now()
        switch = begin + timedelta(minutes=10)
        result = await bridge.system.set_dynamic_schedule(
            "CP1",
            [PowerPeriod(begin, 8_280), PowerPeriod(switch, 16_560)],  # 12 A, then 24 A
            begin + timedelta(minutes=20),
        )
        assert result.accepted, result.reason
        await clock.sleep(21 * 60)
        margin = timedelta(seconds=90)  # a sample or so around each change
        for evse_id in (1, 2):
            measured = [s for s in samples(bridge, "CP1", evse_id) if s.power_w is not None]
            before = [s.power_w for s in measured if now + margin < s.at < begin - margin]
            first = [s.power_w for s in measured if begin + margin < s.at < switch - margin]
            end = switch + timedelta(minutes=10)
            second = [s.power_w for s in measured if switch + margin < s.at < end - margin]
            assert before
            assert set(before) == {11_000}  # each EV at its own maximum under the safe 32 A
            assert len(first) >= 5
            assert set(first) == {6 * 690}  # 12 A shared by two EVs
            assert len(second) >= 5
            assert set(second) == {12 * 690}  # 24 A shared by two EVs
            # The register agrees: energy between samples never exceeds the limit's worth.
            registered = [s for s in measured if begin + margin < s.at < switch - margin]
            for a, b in itertools.pairwise(registered):
                assert a.energy_wh is not None
                assert b.energy_wh is not None
                seconds = (b.at - a.at).total_seconds()
                assert b.energy_wh - a.energy_wh <= 6 * 690 * seconds / 3600 + 0.2


@pytest.mark.parametrize("protocol", BOTH)
async def test_a_refreshed_schedule_holds_beyond_one_profile_validity(
    protocol: ProtocolName,
) -> None:
    """The bridge refreshes before validTo on the scaled clock, not on the wall clock."""
    clock = ScaledClock(START, SPEED)
    spec = StationSpec("CP1", protocol)
    async with (
        run_bridge(settings(validity_s=300), records=[record(spec, 4_140)], clock=clock) as bridge,
        stations(bridge.url, [spec], clock) as [station],
    ):
        await safe_layer_on(bridge, station)
        station.plug_in(1, 60_000, 11_000, clock.now() + timedelta(hours=2), "TAG")
        begin = clock.now()
        result = await bridge.system.set_dynamic_schedule(
            "CP1", [PowerPeriod(begin, 11_040)], begin + timedelta(minutes=20)
        )
        assert result.accepted, result.reason
        powers = []
        for _ in range(18):  # every simulated minute for 18 minutes: four validity periods
            await clock.sleep(60)
            powers.append(station.power_w(1))
        assert set(powers) == {11_000}
        dynamic = [p for p in station.store.history if p["stack_level"] > 0]
        assert len(dynamic) >= 4
        await clock.sleep(3 * 60)
        assert station.power_w(1) == pytest.approx(4_140)  # the schedule ended: safe layer


@pytest.mark.parametrize("protocol", BOTH)
async def test_after_the_bridge_dies_the_safe_layer_rules_and_a_restart_gets_every_sample(
    protocol: ProtocolName,
) -> None:
    clock = ScaledClock(START, SPEED)
    spec = StationSpec("CP1", protocol)
    port = free_port()
    validity_s = 300.0
    records = [record(spec, 4_140)]
    station = SimulatedStation(
        spec,
        f"ws://127.0.0.1:{port}/ocpp",
        password=PASSWORD,
        clock=clock,
        reconnect=FAST_RECONNECT,
    )
    try:
        async with run_bridge(settings(port, validity_s), records=records, clock=clock) as first:
            await station.start()
            async with asyncio.timeout(20):
                await station.wait_ready()
            await safe_layer_on(first, station)
            ev = station.plug_in(1, 60_000, 11_000, clock.now() + timedelta(hours=3), "TAG")
            now = clock.now()
            result = await first.system.set_dynamic_schedule(
                "CP1", [PowerPeriod(now, 11_040)], now + timedelta(hours=2)
            )
            assert result.accepted
            [started] = await first.log.wait_for(lambda: first.log.of(SessionStarted))
            await clock.sleep(120)
            assert station.power_w(1) == 11_000
        died = clock.now()  # the agent is gone: nobody refreshes the dynamic layer
        valid_to = max(p.valid_to for p in station.store.profiles if p.stack_level > 0)
        assert died < valid_to <= died + timedelta(seconds=validity_s)
        await clock.sleep((valid_to - clock.now()).total_seconds() + 60)
        assert station.power_w(1) == pytest.approx(4_140)  # 6 A: the safe layer alone
        assert not station.online
        assert station.pending_messages > 0  # metered while nobody listened
        async with run_bridge(settings(port, validity_s), records=records, clock=clock) as second:
            async with asyncio.timeout(30):
                await station.wait_ready()
            assert station.connections == 2
            await second.log.wait_for(
                lambda: station.pending_messages == 0 and second.log.of(MeterSample),
                timeout_s=30,
                what="queued meter values delivered",
            )
            station.unplug(1)
            [ended] = await second.log.wait_for(
                lambda: second.log.of(SessionEnded), timeout_s=30, what="session ended"
            )
            assert ended.session.session_id == started.session.session_id
            measured = samples(second, "CP1", 1)
            offline = [s for s in measured if died <= s.at]
            assert [s.at for s in offline] == sorted(s.at for s in offline)
            # The dynamic profile's last sixth allows only the safe level: a dead agent's
            # last profile ends where the safe layer takes over.
            tail = valid_to - timedelta(seconds=validity_s / 6)
            assert {s.power_w for s in offline if s.at < tail - timedelta(seconds=1)} <= {11_000}
            assert ev.unplugged_at is not None
            after = [
                s.power_w
                for s in offline
                if tail + timedelta(seconds=1) < s.at < ev.unplugged_at - timedelta(seconds=1)
            ]
            assert after
            assert set(after) == {4_140}
            # The second bridge never saw the start: it counts from its first register.
            first_register = measured[0].energy_wh
            assert first_register is not None
            assert ended.session.energy_wh == pytest.approx(
                ev.meter_start_wh + ev.delivered_wh - first_register, abs=1.0
            )
    finally:
        await station.stop()


async def test_a_fleet_in_its_own_process_reports_each_accepted_profile() -> None:
    """What a CSMS benchmark uses: stations whose CPU is not the bridge's."""
    records = [ChargerRecord(f"FLEET-{i:04d}", test_hash()) for i in range(1, 5)]
    async with run_bridge(settings(), records=records) as bridge:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocpp_bridge.simulator",
            *("--url", bridge.url, "--count", "4", "--prefix", "FLEET-"),
            *("--password", PASSWORD, "--report-profiles", "--no-strict"),
            stdout=asyncio.subprocess.PIPE,
        )
        stdout = process.stdout
        assert stdout is not None
        try:
            lines: list[list[str]] = []

            async def until(done: Any) -> None:
                async with asyncio.timeout(30):
                    while not done():
                        lines.append((await stdout.readline()).decode().split())

            await until(lambda: ["ready", "4"] in lines)
            sent = time.time()
            now = utc_now()
            results = await asyncio.gather(
                *(
                    bridge.system.set_dynamic_schedule(
                        r.charger_id, [PowerPeriod(now, 7_000)], now + timedelta(minutes=10)
                    )
                    for r in records
                )
            )
            assert all(r.accepted for r in results)

            def dynamic() -> list[list[str]]:
                return [line for line in lines if line[:1] == ["accepted"] and line[4] != "0"]

            await until(lambda: len(dynamic()) == 4)
            assert {line[1] for line in dynamic()} == {r.charger_id for r in records}
            assert all(sent <= float(line[5]) <= time.time() for line in dynamic())
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 20) == 0
