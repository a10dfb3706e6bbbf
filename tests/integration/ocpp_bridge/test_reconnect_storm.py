"""500 chargers reconnecting at once after a restart of the bridge: nothing is lost.

Half speak 1.6, half 2.0.1. Each has a transaction open when the bridge goes away; the new
bridge process (a fresh CentralSystem with an empty credential cache, as after a restart)
must admit them all, re-install every safe profile, and turn the transactions they finish
into sessions with the same ids the old process used.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from ocpp_bridge.events import ChargerConnected, MeterSample, SessionEnded, SessionStarted
from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from ocpp_bridge.simulator import SimCharger16, SimCharger201, basic_auth_header
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge, test_hash
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHARGERS = 500


@dataclass
class Station:
    identity: str
    sim_class: type[SimCharger16] | type[SimCharger201]
    sim: Any = None
    task: asyncio.Task[Any] | None = None
    transaction_id: str | None = None

    async def connect(self, url: str) -> None:
        subprotocol = "ocpp1.6" if self.sim_class is SimCharger16 else "ocpp2.0.1"
        for attempt in range(20):  # chargers retry with back-off (1.6 §4.1.1 style)
            try:
                ws = await websockets.connect(
                    f"{url}/{self.identity}",
                    subprotocols=[websockets.Subprotocol(subprotocol)],
                    additional_headers=basic_auth_header(self.identity, PASSWORD),
                    open_timeout=60,
                    compression=None,
                )
                break
            except OSError:
                await asyncio.sleep(0.1 * (attempt + 1))
        else:
            raise AssertionError(f"{self.identity} could not reconnect")
        store = self.sim.store if self.sim is not None else None
        self.sim = self.sim_class(self.identity, ws)
        if store is not None:
            self.sim.store = store  # a charger keeps its profiles across reconnects
        self.task = asyncio.create_task(self._serve(self.sim))

    @staticmethod
    async def _serve(sim: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await sim.start()

    async def begin(self) -> None:
        await self.sim.boot()
        if self.sim_class is SimCharger16:
            self.transaction_id = str(await self.sim.start_transaction(1, 1_000))
            await self.sim.meter_values(1, int(self.transaction_id), 1_500, 7_000)
        else:
            self.transaction_id = f"TX-{self.identity}"
            await self.sim.transaction_event("Started", self.transaction_id, 0, 1_000.0)
            await self.sim.transaction_event("Updated", self.transaction_id, 1, 1_500.0)

    async def finish(self) -> None:
        """After the reconnect: no new boot (chargers need not), a sample, then the stop."""
        assert self.transaction_id is not None
        if self.sim_class is SimCharger16:
            await self.sim.status(1, "Charging")
            await self.sim.meter_values(1, int(self.transaction_id), 2_000, 7_000)
            await self.sim.stop_transaction(int(self.transaction_id), 2_500)
        else:
            await self.sim.status(1, "Occupied")
            await self.sim.transaction_event("Updated", self.transaction_id, 2, 2_000.0)
            await self.sim.transaction_event("Ended", self.transaction_id, 3, 2_500.0)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await self.task
        if self.sim is not None:
            await self.sim._connection.close()


async def test_500_chargers_reconnect_at_once_and_nothing_is_lost() -> None:
    port = free_port()
    settings = BridgeSettings(host="127.0.0.1", port=port, response_timeout_s=60, ping_interval_s=0)
    password_hash = test_hash()
    records = [ChargerRecord(f"CP{i:03d}", password_hash) for i in range(CHARGERS)]
    stations = [
        Station(r.charger_id, SimCharger16 if i % 2 == 0 else SimCharger201)
        for i, r in enumerate(records)
    ]
    try:
        async with run_bridge(settings, records=records) as first:
            await asyncio.gather(*(s.connect(first.url) for s in stations))
            await asyncio.gather(*(s.begin() for s in stations))
            await first.log.wait_for(
                lambda: len(first.log.of(SessionStarted)) == CHARGERS, 120, "sessions started"
            )
            await first.log.wait_for(
                lambda: all(s.sim.store.profiles for s in stations), 120, "safe profiles"
            )
            before = {e.session.session_id for e in first.log.of(SessionStarted)}
            url = first.url
        # The bridge is gone; every socket dropped. A new process starts on the same port.
        async with run_bridge(settings, records=records) as second:
            sent_before = {s.identity: len(s.sim.store.history) for s in stations}
            await asyncio.gather(*(s.connect(url) for s in stations))
            await asyncio.gather(*(s.finish() for s in stations))
            log = second.log
            await log.wait_for(lambda: len(log.of(SessionEnded)) == CHARGERS, 180, "sessions ended")
            await log.wait_for(
                lambda: all(len(s.sim.store.history) > sent_before[s.identity] for s in stations),
                180,
                "safe profiles re-sent",
            )
            assert {e.session.session_id for e in log.of(SessionEnded)} == before
            assert all(e.session.energy_wh is not None for e in log.of(SessionEnded))
            assert len({e.charger_id for e in log.of(ChargerConnected)}) == CHARGERS
            assert len({e.charger_id for e in log.of(MeterSample)}) == CHARGERS
            assert second.system.dropped_events == 0
            snapshot = second.system.snapshot()
            assert len(snapshot) == CHARGERS
            assert all(c.online for c in snapshot)
            await log.wait_for(
                lambda: all(
                    c.safe_purpose == "ChargingStationMax" for c in second.system.snapshot()
                ),
                60,
                "safe layer confirmed everywhere",
            )
    finally:
        await asyncio.gather(*(s.close() for s in stations), return_exceptions=True)
