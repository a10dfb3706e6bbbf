"""The two CSMS processes `bench/ocpp.py` measures: ``python -m bench._ocpp_server KIND PORT``.

- ``baseline``: a CSMS in a few lines with the `ocpp` library's defaults: every route
  validated with jsonschema (in the default thread pool, ``ASYNC_VALIDATION``), handlers
  that answer and keep nothing.
- ``bridge``: flexbridge's `CentralSystem` at security profile 1 with the agent-side event
  handling attached (a consumer that keeps the live per-charger state, as agent.site.model does).
- ``proxy UPSTREAM_PORT``: the same, as a `LocalController` relaying every charger to the CSMS
  on UPSTREAM_PORT (``python -m bench proxy``).

Prints ``READY <port>`` once listening; stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

N_RECORDS = 2000
PASSWORD = "bench-password-0123"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stdin_closed = asyncio.ensure_future(reader.read())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stdin_closed, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in (stdin_closed, stopped):
        task.cancel()


async def baseline(port: int) -> None:
    import websockets
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint as CP16
    from ocpp.v16 import call_result as r16
    from ocpp.v16.enums import Action as A16
    from ocpp.v201 import ChargePoint as CP201
    from ocpp.v201 import call_result as r201
    from ocpp.v201.enums import Action as A201
    from websockets.asyncio.server import serve
    from websockets.typing import Subprotocol

    class Csms16(CP16):  # type: ignore[misc]
        @on(A16.boot_notification)  # type: ignore[untyped-decorator]
        def boot(self, **kw: Any) -> Any:
            return r16.BootNotification(current_time=_now(), interval=300, status="Accepted")

        @on(A16.meter_values)  # type: ignore[untyped-decorator]
        def meter_values(self, **kw: Any) -> Any:
            return r16.MeterValues()

        @on(A16.heartbeat)  # type: ignore[untyped-decorator]
        def heartbeat(self, **kw: Any) -> Any:
            return r16.Heartbeat(current_time=_now())

    class Csms201(CP201):  # type: ignore[misc]
        @on(A201.boot_notification)  # type: ignore[untyped-decorator]
        def boot(self, **kw: Any) -> Any:
            return r201.BootNotification(current_time=_now(), interval=300, status="Accepted")

        @on(A201.transaction_event)  # type: ignore[untyped-decorator]
        def transaction_event(self, **kw: Any) -> Any:
            if "id_token" in kw:
                return r201.TransactionEvent(id_token_info={"status": "Accepted"})
            return r201.TransactionEvent()

        @on(A201.heartbeat)  # type: ignore[untyped-decorator]
        def heartbeat(self, **kw: Any) -> Any:
            return r201.Heartbeat(current_time=_now())

    async def handler(ws: Any) -> None:
        cls = Csms201 if ws.subprotocol == "ocpp2.0.1" else Csms16
        with contextlib.suppress(websockets.ConnectionClosed):
            await cls(ws.request.path.rsplit("/", 1)[-1], ws).start()

    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=[Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")],
        ping_interval=None,
    ) as server:
        print(f"READY {next(iter(server.sockets)).getsockname()[1]}", flush=True)
        await _until_stopped()


class SiteState:
    """What agent.site.model keeps per event: latest power and energy per charger, open sessions."""

    def __init__(self) -> None:
        self.power: dict[tuple[str, int], float | None] = {}
        self.energy: dict[str, float | None] = {}
        self.sessions: set[str] = set()
        self.events = 0

    async def handle(self, event: Any) -> None:
        from ocpp_bridge import events as ev

        self.events += 1
        if isinstance(event, ev.MeterSample):
            self.power[(event.charger_id, event.evse_id)] = event.power_w
        elif isinstance(event, ev.SessionStarted | ev.SessionUpdated):
            self.sessions.add(event.session.session_id)
            self.energy[event.session.session_id] = event.session.energy_wh
        elif isinstance(event, ev.SessionEnded):
            self.sessions.discard(event.session.session_id)


async def bridge(port: int, upstream_port: int | None = None) -> None:
    from ocpp_bridge.local_controller import LocalController
    from ocpp_bridge.passwords import hash_password
    from ocpp_bridge.server import CentralSystem
    from ocpp_bridge.settings import BridgeSettings, ChargerRecord, InMemoryRegistry
    from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT, UpstreamSettings, UpstreamTarget

    # One hash with the default (production) cost, shared: every charger still pays a full
    # scrypt verification on its first connection, as after a restart.
    password_hash = hash_password(PASSWORD)
    registry = InMemoryRegistry(
        ChargerRecord(f"BENCH{i:04d}", password_hash) for i in range(N_RECORDS)
    )
    site = SiteState()
    settings = BridgeSettings(
        host="127.0.0.1", port=port, ping_interval_s=0, max_calls_per_s=1000, call_burst=1000
    )
    system: CentralSystem
    if upstream_port is None:
        system = CentralSystem(settings, registry, on_event=site.handle)
    else:
        upstream = UpstreamSettings(
            default=UpstreamTarget(f"ws://127.0.0.1:{upstream_port}/ocpp"),
            connect_timeout_s=60.0,
        )
        settings = replace(settings, profile_layout=LOCAL_CONTROLLER_LAYOUT)
        system = LocalController(settings, registry, upstream=upstream, on_event=site.handle)
    await system.start()
    print(f"READY {system.port}", flush=True)
    try:
        await _until_stopped()
    finally:
        await system.stop()


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Per-charger warnings (e.g. load chargers without smart charging) are not what we measure.
    logging.basicConfig(level=logging.ERROR)
    if kind == "baseline":
        asyncio.run(baseline(port))
    else:
        asyncio.run(bridge(port, int(argv[2]) if kind == "proxy" else None))


if __name__ == "__main__":
    main(sys.argv[1:])
