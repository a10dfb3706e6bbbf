"""One listener, both versions: subprotocols, identity and security profiles 0/1 over loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ocpp_bridge.events import ChargerConnected, ChargerDisconnected, ProtocolVersion
from ocpp_bridge.passwords import verify_password
from ocpp_bridge.settings import (
    BridgeSettings,
    ChargerRecord,
    SecurityProfile,
    UnknownChargerPolicy,
)
from ocpp_bridge.simulator import basic_auth_header
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge, test_hash

pytestmark = pytest.mark.integration

BOOT16 = {"chargePointVendor": "Lab", "chargePointModel": "Raw"}
BOOT201 = {"chargingStation": {"model": "Raw", "vendorName": "Lab"}, "reason": "PowerUp"}


async def open_ws(
    url: str,
    identity: str,
    subprotocols: list[str] | None,
    password: str | None = PASSWORD,
    user: str | None = None,
) -> ClientConnection:
    headers = basic_auth_header(user or identity, password) if password is not None else None
    return await connect(
        f"{url}/{identity}",
        subprotocols=[websockets.Subprotocol(p) for p in subprotocols] if subprotocols else None,
        additional_headers=headers,
    )


async def rpc(
    ws: ClientConnection, action: str, payload: dict[str, Any], unique_id: str = "1"
) -> Any:
    await ws.send(json.dumps([2, unique_id, action, payload]))
    while True:
        message = json.loads(await ws.recv())
        if message[0] == 2:  # the bridge's own CALLs (capabilities, profiles): answer NotSupported
            await ws.send(json.dumps([4, message[1], "NotSupported", "", {}]))
            continue
        if message[1] == unique_id:
            return message


async def read_until_closed(ws: ClientConnection) -> None:
    async with asyncio.timeout(5):
        while True:  # the bridge's own CALLs may still be in flight
            await ws.recv()


async def test_both_offered_gives_2_0_1() -> None:
    async with run_bridge(records=[ChargerRecord("CP1", test_hash())]) as bridge:
        ws = await open_ws(bridge.url, "CP1", ["ocpp1.6", "ocpp2.0.1"])
        assert ws.subprotocol == "ocpp2.0.1"
        reply = await rpc(ws, "BootNotification", BOOT201)
        assert reply[0] == 3
        assert reply[2]["status"] == "Accepted"
        event = await bridge.log.wait_for(lambda: bridge.log.of(ChargerConnected), what="connected")
        assert event[0].boot.protocol is ProtocolVersion.OCPP201
        assert event[0].boot.vendor == "Lab"
        await ws.close()
        await bridge.log.wait_for(lambda: bridge.log.of(ChargerDisconnected), what="disconnected")


async def test_1_6_and_legacy_charger_without_subprotocol() -> None:
    async with run_bridge(records=[ChargerRecord("CP1", test_hash())]) as bridge:
        for offered in (["ocpp1.6"], None):
            ws = await open_ws(bridge.url, "CP1", offered)
            assert ws.subprotocol == ("ocpp1.6" if offered else None)
            reply = await rpc(ws, "BootNotification", BOOT16)
            assert reply[2]["status"] == "Accepted"
            assert reply[2]["interval"] == bridge.system.settings.heartbeat_interval_s
            await ws.close()


async def test_unsupported_offer_gets_a_handshake_and_a_clean_close() -> None:
    async with run_bridge(records=[ChargerRecord("CP1", test_hash())]) as bridge:
        ws = await open_ws(bridge.url, "CP1", ["ocpp2.1"])
        assert ws.subprotocol is None  # 101 without echoing a protocol we do not speak
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1002


@pytest.mark.parametrize(
    ("password", "user", "why"),
    [
        ("wrong-password-99", None, "wrong password"),
        (PASSWORD, "CP2", "user is not the identity"),
        (None, None, "no credentials"),
    ],
)
async def test_security_profile_1_refuses_bad_credentials(
    password: str | None, user: str | None, why: str
) -> None:
    async with run_bridge(records=[ChargerRecord("CP1", test_hash())]) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(bridge.url, "CP1", ["ocpp1.6"], password=password, user=user)
        assert refused.value.response.status_code == 401, why
        assert "Basic" in refused.value.response.headers.get("WWW-Authenticate", "")
        assert not bridge.log.of(ChargerConnected)


async def test_charger_without_a_stored_password_is_refused() -> None:
    async with run_bridge(records=[ChargerRecord("CP1", None)]) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(bridge.url, "CP1", ["ocpp1.6"])
        assert refused.value.response.status_code == 401


async def test_unknown_charger_rejected_by_default() -> None:
    async with run_bridge(records=[]) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(bridge.url, "NEW1", ["ocpp2.0.1"])
        assert refused.value.response.status_code == 401
        assert "NEW1" not in bridge.registry


async def test_unknown_charger_registered_with_its_password_hashed() -> None:
    settings = BridgeSettings(
        host="127.0.0.1", port=0, unknown_chargers=UnknownChargerPolicy.REGISTER
    )
    async with run_bridge(settings, records=[]) as bridge:
        ws = await open_ws(bridge.url, "NEW1", ["ocpp2.0.1"])
        await ws.close()
        record = await bridge.registry.lookup("NEW1")
        assert record is not None
        assert record.password_hash is not None
        assert verify_password(PASSWORD, record.password_hash)
        # From now on the charger is known and held to that password.
        with pytest.raises(InvalidStatus):
            await open_ws(bridge.url, "NEW1", ["ocpp2.0.1"], password="another-password-1")


async def test_security_profile_0_only_when_allowed_and_then_without_credentials() -> None:
    settings = BridgeSettings(
        host="127.0.0.1",
        port=0,
        security_profile=SecurityProfile.NONE,
        allow_security_profile_0=True,
    )
    async with run_bridge(settings, records=[ChargerRecord("CP0")]) as bridge:
        ws = await open_ws(bridge.url, "CP0", ["ocpp1.6"], password=None)
        assert (await rpc(ws, "BootNotification", BOOT16))[2]["status"] == "Accepted"
        await ws.close()


async def test_url_without_identity_is_not_found() -> None:
    async with run_bridge(records=[]) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                bridge.url.removesuffix("/ocpp") + "/",
                subprotocols=[websockets.Subprotocol("ocpp1.6")],
            )
        assert refused.value.response.status_code == 404


async def test_a_new_connection_replaces_the_old_one() -> None:
    async with run_bridge(records=[ChargerRecord("CP1", test_hash())]) as bridge:
        old = await open_ws(bridge.url, "CP1", ["ocpp1.6"])
        await rpc(old, "BootNotification", BOOT16)
        new = await open_ws(bridge.url, "CP1", ["ocpp1.6"])
        with pytest.raises(ConnectionClosed):
            await read_until_closed(old)
        reply = await rpc(new, "Heartbeat", {}, "hb")
        assert "currentTime" in reply[2]
        [snapshot] = bridge.system.snapshot()
        assert snapshot.online
        await new.close()


async def test_without_pings_a_silent_charger_is_declared_offline() -> None:
    settings = BridgeSettings(host="127.0.0.1", port=0, ping_interval_s=0, heartbeat_interval_s=1)
    async with run_bridge(settings, records=[ChargerRecord("CP1", test_hash())]) as bridge:
        ws = await open_ws(bridge.url, "CP1", ["ocpp1.6"])
        await rpc(ws, "BootNotification", BOOT16)
        # Say nothing more: after 2 x 1 s + 1 s grace the bridge gives up on the charger.
        [gone] = await bridge.log.wait_for(
            lambda: bridge.log.of(ChargerDisconnected), timeout_s=15, what="offline"
        )
        assert "1001" in gone.reason or "closed" in gone.reason
        assert not bridge.system.snapshot()[0].online
