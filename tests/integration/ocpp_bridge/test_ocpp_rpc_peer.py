"""An independent charger (npm ocpp-rpc in strict mode) against the bridge, 1.6 and 2.0.1.

Strict mode validates every CALL we send and every answer we give with ocpp-rpc's own copy of
the official schemas; the test fails on any strictValidationFailure or badMessage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ocpp_bridge.events import (
    CapabilitiesKnown,
    ChargerConnected,
    ConnectorStatus,
    EvseStatusChanged,
    MeterSample,
    PowerPeriod,
    ProtocolVersion,
    SessionEnded,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from ocpp_bridge.timestamps import utc_now
from tests.conftest import in_ci
from tests.integration.ocpp_bridge.conftest import PASSWORD, RunningBridge, run_bridge, test_hash
from tests.support.node_peer import MISSING, NodeCharger, find_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def node() -> str:
    found = find_node()
    if found is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


@pytest.fixture
async def bridge() -> AsyncIterator[RunningBridge]:
    electrical = ElectricalData(phases=3, max_current_a=32.0)
    records = [
        ChargerRecord(identity, test_hash(), electrical=electrical, safe_power_w=6_900)
        for identity in ("RPC16", "RPC201")
    ]
    async with run_bridge(BridgeSettings(host="127.0.0.1", port=0), records=records) as running:
        yield running


def profile_of(version: str, params: dict[str, Any]) -> dict[str, Any]:
    return params["csChargingProfiles"] if version == "ocpp1.6" else params["chargingProfile"]


@pytest.mark.parametrize(("protocol", "identity"), [("ocpp1.6", "RPC16"), ("ocpp2.0.1", "RPC201")])
async def test_independent_charger_in_strict_mode(
    node: str, bridge: RunningBridge, protocol: str, identity: str
) -> None:
    charger = await NodeCharger.start(node, protocol, bridge.url, identity, PASSWORD)
    try:
        connected = await charger.wait_for("connected")
        assert connected["protocol"] == protocol
        await charger.wait_for("ready")

        # Boot data, capabilities and the safe layer (stack 0, station-wide, no validTo).
        log = bridge.log
        [boot] = await log.wait_for(lambda: log.of(ChargerConnected, charger_id=identity))
        assert boot.boot.vendor == "Lab"
        assert boot.boot.serial_number in ("S-16", "S-201")
        assert boot.boot.protocol is ProtocolVersion(protocol.removeprefix("ocpp"))
        await log.wait_for(lambda: log.of(CapabilitiesKnown, charger_id=identity))
        safe = profile_of(
            protocol,
            await charger.wait_for_call(
                "SetChargingProfile", lambda p: profile_of(protocol, p)["stackLevel"] == 0
            ),
        )
        assert "validTo" not in safe
        assert safe["chargingProfilePurpose"] in (
            "ChargePointMaxProfile",
            "ChargingStationMaxProfile",
        )

        # Status, session and meter values as version-neutral events.
        await log.wait_for(
            lambda: log.of(EvseStatusChanged, charger_id=identity, status=ConnectorStatus.CHARGING),
            what="charging status",
        )
        [started] = await log.wait_for(
            lambda: [e for e in log.of(SessionStarted) if e.session.charger_id == identity]
        )
        assert started.session.id_token == "RPC-TAG"
        assert started.session.evse_id == 1
        samples = await log.wait_for(
            lambda: [e for e in log.of(MeterSample, charger_id=identity) if e.power_w == 7000.0]
        )
        assert samples[0].current_per_phase_a == (10.1, 10.2, 10.0)
        assert samples[0].session_id == started.session.session_id

        # The dynamic layer, read back, cleared.
        now = utc_now()
        result = await bridge.system.set_dynamic_schedule(
            identity,
            [PowerPeriod(now, 11_040), PowerPeriod(now + timedelta(minutes=20), 4_140)],
            now + timedelta(hours=1),
        )
        assert result.accepted, result.reason
        dynamic = profile_of(
            protocol,
            await charger.wait_for_call(
                "SetChargingProfile", lambda p: profile_of(protocol, p)["stackLevel"] > 0
            ),
        )
        assert "validTo" in dynamic
        composite = await bridge.system.composite_schedule(identity, 0, 1800)
        assert composite.result.accepted, composite.result.reason
        assert composite.periods[0].limit_w == pytest.approx(11_040)
        cleared = await bridge.system.clear_dynamic_schedule(identity)
        assert cleared.accepted
        assert cleared.reason is None
        await charger.wait_for_call("GetCompositeSchedule")
        await charger.wait_for_call("ClearChargingProfile")

        assert await charger.stop() == 0
        [ended] = await log.wait_for(
            lambda: [e for e in log.of(SessionEnded) if e.session.charger_id == identity]
        )
        assert ended.session.session_id == started.session.session_id
        assert ended.session.energy_wh == 1500.0
        assert ended.session.stop_reason == "EVDisconnected"
        if protocol == "ocpp2.0.1":
            needs = [
                e
                for e in log.of(SessionUpdated)
                if e.session.charger_id == identity and e.session.requested_energy_wh
            ]
            assert needs
            assert needs[0].session.requested_energy_wh == 20_000.0
            assert needs[0].session.departure_time == datetime(2030, 1, 1, 7, 30, tzinfo=UTC)
        assert charger.complaints() == []
    finally:
        await charger.kill()
