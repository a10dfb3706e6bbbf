"""Local-controller mode on loopback: a charger (npm ocpp-rpc, strict) -> flexbridge -> a CSMS
(npm ocpp-rpc RPCServer, strict), both independent implementations in Node processes.

Each side validates every frame against its own copy of the official schemas; any strict
failure on either side fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocpp_bridge import schemas
from ocpp_bridge.events import (
    ChargerConnected,
    MeterSample,
    ProtocolVersion,
    SessionEnded,
    SessionStarted,
)
from ocpp_bridge.local_controller import LocalController
from ocpp_bridge.relay import UpstreamPolicy
from ocpp_bridge.settings import BridgeSettings, ChargerRecord, InMemoryRegistry, SecurityProfile
from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT, UpstreamSettings, UpstreamTarget
from tests.conftest import free_port, in_ci
from tests.integration.ocpp_bridge.conftest import PASSWORD, EventLog, test_hash
from tests.support.node_csms import NodeCsms
from tests.support.node_peer import MISSING, NodeCharger, find_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHARGER_16 = [
    "BootNotification",
    "StatusNotification",
    "Heartbeat",
    "Authorize",
    "StatusNotification",
    "StartTransaction",
    "StatusNotification",
    "MeterValues",
]
CHARGER_201 = [
    "BootNotification",
    "StatusNotification",
    "Heartbeat",
    "StatusNotification",
    "TransactionEvent",
    "NotifyEVChargingNeeds",
    "TransactionEvent",
    "MeterValues",
]


@pytest.fixture
def node() -> str:
    found = find_node()
    if found is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


@asynccontextmanager
async def controller(
    csms_port: int,
    policy: UpstreamPolicy = UpstreamPolicy.AUTONOMOUS,
    log: EventLog | None = None,
    state_dir: Path | None = None,
    target: UpstreamTarget | None = None,
) -> AsyncIterator[LocalController]:
    """`target`: the CSMS (default: ``ws://`` on `csms_port`, security profile 1)."""
    records = [ChargerRecord(i, test_hash()) for i in ("RPC16", "RPC201")]
    upstream = UpstreamSettings(
        default=target
        or UpstreamTarget(
            f"ws://127.0.0.1:{csms_port}/ocpp", security_profile=SecurityProfile.BASIC
        ),
        policy=policy,
        reconnect_initial_s=0.2,
        reconnect_max_s=0.5,
        connect_timeout_s=5.0,
        call_timeout_s=10.0,
        state_dir=state_dir,
    )
    system = LocalController(
        BridgeSettings(host="127.0.0.1", port=0, profile_layout=LOCAL_CONTROLLER_LAYOUT),
        InMemoryRegistry(records),
        upstream=upstream,
        on_event=(log or EventLog()).record,
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


def url(system: LocalController) -> str:
    return f"ws://127.0.0.1:{system.port}/ocpp"


def actions(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [action for action, _ in calls]


def no_duplicate_ids(frames: list[list[Any]]) -> None:
    ids = [m[1] for m in frames if m[0] == 2]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize(
    ("protocol", "identity", "sequence"),
    [("ocpp1.6", "RPC16", CHARGER_16), ("ocpp2.0.1", "RPC201", CHARGER_201)],
)
async def test_a_whole_transaction_reaches_the_csms_once_in_order_and_commands_come_down(
    node: str, protocol: str, identity: str, sequence: list[str]
) -> None:
    csms = await NodeCsms.start(node)
    charger: NodeCharger | None = None
    log = EventLog()
    try:
        async with controller(csms.port, log=log) as system:
            charger = await NodeCharger.start(node, protocol, url(system), identity, PASSWORD)
            await charger.wait_for("ready")
            connected = await csms.wait_for(lambda line: line.get("event") == "connected")
            # Same identity, same subprotocol, the charger's own password passed through.
            assert connected["identity"] == identity
            assert connected["protocol"] == protocol
            assert connected["password"] == PASSWORD
            await csms.wait_for_call(identity, "MeterValues")
            assert actions(csms.calls(identity)) == sequence
            boot = await charger.wait_for("boot")
            assert boot["result"]["status"] == "Accepted"  # the CSMS's answer, relayed
            # The site model follows the relayed charger: boot, session (under the id the
            # charger was given), meter values.
            [booted] = await log.wait_for(lambda: log.of(ChargerConnected, charger_id=identity))
            assert booted.boot.vendor == "Lab"
            [session] = await log.wait_for(lambda: log.of(SessionStarted))
            await log.wait_for(lambda: log.of(MeterSample, charger_id=identity))
            if protocol == "ocpp1.6":
                started = await charger.wait_for("started")
                assert started["result"]["transactionId"] >= 100  # the CSMS's number
                assert session.session.transaction_id == str(started["result"]["transactionId"])
            # The bridge's own set-up (capabilities, safe layer) reached the charger and none
            # of its answers went upstream.
            safe = await charger.wait_for_call("SetChargingProfile")
            safe_profile = (
                safe["csChargingProfiles"] if protocol == "ocpp1.6" else safe["chargingProfile"]
            )
            assert safe_profile["stackLevel"] == LOCAL_CONTROLLER_LAYOUT.safe_stack_level
            safe_id = safe_profile.get("chargingProfileId", safe_profile.get("id"))
            assert safe_id == LOCAL_CONTROLLER_LAYOUT.safe_profile_id

            # The CSMS's operations reach the charger and the charger's answers come back.
            reset_type = "Soft" if protocol == "ocpp1.6" else "Immediate"
            reset = await csms.call(identity, "Reset", {"type": reset_type})
            assert reset == {"event": "result", "ref": 1, "result": {"status": "Accepted"}}
            await charger.wait_for_call("Reset")
            remote = (
                ("RemoteStartTransaction", {"idTag": "REMOTE-1", "connectorId": 1})
                if protocol == "ocpp1.6"
                else (
                    "RequestStartTransaction",
                    {"idToken": {"idToken": "REMOTE-1", "type": "ISO14443"}, "remoteStartId": 7},
                )
            )
            started_remotely = await csms.call(identity, *remote)
            assert started_remotely["result"] == {"status": "Accepted"}
            await charger.wait_for_call(remote[0])

            # Our own smart charging goes down under our ids; nothing of it goes up.
            before = len(csms.frames(identity))
            profile_call = smart_charging_call(protocol)
            answer = await system.call(identity, *profile_call)
            assert answer == {"status": "Accepted"}
            await charger.wait_for_call("SetChargingProfile")
            assert await charger.stop() == 0
            await csms.wait_for_call(
                identity, "StatusNotification", sequence.count("StatusNotification") + 1
            )
            await log.wait_for(lambda: log.of(SessionEnded))
            after = csms.frames(identity)[before:]
            stop_action = "StopTransaction" if protocol == "ocpp1.6" else "TransactionEvent"
            assert [m[2] for m in after if m[0] == 2] == [stop_action, "StatusNotification"]
            assert not [m for m in csms.frames(identity) if m[1].startswith("fb-")]
            no_duplicate_ids(csms.frames(identity))
            assert charger.complaints() == []
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()
    assert csms.complaints() == []


@pytest.mark.parametrize(
    ("protocol", "identity", "id_key"),
    [("ocpp1.6", "RPC16", "id"), ("ocpp2.0.1", "RPC201", "chargingProfileId")],
)
async def test_a_csms_clearing_our_safe_profile_gets_it_put_back_at_once(
    node: str, protocol: str, identity: str, id_key: str
) -> None:
    """Another CSMS's ClearChargingProfile that reaches ours (here: our safe profile's id)
    must not leave the charger without its safe limit until the next reconnect."""
    csms = await NodeCsms.start(node)
    charger: NodeCharger | None = None
    try:
        async with controller(csms.port) as system:
            charger = await NodeCharger.start(node, protocol, url(system), identity, PASSWORD)
            await charger.wait_for("ready")
            await charger.wait_for_call("SetChargingProfile")
            safe_id = LOCAL_CONTROLLER_LAYOUT.safe_profile_id
            cleared = await csms.call(identity, "ClearChargingProfile", {id_key: safe_id})
            assert cleared["result"] == {"status": "Accepted"}  # the charger dropped it

            def safe_sets() -> list[dict[str, Any]]:
                found = []
                for params in charger.calls("SetChargingProfile") if charger else []:
                    profile = params.get("csChargingProfiles") or params.get("chargingProfile")
                    if profile.get("chargingProfileId", profile.get("id")) == safe_id:
                        found.append(profile)
                return found

            await charger.wait_for_call("SetChargingProfile", lambda _: len(safe_sets()) >= 2)
            again = safe_sets()[-1]
            assert again["stackLevel"] == LOCAL_CONTROLLER_LAYOUT.safe_stack_level
            # The CSMS clearing only its own leaves ours alone: nothing is sent again.
            before = len(charger.calls("SetChargingProfile"))
            mine = await csms.call(identity, "ClearChargingProfile", {id_key: 7})
            assert mine["result"] == {"status": "Unknown"}
            await asyncio.sleep(1.0)
            assert len(charger.calls("SetChargingProfile")) == before
            assert charger.complaints() == []
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()
    assert csms.complaints() == []


async def test_a_relayed_charger_call_is_checked_against_its_schema_once(
    node: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relay checked it; the site model follows that same parsed CALL (the hot path), and
    # writes no answer of its own: the charger has the CSMS's, so none is checked either.
    checked: list[str] = []
    answers: list[str] = []
    check = schemas.validate

    def counting(version: ProtocolVersion, action: str, payload: Any, *, response: bool) -> None:
        (answers if response else checked).append(action)
        check(version, action, payload, response=response)

    monkeypatch.setattr(schemas, "validate", counting)
    csms = await NodeCsms.start(node)
    charger: NodeCharger | None = None
    log = EventLog()
    try:
        async with controller(csms.port, log=log) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await csms.wait_for_call("RPC16", "MeterValues")
            # Followed too: the site model has the meter values the CSMS got.
            await log.wait_for(lambda: log.of(MeterSample, charger_id="RPC16"))
            relayed = actions(csms.calls("RPC16"))
            assert relayed == CHARGER_16
            assert sorted(checked) == sorted(relayed)
            assert answers == []
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()


def smart_charging_call(protocol: str) -> tuple[str, dict[str, Any]]:
    schedule = {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
    }
    if protocol == "ocpp1.6":
        return (
            "SetChargingProfile",
            {
                "connectorId": 0,
                "csChargingProfiles": {
                    "chargingProfileId": 9100,
                    "stackLevel": 5,
                    "chargingProfilePurpose": "ChargePointMaxProfile",
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": {**schedule, "startSchedule": "2026-12-02T00:00:00Z"},
                },
            },
        )
    return (
        "SetChargingProfile",
        {
            "evseId": 0,
            "chargingProfile": {
                "id": 9100,
                "stackLevel": 5,
                "chargingProfilePurpose": "ChargingStationMaxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [
                    {**schedule, "id": 1, "startSchedule": "2026-12-02T00:00:00Z"}
                ],
            },
        },
    )


async def test_strict_policy_closes_the_charger_when_the_csms_goes_away(node: str) -> None:
    csms = await NodeCsms.start(node)
    charger: NodeCharger | None = None
    try:
        async with controller(csms.port, UpstreamPolicy.STRICT) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            await csms.kill()
            closed = await charger.wait_for("closed")
            assert closed["code"] == 1011
    finally:
        if charger is not None:
            await charger.kill()
        await csms.kill()


async def test_autonomous_keeps_the_charger_and_replays_in_order_without_duplicates(
    node: str,
) -> None:
    """The CSMS is down when the charger boots and runs its transaction; when it comes up it
    hears the boot and every transaction message once, in order, under its own transactionId."""
    port = free_port()
    csms: NodeCsms | None = None
    charger: NodeCharger | None = None
    try:
        async with controller(port) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            started = await charger.wait_for("started")
            local_tx = started["result"]["transactionId"]
            assert local_tx >= 2_000_000_000  # ours, from the configured range
            csms = await NodeCsms.start(node, port)
            await csms.wait_for_call("RPC16", "MeterValues")
            replayed = csms.calls("RPC16")
            assert actions(replayed) == ["BootNotification", "StartTransaction", "MeterValues"]
            # Live again: the rest of the transaction goes straight through.
            assert await charger.stop() == 0
            await csms.wait_for_call("RPC16", "StatusNotification")
            calls = csms.calls("RPC16")
            assert actions(calls) == [
                "BootNotification",
                "StartTransaction",
                "MeterValues",
                "StopTransaction",
                "StatusNotification",
            ]
            start_answers = [
                m[2] for m in csms.frames("RPC16") if m[0] == 3 and "transactionId" in m[2]
            ]
            assert start_answers == []  # the CSMS received CALLs only
            meter, stop = calls[2][1], calls[3][1]
            assert meter["transactionId"] == stop["transactionId"] == 100  # the CSMS's id
            no_duplicate_ids(csms.frames("RPC16"))
            assert charger.complaints() == []
            assert csms.complaints() == []
    finally:
        if charger is not None:
            await charger.kill()
        if csms is not None:
            await csms.stop()


async def test_autonomous_replays_what_happened_during_an_outage(node: str) -> None:
    port = free_port()
    csms = await NodeCsms.start(node, port)
    charger: NodeCharger | None = None
    try:
        async with controller(port) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            await csms.wait_for_call("RPC16", "MeterValues")
            live = csms.calls("RPC16")
            await csms.kill()
            # The charger stays connected and its transaction ends while the CSMS is away.
            assert await charger.stop() == 0
            assert not [
                line
                for line in charger.lines
                if line.get("event") == "closed" and line.get("code") != 1000
            ]
            csms = await NodeCsms.start(node, port)
            await csms.wait_for_call("RPC16", "StopTransaction")
            replayed = csms.calls("RPC16")
            assert actions(replayed) == ["StopTransaction"]
            assert replayed[0][1]["transactionId"] == 100  # the CSMS's number for it
            assert actions(live) == CHARGER_16
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()


async def test_autonomous_replays_survive_a_restart_of_flexbridge(
    node: str, tmp_path: Path
) -> None:
    """The CSMS is down while the charger boots and starts charging; flexbridge then stops.
    The next flexbridge takes the saved queue up and the CSMS hears it all, once, in order,
    before the charger's new messages."""
    port = free_port()
    csms: NodeCsms | None = None
    charger: NodeCharger | None = None
    saved = tmp_path / "RPC16.json"
    try:
        async with controller(port, state_dir=tmp_path) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            local_tx = (await charger.wait_for("started"))["result"]["transactionId"]
            await charger.kill()
        queued = json.loads(saved.read_text())["replays"]
        assert [action for action, _, _ in queued] == [
            "BootNotification",
            "StartTransaction",
            "MeterValues",
        ]
        csms = await NodeCsms.start(node, port)
        async with controller(port, state_dir=tmp_path) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            await csms.wait_for_call("RPC16", "MeterValues", 2)
            calls = csms.calls("RPC16")
            saved_first = ["BootNotification", "StartTransaction", "MeterValues"]
            assert actions(calls) == [*saved_first, *CHARGER_16], actions(calls)
            assert calls[2][1]["transactionId"] == 100  # the CSMS's id for the saved session
            assert (await charger.wait_for("started"))["result"]["transactionId"] == 101
            assert local_tx >= 2_000_000_000
            no_duplicate_ids(csms.frames("RPC16"))
        assert json.loads(saved.read_text())["replays"] == []
        assert csms.complaints() == []
    finally:
        if charger is not None:
            await charger.kill()
        if csms is not None:
            await csms.stop()


async def test_a_flooding_charger_is_closed_and_nothing_reaches_the_csms() -> None:
    """Garbage as fast as the socket takes it: over the per-charger budget frames are dropped
    unread, and a charger that keeps on is closed (1008), as a directly connected one is."""
    async with controller(free_port()) as system:
        token = base64.b64encode(f"RPC16:{PASSWORD}".encode()).decode()
        async with connect(
            f"{url(system)}/RPC16",
            subprotocols=[Subprotocol("ocpp1.6")],
            additional_headers={"Authorization": f"Basic {token}"},
        ) as ws:
            with contextlib.suppress(ConnectionClosed):
                for i in range(5000):
                    await ws.send(f'[2,"g{i}","NoSuchAction",{{}}]')
                async for _ in ws:
                    pass
            assert ws.close_code == 1008
