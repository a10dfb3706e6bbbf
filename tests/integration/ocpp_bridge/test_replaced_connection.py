"""A charger that reconnects before the old socket is gone: the new connection starts from
scratch, so no dynamic profile reaches it before its own safe layer."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from ocpp_bridge.connection import Connection
from ocpp_bridge.events import CommandStatus, PowerPeriod
from ocpp_bridge.settings import BridgeSettings
from ocpp_bridge.simulator import ProtocolName, SimCharger16, open_connection, running
from ocpp_bridge.timestamps import utc_now
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge
from tests.integration.ocpp_bridge.test_smart_charging import record

pytestmark = pytest.mark.integration


async def test_no_dynamic_profile_reaches_a_replacing_connection_before_its_safe_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closing = asyncio.Event()
    release = asyncio.Event()
    original_close = Connection.close

    async def slow_close(self: Connection, *args: Any, **kwargs: Any) -> None:
        # The old socket takes its time to close (a station that restarted does not answer
        # the close handshake): the window in which the new connection is not booted yet.
        closing.set()
        await release.wait()
        await original_close(self, *args, **kwargs)

    async with (
        run_bridge(BridgeSettings(host="127.0.0.1", port=0), records=[record()]) as bridge,
        running(SimCharger16, bridge.url, "CP1", PASSWORD) as sim,
    ):
        await sim.boot()
        await bridge.log.wait_for(lambda: bridge.system.snapshot()[0].safe_purpose, what="safe")
        monkeypatch.setattr(Connection, "close", slow_close)
        replacing = await open_connection(bridge.url, "CP1", ProtocolName.OCPP16, PASSWORD)
        try:
            await asyncio.wait_for(closing.wait(), 10)
            now = utc_now()
            result = await bridge.system.set_dynamic_schedule(
                "CP1", [PowerPeriod(now, 22_080)], now + timedelta(hours=1)
            )
            assert result.status is CommandStatus.OFFLINE, result
            try:
                frame = await asyncio.wait_for(replacing.recv(), 0.5)
            except TimeoutError:
                frame = None
            assert frame is None or json.loads(frame)[2] != "SetChargingProfile", frame
        finally:
            release.set()
            await replacing.close()
