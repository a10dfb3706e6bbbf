"""Bad input from one charger gets the right CALLERROR or a close and never affects another."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from ocpp_bridge.simulator import basic_auth_header
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge, test_hash

pytestmark = pytest.mark.integration

STATUS_WITH_TEXT_CONNECTOR = {"connectorId": "one", "errorCode": "NoError", "status": "Available"}
RECORDS = [ChargerRecord("BAD", test_hash()), ChargerRecord("GOOD", test_hash())]


async def open_ws(url: str, identity: str, subprotocol: str) -> ClientConnection:
    return await connect(
        f"{url}/{identity}",
        subprotocols=[websockets.Subprotocol(subprotocol)],
        additional_headers=basic_auth_header(identity, PASSWORD),
        compression=None,
        max_size=None,
    )


async def reply(ws: ClientConnection) -> list[Any]:
    """The next frame that answers us (the bridge's own CALLs are answered NotSupported)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message[0] == 2:
            await ws.send(json.dumps([4, message[1], "NotSupported", "", {}]))
            continue
        return message


async def drain(ws: ClientConnection) -> None:
    """Read (and answer) until the connection closes."""
    async with asyncio.timeout(10):
        while True:
            await reply(ws)


async def heartbeat_ok(ws: ClientConnection, unique_id: str = "hb") -> bool:
    await ws.send(json.dumps([2, unique_id, "Heartbeat", {}]))
    answer = await reply(ws)
    return answer[0] == 3 and answer[1] == unique_id


@pytest.mark.parametrize(
    ("subprotocol", "frame", "expected"),
    [
        ("ocpp1.6", "this is not json", [4, "-1", "FormatViolation"]),
        ("ocpp2.0.1", "this is not json", [4, "-1", "RpcFrameworkError"]),
        ("ocpp2.0.1", '{"an": "object"}', [4, "-1", "RpcFrameworkError"]),
        ("ocpp2.0.1", '[7, "m1", "Heartbeat", {}]', [4, "m1", "MessageTypeNotSupported"]),
        ("ocpp1.6", '[7, "m1", "Heartbeat", {}]', [4, "m1", "ProtocolError"]),
        ("ocpp1.6", '[2, "m2", "Heartbeat"]', [4, "m2", "ProtocolError"]),
        ("ocpp1.6", '[2, "m3", "Heartbeat", {"extra": 1}]', [4, "m3", "FormatViolation"]),
        (
            "ocpp2.0.1",
            '[2, "m4", "BootNotification", {"reason": "PowerUp"}]',
            [4, "m4", "ProtocolError"],
        ),
        (
            "ocpp1.6",
            json.dumps([2, "m5", "StatusNotification", STATUS_WITH_TEXT_CONNECTOR]),
            [4, "m5", "TypeConstraintViolation"],
        ),
        # OCPP-J: NotImplemented = action not known, NotSupported = known but not handled.
        ("ocpp1.6", '[2, "m6", "FooBar", {}]', [4, "m6", "NotImplemented"]),
        ("ocpp2.0.1", '[2, "m6", "StartTransaction", {}]', [4, "m6", "NotImplemented"]),
        (
            "ocpp1.6",
            '[2, "m7", "RemoteStartTransaction", {"idTag": "x"}]',
            [4, "m7", "NotSupported"],
        ),
        ("ocpp2.0.1", '[2, "m7", "RequestStartTransaction", {}]', [4, "m7", "NotSupported"]),
        ("ocpp2.0.1", '[2, "m8", "TransactionEvent", {}]', [4, "m8", "ProtocolError"]),
    ],
)
async def test_bad_frames_get_the_right_callerror(
    subprotocol: str, frame: str, expected: list[Any]
) -> None:
    async with run_bridge(records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", subprotocol)
        good = await open_ws(bridge.url, "GOOD", subprotocol)
        await bad.send(frame)
        answer = await reply(bad)
        assert answer[:3] == expected
        assert len(answer) == 5
        assert isinstance(answer[4], dict)
        # The same connection keeps working, and so does everybody else's.
        assert await heartbeat_ok(bad)
        assert await heartbeat_ok(good)
        await bad.close()
        await good.close()


async def test_binary_frame_gets_a_callerror() -> None:
    async with run_bridge(records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp2.0.1")
        await bad.send(b"\x00\x01binary")
        assert (await reply(bad))[:3] == [4, "-1", "RpcFrameworkError"]
        await bad.close()


async def test_oversize_frame_closes_only_that_connection() -> None:
    settings = BridgeSettings(host="127.0.0.1", port=0, max_frame_bytes=4096)
    async with run_bridge(settings, records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp1.6")
        good = await open_ws(bridge.url, "GOOD", "ocpp1.6")
        await bad.send(
            json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 10_000}])
        )
        with pytest.raises(ConnectionClosed) as closed:
            await drain(bad)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert await heartbeat_ok(good)
        await good.close()


async def test_a_flood_is_refused_logged_once_and_spares_other_chargers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = BridgeSettings(host="127.0.0.1", port=0, max_calls_per_s=5, call_burst=10)
    async with run_bridge(settings, records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp1.6")
        good = await open_ws(bridge.url, "GOOD", "ocpp1.6")
        with caplog.at_level(logging.WARNING, logger="ocpp_bridge"):
            for i in range(60):
                await bad.send(json.dumps([2, f"f{i}", "Heartbeat", {}]))
            answers = [await reply(bad) for _ in range(60)]
            assert await heartbeat_ok(good)
        refused = [a for a in answers if a[0] == 4]
        assert refused
        assert all(a[2] == "GenericError" for a in refused)
        assert sum(1 for a in answers if a[0] == 3) >= 10  # the burst was served
        flood_lines = [r for r in caplog.records if "flood" in r.getMessage()]
        assert len(flood_lines) == 1
        assert "BAD" in flood_lines[0].getMessage()
        await bad.close()
        await good.close()


async def test_a_handler_crash_becomes_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_bridge(records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp1.6")
        await heartbeat_ok(bad)
        connection = bridge.system._chargers["BAD"].connection
        assert connection is not None

        def explode(**kwargs: Any) -> Any:
            raise RuntimeError("bug")

        connection.route_map["Heartbeat"]["_on_action"] = explode
        await bad.send(json.dumps([2, "x", "Heartbeat", {}]))
        assert (await reply(bad))[:3] == [4, "x", "InternalError"]
        await bad.close()
