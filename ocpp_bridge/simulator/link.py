"""A station's link to its CSMS: connect, boot, serve, reconnect with back-off, and the outbox
of messages that waits out a lost connection.

`StationLink` is the base of `SimulatedStation`: everything here is about the connection and
what travels over it, nothing about EVs or meters. The station gives it its state (`store`,
`evses`), its own loop (`_physics`) and answers the connection's profile and trigger
callbacks (`ProfileListener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from ocpp.exceptions import OCPPError
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ocpp_bridge.simulator.client import SimCharger, open_connection
from ocpp_bridge.simulator.common import ProtocolName, RealClock, SimClock, log
from ocpp_bridge.simulator.schedule import ProfileStore, StoredProfile
from ocpp_bridge.simulator.state import EvseState, StationSpec
from ocpp_bridge.simulator.v16 import SimCharger16
from ocpp_bridge.simulator.v201 import SimCharger201


@dataclass(frozen=True)
class ReconnectPolicy:
    """2.0.1 OCPPCommCtrlr RetryBackOff*: wait minimum x 2^attempt (at most repeat_times
    doublings) plus a random part, in the station's clock time."""

    wait_minimum_s: float = 5.0
    random_range_s: float = 5.0
    repeat_times: int = 5

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        doubling = 2.0 ** min(attempt, self.repeat_times)
        return self.wait_minimum_s * doubling + rng.uniform(0.0, self.random_range_s)


def raise_if_cancelling() -> None:
    """Python 3.11's asyncio.wait_for (used by the `ocpp` library for every CALL) can swallow
    a cancellation that races with the response (gh-86296); loops check for it themselves."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def finish(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again any that swallowed it."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a link that died is reported where it is noticed


@dataclass
class _Outgoing:
    send: Callable[[Any], Awaitable[None]]
    what: str
    transactional: bool


class StationLink(ABC):
    """The connection side of a simulated station (see `SimulatedStation`)."""

    store: ProfileStore  # the station's: it outlives every connection
    evses: dict[int, EvseState]  # the station's: their status is sent on every connection

    def __init__(
        self,
        spec: StationSpec,
        url: str,
        *,
        password: str | None,
        clock: SimClock | None,
        ssl_context: ssl.SSLContext | None,
        reconnect: ReconnectPolicy | None,
        boot_on_reconnect: bool,
        strict: bool,
        response_timeout_s: float,
        seed: int | None,
    ) -> None:
        self.spec = spec
        self.url = url
        self.password = password
        self.clock: SimClock = clock or RealClock()
        self.ssl_context = ssl_context
        self.reconnect = reconnect or ReconnectPolicy()
        self.boot_on_reconnect = boot_on_reconnect
        self.strict = strict
        self.response_timeout_s = response_timeout_s
        self._rng = random.Random(seed if seed is not None else spec.charger_id)
        self.connections = 0  # successful websocket handshakes so far
        self.heartbeats_sent = 0
        self.heartbeat_interval_s: float | None = None
        self.charger: SimCharger | None = None
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._booted_once = False
        self._tasks: list[asyncio.Task[Any]] = []

    @abstractmethod
    async def _physics(self) -> None:
        """The station's own loop, run beside the link while it is powered on."""

    # What the station does when its connection installs or clears a profile, or a CSMS
    # triggers a message (`ProfileListener`): the link hands itself to every connection.

    @abstractmethod
    def profiles_changing(self) -> None: ...

    @abstractmethod
    def profiles_changed(self, installed: StoredProfile | None = None) -> None: ...

    @abstractmethod
    def triggered(self, requested: str, evse_id: int | None) -> bool: ...

    @property
    def charger_id(self) -> str:
        return self.spec.charger_id

    @property
    def online(self) -> bool:
        return self._ready.is_set()

    @property
    def pending_messages(self) -> int:
        return len(self._outbox)

    def _charger_class(self) -> type[SimCharger16] | type[SimCharger201]:
        return SimCharger16 if self.spec.protocol is ProtocolName.OCPP16 else SimCharger201

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError(f"station {self.charger_id} is already running")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._physics(), name=f"sim-physics:{self.charger_id}"),
            loop.create_task(self._life(), name=f"sim-link:{self.charger_id}"),
        ]

    async def stop(self) -> None:
        """Power off: the link drops, sessions freeze as they are."""
        tasks, self._tasks = self._tasks, []
        await finish(tasks)
        self._ready.clear()

    async def wait_ready(self) -> None:
        """Until the station is connected and its boot accepted (in real time; add a timeout)."""
        await self._ready.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the link: connect, boot, serve, reconnect ----------------------------------------

    async def _life(self) -> None:
        attempt = 0
        while True:
            raise_if_cancelling()
            try:
                ws = await open_connection(
                    self.url,
                    self.charger_id,
                    self.spec.protocol,
                    self.password,
                    self.ssl_context,
                )
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                delay = self.reconnect.delay_s(attempt, self._rng)
                if attempt == 0:
                    log.info("%s cannot connect (%s); retrying", self.charger_id, exc)
                attempt += 1
                await self.clock.sleep(delay)
                continue
            attempt = 0
            self.connections += 1
            try:
                await self._serve(ws)
            finally:
                self._ready.clear()
                self.charger = None
                # Status and authorization are about now; they are re-sent after reconnecting.
                self._outbox = deque(o for o in self._outbox if o.transactional)
                with contextlib.suppress(Exception):
                    await ws.close()
            await self.clock.sleep(self.reconnect.delay_s(0, self._rng))

    async def _serve(self, ws: Any) -> None:
        charger = self._charger_class()(
            self.charger_id,
            ws,
            set(self.spec.refuse_purposes),
            store=self.store,
            clock=self.clock,
            listener=self,
            strict=self.strict,
            response_timeout_s=self.response_timeout_s,
        )
        if self.spec.protocol is ProtocolName.OCPP16:
            charger.configuration["MeterValueSampleInterval"] = str(int(self.spec.meter_interval_s))
        reader = asyncio.create_task(charger.start(), name=f"sim-read:{self.charger_id}")
        worker = asyncio.create_task(self._converse(charger), name=f"sim-talk:{self.charger_id}")
        try:
            done, _ = await asyncio.wait((reader, worker), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None and not isinstance(failure, ConnectionClosed):
                    log.warning("%s: link failed: %r", self.charger_id, failure)
        finally:
            await finish((reader, worker))

    async def _converse(self, charger: SimCharger) -> None:
        """Boot (first connection, or every one if so configured), statuses, then the outbox
        and heartbeats until the connection drops."""
        if not self._booted_once or self.boot_on_reconnect:
            while True:
                extra: dict[str, Any] = {"firmware_version": self.spec.firmware_version}
                if self.spec.serial_number:
                    v16 = self.spec.protocol is ProtocolName.OCPP16
                    key = "charge_point_serial_number" if v16 else "serial_number"
                    extra[key] = self.spec.serial_number
                response = await charger.boot(self.spec.vendor, self.spec.model, **extra)
                interval = float(getattr(response, "interval", 0) or 0) or 300.0
                if response is not None and response.status == "Accepted":
                    self.heartbeat_interval_s = interval
                    break
                # Pending/Rejected (1.6 §4.2, 2.0.1 B02/B03): try again after the interval.
                await self.clock.sleep(interval)
            self._booted_once = True
        self.charger = charger
        if self.spec.protocol is ProtocolName.OCPP16:
            await charger.status(0, "Available")
        for evse in self.evses.values():
            await self._send_status(charger, evse.evse_id, evse.state)
        self._ready.set()
        heartbeat = asyncio.create_task(self._heartbeats(charger))
        try:
            await self._drain(charger)
        finally:
            await finish((heartbeat,))

    async def _heartbeats(self, charger: SimCharger) -> None:
        while True:
            raise_if_cancelling()
            await self.clock.sleep(self.heartbeat_interval_s or 300.0)
            with contextlib.suppress(TimeoutError, OCPPError):
                await charger.heartbeat()
                self.heartbeats_sent += 1

    async def _drain(self, charger: SimCharger) -> None:
        """Send queued messages in order; transaction messages wait out a lost connection and
        go first after reconnecting (1.6 §4.8 / 2.0.1 E12: none are lost)."""
        while True:
            raise_if_cancelling()
            while not self._outbox:
                self._outbox_changed.clear()
                await self._outbox_changed.wait()
            item = self._outbox[0]
            try:
                await item.send(charger)
            except OCPPError as exc:
                # Refused by the CSMS: retrying the same message would be refused again.
                log.warning("%s: %s refused: %s", self.charger_id, item.what, exc)
            except TimeoutError:
                await self.clock.sleep(1.0)
                continue
            if self._outbox and self._outbox[0] is item:
                self._outbox.popleft()

    def _enqueue(
        self, send: Callable[[Any], Awaitable[None]], what: str, transactional: bool
    ) -> None:
        if not transactional and not self.online:
            return  # re-sent as current state after the reconnect
        self._outbox.append(_Outgoing(send, what, transactional))
        self._outbox_changed.set()

    async def _send_status(self, charger: SimCharger, evse_id: int, state: str) -> None:
        if isinstance(charger, SimCharger16):
            await charger.status(evse_id, state)
        else:
            await charger.status(evse_id, "Available" if state == "Available" else "Occupied")

    def _enqueue_status(self, evse_id: int, state: str) -> None:
        async def send(charger: SimCharger) -> None:
            await self._send_status(charger, evse_id, state)

        self._enqueue(send, f"status {evse_id} {state}", transactional=False)
