"""A CSMS built on the `ocpp` library (mobilityhouse), in the test's event loop.

The upstream peer of local-controller tests beside the npm ocpp-rpc one (tests/peers/csms.js):
a second, independently written reading of the specifications. Its `ChargePoint` classes
validate every message both ways against the official schemas (the library's jsonschema
check), answer what a charger sends as a plain CSMS would, and run its CALLs (`call`).
Every frame is recorded as it crossed the socket; a CALLERROR it answered with is a complaint.

`OcppCsms.start(ssl=...)` serves ``wss://`` (with `ssl.CERT_REQUIRED` in the context: mutual
TLS); each connection records the identity in its path, the subprotocol, the Authorization
header and the CN of the client certificate it presented.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Recorded:
    """The websocket as the library sees it; every frame noted (direction, parsed)."""

    def __init__(
        self,
        websocket: ServerConnection,
        frames: list[tuple[str, list[Any]]],
        changed: asyncio.Event,
    ) -> None:
        self._websocket = websocket
        self._frames = frames
        self._changed = changed

    async def recv(self) -> str:
        frame = await self._websocket.recv()
        assert isinstance(frame, str)
        self._frames.append(("in", json.loads(frame)))
        self._changed.set()
        return frame

    async def send(self, frame: str) -> None:
        self._frames.append(("out", json.loads(frame)))
        self._changed.set()
        await self._websocket.send(frame)


_transaction_ids = itertools.count(100)


class Csms16(ChargePoint16):  # type: ignore[misc]
    @on("BootNotification")  # type: ignore[untyped-decorator]
    def boot(self, **_: Any) -> Any:
        return r16.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    def heartbeat(self, **_: Any) -> Any:
        return r16.Heartbeat(current_time=_now())

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    def status(self, **_: Any) -> Any:
        return r16.StatusNotification()

    @on("Authorize")  # type: ignore[untyped-decorator]
    def authorize(self, **_: Any) -> Any:
        return r16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")  # type: ignore[untyped-decorator]
    def start_transaction(self, **_: Any) -> Any:
        return r16.StartTransaction(
            transaction_id=next(_transaction_ids), id_tag_info={"status": "Accepted"}
        )

    @on("MeterValues")  # type: ignore[untyped-decorator]
    def meter_values(self, **_: Any) -> Any:
        return r16.MeterValues()

    @on("StopTransaction")  # type: ignore[untyped-decorator]
    def stop_transaction(self, **_: Any) -> Any:
        return r16.StopTransaction()


class Csms201(ChargePoint201):  # type: ignore[misc]
    @on("BootNotification")  # type: ignore[untyped-decorator]
    def boot(self, **_: Any) -> Any:
        return r201.BootNotification(current_time=_now(), interval=300, status="Accepted")

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    def heartbeat(self, **_: Any) -> Any:
        return r201.Heartbeat(current_time=_now())

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    def status(self, **_: Any) -> Any:
        return r201.StatusNotification()

    @on("Authorize")  # type: ignore[untyped-decorator]
    def authorize(self, **_: Any) -> Any:
        return r201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")  # type: ignore[untyped-decorator]
    def transaction_event(self, **kwargs: Any) -> Any:
        if "id_token" in kwargs:
            return r201.TransactionEvent(id_token_info={"status": "Accepted"})
        return r201.TransactionEvent()

    @on("NotifyEVChargingNeeds")  # type: ignore[untyped-decorator]
    def charging_needs(self, **_: Any) -> Any:
        return r201.NotifyEVChargingNeeds(status="Accepted")

    @on("MeterValues")  # type: ignore[untyped-decorator]
    def meter_values(self, **_: Any) -> Any:
        return r201.MeterValues()


@dataclass
class Station:
    """One charger connected to the CSMS (one per websocket, in connection order)."""

    identity: str
    protocol: str | None
    authorization: str | None
    certificate_cn: str | None
    point: Any  # the library's ChargePoint
    frames: list[tuple[str, list[Any]]]
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class OcppCsms:
    server: Server
    port: int
    stations: list[Station] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> OcppCsms:
        csms: OcppCsms | None = None

        async def handler(websocket: ServerConnection) -> None:
            assert csms is not None
            await csms._serve(websocket)

        server = await serve(
            handler,
            "127.0.0.1",
            port,
            subprotocols=[Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")],
            ssl=ssl_context,
            ping_interval=None,
        )
        csms = cls(server, next(iter(server.sockets)).getsockname()[1])
        return csms

    async def _serve(self, websocket: ServerConnection) -> None:
        frames: list[tuple[str, list[Any]]] = []
        identity = websocket.request.path.rsplit("/", 1)[-1] if websocket.request else ""
        kind = Csms201 if websocket.subprotocol == "ocpp2.0.1" else Csms16
        point = kind(identity, _Recorded(websocket, frames, self._changed))
        station = Station(
            identity,
            websocket.subprotocol,
            websocket.request.headers.get("Authorization") if websocket.request else None,
            _certificate_cn(websocket),
            point,
            frames,
        )
        self.stations.append(station)
        self._changed.set()
        try:
            with contextlib.suppress(ConnectionClosed):
                await point.start()
        finally:
            station.closed.set()
            self._changed.set()

    # --- reading what it got -------------------------------------------------------------------

    def frames(self, identity: str) -> list[list[Any]]:
        """Every frame the CSMS received from `identity` (all its connections), in order."""
        return [
            message
            for station in self.stations
            if station.identity == identity
            for direction, message in station.frames
            if direction == "in"
        ]

    def calls(self, identity: str) -> list[tuple[str, dict[str, Any]]]:
        return [(m[2], m[3]) for m in self.frames(identity) if m[0] == 2]

    def complaints(self) -> list[list[Any]]:
        """The CALLERRORs it answered with (a schema failure, an unknown action, ...)."""
        return [
            message
            for station in self.stations
            for direction, message in station.frames
            if direction == "out" and message[0] == 4
        ]

    async def wait_for(self, predicate: Any, timeout_s: float = 20.0, what: str = "") -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                got = {s.identity: [m for _, m in s.frames] for s in self.stations}
                raise AssertionError(f"{what or predicate} not met in {timeout_s} s; got {got}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for_call(
        self, identity: str, action: str, count: int = 1, timeout_s: float = 20.0
    ) -> None:
        await self.wait_for(
            lambda: sum(1 for a, _ in self.calls(identity) if a == action) >= count,
            timeout_s,
            f"{count} {action} from {identity}",
        )

    def station(self, identity: str) -> Station:
        """The latest connection of `identity`."""
        return [s for s in self.stations if s.identity == identity][-1]

    async def call(self, identity: str, payload: Any, timeout_s: float = 20.0) -> Any:
        """A CALL of the CSMS (an `ocpp.v16.call` / `ocpp.v201.call` dataclass); its result."""
        return await asyncio.wait_for(self.station(identity).point.call(payload), timeout_s)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def _certificate_cn(websocket: ServerConnection) -> str | None:
    ssl_object = websocket.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert()
    if not certificate:
        return None
    for entry in certificate.get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return str(value)
    return None
