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
from tests.support.ocppj_frames import BAD_FRAMES

pytestmark = pytest.mark.integration

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


@pytest.mark.parametrize(("subprotocol", "frame", "expected"), BAD_FRAMES)
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

        monkeypatch.setattr(connection, "on_heartbeat", explode)
        await bad.send(json.dumps([2, "x", "Heartbeat", {}]))
        assert (await reply(bad))[:3] == [4, "x", "InternalError"]
        await bad.close()
