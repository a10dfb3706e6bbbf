"""Local-controller mode: chargers connect here, and are relayed to the operator's own CSMS.

The listener and its admission (identity, subprotocol, security profile, registry) are the
central system's; instead of answering a charger itself, each connection opens one upstream
websocket to the charger's CSMS (`ocpp_bridge.upstream`) with the same identity (or the one
configured) and the subprotocol the charger negotiated, and a `relay.Relay` decides what goes
where. This module is the I/O around it: sockets, the deadline timer, the upstream back-off.

The upstream is opened when the charger connects and reopened after a loss with exponential
back-off (doubling up to a cap, with up to 10 % jitter so that a site's chargers do not all
knock at once). While it is away the policy applies (`relay.UpstreamPolicy`).

Our own CALLs to a relayed charger (`call`) go through the relay with our prefixed ids; their
answers never reach the CSMS.

What autonomous mode queued for replay lives in memory: a restart of the agent while the CSMS
is away loses it (`Relay.replay_queue` is what a persistent store would keep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocpp_bridge import ocppj
from ocpp_bridge.admission import basic_credentials
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.relay import (
    AnsweredLocally,
    CloseCharger,
    CloseUpstream,
    FollowUp,
    OurAnswer,
    Rejected,
    Relay,
    RelayEvent,
)
from ocpp_bridge.server import SUBPROTOCOLS, CentralSystem
from ocpp_bridge.settings import SettingsError
from ocpp_bridge.upstream import UpstreamSettings, UpstreamTarget

log = logging.getLogger(__name__)

_Answer = ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut | ocppj.CallAborted


class RelayedChargerOffline(ConnectionError):
    """The charger is not connected through the local controller."""


@dataclass
class _Writer:
    """Frames for one websocket, written in order by one writer at a time."""

    unsent: deque[str] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, websocket: ServerConnection | ClientConnection | None) -> None:
        if not self.unsent:
            return
        async with self.lock:
            while self.unsent:
                if websocket is None:
                    # No upstream: the relay re-sends what was unanswered once it is back.
                    self.unsent.clear()
                    return
                frame = self.unsent.popleft()
                try:
                    await websocket.send(frame)
                except ConnectionClosed:
                    self.unsent.clear()  # the read loops report the loss
                    return


class RelaySession:
    """One relayed charger: its websocket, its upstream websocket and the relay between."""

    def __init__(
        self,
        charger_id: str,
        websocket: ServerConnection,
        version: ProtocolVersion,
        target: UpstreamTarget,
        charger_password: str | None,
        settings: UpstreamSettings,
        relay: Relay,
        on_follow_up: Callable[[str, ocppj.Call], None] | None = None,
    ) -> None:
        self.charger_id = charger_id
        self.websocket = websocket
        self.version = version
        self.target = target
        self.settings = settings
        self.relay = relay
        self.upstream: ClientConnection | None = None
        self.upstream_connections = 0
        self._charger_password = charger_password
        self._on_follow_up = on_follow_up
        self._down = _Writer()
        self._up = _Writer()
        self._waiters: dict[str, asyncio.Future[_Answer]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._upstream_task: asyncio.Task[Any] | None = None
        self.closed = asyncio.Event()

    # --- plumbing ----------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"{name}:{self.charger_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def finished(self) -> bool:
        """The charger left and the CSMS heard everything it was owed."""
        return self.closed.is_set() and not self.relay.replays_pending

    def stop(self) -> None:
        """Stop the upstream side too (a newer connection of the charger took over)."""
        for task in list(self._tasks):
            task.cancel()

    async def _apply(self, events: list[RelayEvent]) -> None:
        for event in events:
            if isinstance(event, OurAnswer):
                waiter = self._waiters.pop(event.answer.unique_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.answer)
            elif isinstance(event, FollowUp):
                if self._on_follow_up is not None:
                    self._on_follow_up(self.charger_id, event.call)
            elif isinstance(event, AnsweredLocally):
                log.info(
                    "charger %s: %s answered locally (CSMS away)%s",
                    self.charger_id,
                    event.call.action,
                    ", queued for replay" if event.replayed else "",
                    extra={"charger_id": self.charger_id},
                )
            elif isinstance(event, Rejected):
                side = "charger" if event.from_charger else "CSMS"
                log.warning(
                    "charger %s: %s frame rejected: %s (%s)",
                    self.charger_id,
                    side,
                    event.rejected.problem,
                    event.rejected.detail,
                    extra={"charger_id": self.charger_id},
                )
            elif isinstance(event, CloseCharger):
                self._spawn(self.websocket.close(event.code, event.reason), "close-charger")
            elif isinstance(event, CloseUpstream) and self.upstream is not None:
                self._spawn(self.upstream.close(event.code, event.reason), "close-upstream")
        await self._flush()

    async def _flush(self) -> None:
        self._down.unsent.extend(self.relay.to_charger())
        self._up.unsent.extend(self.relay.to_csms())
        self._arm_timer()
        await self._down.write(self.websocket)
        await self._up.write(self.upstream)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.relay.deadline
        if deadline is not None and not self.closed.is_set():
            self._timer = asyncio.get_running_loop().call_at(deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        events = self.relay.timeout(self._now())
        self._spawn(self._apply(events), "timeout")

    # --- the two read loops ------------------------------------------------------------------

    async def run(self) -> None:
        self._upstream_task = self._spawn(self._upstream_loop(), "upstream")
        try:
            async for raw in self.websocket:
                await self._apply(self.relay.from_charger(raw, self._now()))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            if self._timer is not None:
                self._timer.cancel()
            for event in self.relay.charger_closed():
                waiter = self._waiters.pop(event.answer.unique_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.answer)
            for task in list(self._tasks):
                if task is not self._upstream_task or self.finished():
                    task.cancel()
            if self.finished() and self.upstream is not None:
                with contextlib.suppress(Exception):
                    await self.upstream.close(1000, "charger disconnected")
            elif not self.finished():
                log.info(
                    "charger %s disconnected; the upstream stays until the CSMS heard its "
                    "queued messages",
                    self.charger_id,
                    extra={"charger_id": self.charger_id},
                )

    async def _open_upstream(self) -> ClientConnection:
        headers = {}
        authorization = self.target.authorization(self.charger_id, self._charger_password)
        if authorization is not None:
            headers["Authorization"] = authorization
        return await connect(
            self.target.uri(self.charger_id),
            subprotocols=[Subprotocol(f"ocpp{self.version}")],
            additional_headers=headers,
            ssl=self.target.ssl_context(),
            open_timeout=self.settings.connect_timeout_s,
            user_agent_header="flexbridge",
            # Pings are the charger's and the CSMS's business; ours could mask a dead CSMS
            # only as long as theirs would.
            max_size=None,
        )

    async def _upstream_loop(self) -> None:
        try:
            await self._keep_upstream()
        finally:
            upstream, self.upstream = self.upstream, None
            if upstream is not None:
                with contextlib.suppress(Exception):
                    await upstream.close(1000, "charger disconnected")

    async def _keep_upstream(self) -> None:
        delay = self.settings.reconnect_initial_s
        first = True
        while not self.finished():
            try:
                upstream = await self._open_upstream()
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, SettingsError) as exc:
                log.warning(
                    "charger %s: CSMS at %s unreachable (%s); next try in %.1f s",
                    self.charger_id,
                    self.target.url,
                    exc,
                    delay,
                    extra={"charger_id": self.charger_id},
                )
                if first:
                    await self._apply(self.relay.upstream_failed(self._now()))
                    first = False
                await asyncio.sleep(delay * (1 + 0.1 * random.random()))
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            first = False
            delay = self.settings.reconnect_initial_s
            if upstream.subprotocol != f"ocpp{self.version}":
                log.error(
                    "charger %s: CSMS did not accept ocpp%s; closing",
                    self.charger_id,
                    self.version,
                    extra={"charger_id": self.charger_id},
                )
                await upstream.close(1002, "subprotocol not accepted")
                await asyncio.sleep(delay)
                continue
            self.upstream = upstream
            self.upstream_connections += 1
            log.info(
                "charger %s: relayed to %s",
                self.charger_id,
                self.target.uri(self.charger_id),
                extra={"charger_id": self.charger_id},
            )
            await self._apply(self.relay.upstream_connected(self._now()))
            try:
                async for raw in upstream:
                    await self._apply(self.relay.from_csms(raw, self._now()))
                    if self.finished():
                        await upstream.close(1000, "charger disconnected")
            except ConnectionClosed:
                pass
            self.upstream = None
            if self.finished():
                return
            log.warning(
                "charger %s: CSMS connection lost",
                self.charger_id,
                extra={"charger_id": self.charger_id},
            )
            await self._apply(self.relay.upstream_lost(self._now()))
            await asyncio.sleep(delay * (1 + 0.1 * random.random()))

    # --- our CALLs ---------------------------------------------------------------------------

    async def call(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Our CALL to the charger; the CALLRESULT payload, or OCPPError-like failures."""
        if self.closed.is_set():
            raise RelayedChargerOffline(f"{self.charger_id} is not connected")
        loop = asyncio.get_running_loop()
        unique_id = self.relay.send_our_call(action, payload, self._now(), timeout_s)
        waiter: asyncio.Future[_Answer] = loop.create_future()
        self._waiters[unique_id] = waiter
        try:
            await self._flush()
            answer = await waiter
        finally:
            self.relay.downstream.cancel_call(unique_id)
            self._waiters.pop(unique_id, None)
        if isinstance(answer, ocppj.CallResult):
            return answer.payload
        if isinstance(answer, ocppj.CallError):
            raise RelayedCallError(answer.code, answer.description)
        if isinstance(answer, ocppj.CallTimedOut):
            raise TimeoutError(f"no response from {self.charger_id}")
        raise RelayedChargerOffline(f"{self.charger_id} disconnected before answering")


class RelayedCallError(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class LocalController(CentralSystem):
    """The central system's listener and admission, with every charger relayed upstream.

    A charger with no upstream target (no default, not listed) is refused with 1008.
    """

    name = "ocpp-local-controller"

    def __init__(
        self,
        *args: Any,
        upstream: UpstreamSettings,
        on_follow_up: Callable[[str, ocppj.Call], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.upstream_settings = upstream
        self.sessions: dict[str, RelaySession] = {}
        # The latest relay of every charger seen: a new connection takes over its replays,
        # its transaction ids and its local-id counter.
        self._relays: dict[str, Relay] = {}
        self._on_follow_up = on_follow_up
        self._passwords: WeakKeyDictionary[ServerConnection, str] = WeakKeyDictionary()

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        refused = await super()._admit(connection, request)
        if refused is None:
            credentials = basic_credentials(request.headers)
            if credentials is not None:
                # Checked above; kept for this handshake only, to pass it upstream.
                self._passwords[connection] = credentials[1]
        return refused

    async def _handle(self, websocket: ServerConnection) -> None:
        record = self._admitted.pop(websocket, None)
        password = self._passwords.pop(websocket, None)
        if record is None:
            await websocket.close(1011, "not admitted")
            return
        if websocket.subprotocol is None:
            if websocket.request is not None and websocket.request.headers.get_all(
                "Sec-WebSocket-Protocol"
            ):
                await websocket.close(1002, "supported subprotocols: ocpp2.0.1, ocpp1.6")
                return
            version = ProtocolVersion.OCPP16
        else:
            version = SUBPROTOCOLS[websocket.subprotocol]
        charger_id = record.charger_id
        target = self.upstream_settings.target_for(charger_id)
        if target is None:
            log.warning(
                "charger %s has no upstream CSMS configured; closing",
                charger_id,
                extra={"charger_id": charger_id},
            )
            await websocket.close(1008, "no upstream CSMS configured for this charger")
            return
        settings = self.upstream_settings
        relay = Relay(
            version,
            clock=self.clock,
            policy=settings.policy,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            call_timeout_s=settings.call_timeout_s,
            local_transaction_ids=settings.local_transaction_ids,
            request_ids=settings.request_ids,
            authorize_offline=settings.authorize_offline,
        )
        session = RelaySession(
            charger_id, websocket, version, target, password, settings, relay, self._on_follow_up
        )
        previous = self.sessions.get(charger_id)
        self.sessions[charger_id] = session
        if previous is not None:
            previous.stop()
            await previous.websocket.close(1000, "replaced by a new connection")
        earlier = self._relays.get(charger_id)
        if earlier is not None and earlier.version is version:
            relay.adopt(earlier)
        self._relays[charger_id] = relay
        log.info(
            "charger %s connected (OCPP %s, relayed)",
            charger_id,
            version,
            extra={"charger_id": charger_id},
        )
        try:
            await session.run()
        finally:
            # A session still replaying to the CSMS stays until a new connection takes over.
            if self.sessions.get(charger_id) is session and session.finished():
                del self.sessions[charger_id]

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Our own CALL to a relayed charger (smart charging); its answer stays here."""
        session = self.sessions.get(charger_id)
        if session is None:
            raise RelayedChargerOffline(f"{charger_id} is not connected")
        return await session.call(action, payload, timeout_s)
