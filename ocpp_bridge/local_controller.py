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

What autonomous mode queued for replay, the 1.6 transaction ids it gave out and their CSMS
counterparts survive a restart when `UpstreamSettings.state_dir` is set: one JSON file per
charger, written (and synced) before the charger hears the local answer that put something in
the queue, taken up when the charger connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from ocpp_bridge import ocppj, schemas
from ocpp_bridge.admission import Admission
from ocpp_bridge.connection import (
    Answer,
    ChargerOfflineError,
    Connection,
    Connection16,
    Connection201,
)
from ocpp_bridge.deadline import DeadlineTimer
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.model import ChargerModel
from ocpp_bridge.problems import TokenBucket
from ocpp_bridge.relay import (
    Answered,
    AnsweredLocally,
    CloseCharger,
    CloseUpstream,
    CsmsCleared,
    FollowUp,
    OurAnswer,
    Rejected,
    Relay,
    RelayEvent,
)
from ocpp_bridge.server import CentralSystem
from ocpp_bridge.settings import SettingsError
from ocpp_bridge.upstream import UpstreamSettings, UpstreamTarget

log = logging.getLogger(__name__)


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
        observe: Callable[[ocppj.Call, dict[str, Any]], Awaitable[None]] | None = None,
        save: Callable[[Relay], None] | None = None,
        budget: TokenBucket | None = None,
        on_csms_clear: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`observe`: awaited with every charger CALL that got a CALLRESULT (from the CSMS or
        here) and that answer, in the charger's order, once the answer was written, so the site
        model follows the charger without holding up its answers."""
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
        self._observe = observe
        self._save = save
        self._on_csms_clear = on_csms_clear
        # Every charger frame takes from it; over it frames are dropped unread, and a charger
        # that keeps on is closed (the central system's per-charger limits).
        self._budget = budget
        self._refused = 0
        self._saved_revision = relay.revision
        self._down = _Writer()
        self._up = _Writer()
        self._waiters: dict[str, asyncio.Future[Answer]] = {}
        # Answered CALLs for the site model to follow, in order, and who follows them now.
        self._to_observe: deque[tuple[ocppj.Call, dict[str, Any]]] = deque()
        self._observing = asyncio.Lock()
        self._deadline = DeadlineTimer(self._deadline_passed)
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

    async def aclose(self) -> None:
        """Stop everything and wait until the upstream websocket is closed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _apply(self, events: list[RelayEvent]) -> None:
        """Act on what the relay said: the frames it wrote go out first, then the site model
        follows the CALLs answered (it never holds up an answer), in the relay's order."""
        for event in events:
            if isinstance(event, OurAnswer):
                waiter = self._waiters.pop(event.answer.unique_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.answer)
            elif isinstance(event, FollowUp):
                if self._on_follow_up is not None:
                    self._on_follow_up(self.charger_id, event.call)
                self._to_observe.append((event.call, {}))
            elif isinstance(event, Answered):
                self._to_observe.append((event.call, event.payload))
            elif isinstance(event, AnsweredLocally):
                self._to_observe.append((event.call, event.payload))
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
            elif isinstance(event, CsmsCleared) and self._on_csms_clear is not None:
                self._on_csms_clear(event.payload)
            elif isinstance(event, CloseUpstream) and self.upstream is not None:
                self._spawn(self.upstream.close(event.code, event.reason), "close-upstream")
        if self._save is not None and self.relay.revision != self._saved_revision:
            # Before the charger hears an answer that relies on it.
            self._save(self.relay)
            self._saved_revision = self.relay.revision
        await self._flush()
        await self._observe_all()

    async def _observe_all(self) -> None:
        """Follow the answered CALLs queued so far, one at a time, oldest first (whichever read
        loop gets here: they were queued in the relay's order before anything was awaited)."""
        async with self._observing:
            while self._to_observe:
                call, payload = self._to_observe.popleft()
                await self._observed(call, payload)

    async def _observed(self, call: ocppj.Call, payload: dict[str, Any]) -> None:
        if self._observe is not None:
            try:
                await self._observe(call, payload)
            except Exception:
                log.exception(
                    "charger %s: following %s failed",
                    self.charger_id,
                    call.action,
                    extra={"charger_id": self.charger_id},
                )

    async def _flush(self) -> None:
        self._down.unsent.extend(self.relay.to_charger())
        self._up.unsent.extend(self.relay.to_csms())
        self._arm_timer()
        await self._down.write(self.websocket)
        await self._up.write(self.upstream)

    def _arm_timer(self) -> None:
        self._deadline.follow(None if self.closed.is_set() else self.relay.deadline)

    def _deadline_passed(self, now: float) -> None:
        events = self.relay.timeout(now)
        self._spawn(self._apply(events), "timeout")

    # --- the two read loops ------------------------------------------------------------------

    async def run(self) -> None:
        self._upstream_task = self._spawn(self._upstream_loop(), "upstream")
        try:
            async for raw in self.websocket:
                if self._within_budget():
                    await self._apply(self.relay.from_charger(raw, self._now()))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._arm_timer()
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

    def _within_budget(self) -> bool:
        budget = self._budget
        if budget is None:
            return True
        if budget.take():
            # Forgiven only once the charger slowed down for a while (as `Connection` does).
            if budget.tokens >= budget.burst / 2:
                self._refused = 0
            return True
        self._refused += 1
        if self._refused == Connection.FLOOD_CLOSE_AFTER:
            log.warning(
                "charger %s: message flood; closing",
                self.charger_id,
                extra={"charger_id": self.charger_id},
            )
            self._spawn(self.websocket.close(1008, "message flood"), "flood-close")
        return False

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
        """Our CALL to the charger; the CALLRESULT payload, or the failure raised."""
        answer = await self.send(action, payload, timeout_s)
        if isinstance(answer, ocppj.CallResult):
            return answer.payload
        if isinstance(answer, ocppj.CallError):
            raise RelayedCallError(answer.code, answer.description)
        if isinstance(answer, ocppj.CallTimedOut):
            raise TimeoutError(f"no response from {self.charger_id}")
        raise RelayedChargerOffline(f"{self.charger_id} disconnected before answering")

    async def send(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> Answer:
        """Our CALL to the charger, through the relay; its answer, timeout or abort."""
        if self.closed.is_set():
            raise RelayedChargerOffline(f"{self.charger_id} is not connected")
        loop = asyncio.get_running_loop()
        unique_id = self.relay.send_our_call(action, payload, self._now(), timeout_s)
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiters[unique_id] = waiter
        try:
            await self._flush()
            answer = await waiter
        finally:
            self.relay.downstream.cancel_call(unique_id)
            self._waiters.pop(unique_id, None)
        return answer


class RelayedCallError(Exception):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class _Void:
    """The following connection's websocket: its answers go nowhere (the relay answered)."""

    def __init__(self, session: RelaySession) -> None:
        self._session = session

    async def send(self, frame: str) -> None:
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        # The bridge closes a connection (a flood, a frame too big): that is the charger's.
        await self._session.websocket.close(code, reason)


class _Following(Connection):
    """A version's `Connection` that follows a relayed charger instead of answering it.

    It is fed every charger CALL once the CALL was answered (by the CSMS or the relay), so its
    handlers keep the site model, sessions and events true to the charger; it writes no answer
    of its own (`answers_calls`). Its CALLs (the bridge's smart charging and set-up) go through
    the relay under our ids, so the central system's commands work on a relayed charger as on a
    direct one.
    """

    session: RelaySession
    answers_calls = False

    async def exchange(self, action: str, payload: dict[str, Any], timeout_s: float) -> Answer:
        try:
            return await self.session.send(action, payload, timeout_s)
        except RelayedChargerOffline as exc:
            raise ChargerOfflineError(str(exc)) from exc


class _Following16(_Following, Connection16):
    pass


class _Following201(_Following, Connection201):
    pass


_FOLLOWING: dict[ProtocolVersion, type[_Following]] = {
    ProtocolVersion.OCPP16: _Following16,
    ProtocolVersion.OCPP201: _Following201,
}


def _validate_request(version: ProtocolVersion, action: str, payload: Any) -> None:
    schemas.validate(version, action, payload, response=False)


class LocalController(CentralSystem):
    """The central system's listener, admission and smart charging, every charger relayed.

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
        # 1.6: the transactionId the charger was given (by the CSMS or the relay), for the
        # following connection's StartTransaction handler.
        self._given_transaction_ids: dict[str, int] = {}
        self._on_follow_up = on_follow_up

    async def stop(self) -> None:
        # Sessions still replaying to the CSMS too: what they owe is saved (state_dir) or lost
        # with the process, never sent by a stopped controller.
        await asyncio.gather(*(session.aclose() for session in self.sessions.values()))
        await super().stop()

    def _csms_cleared(
        self, charger_id: str, version: ProtocolVersion, payload: dict[str, Any]
    ) -> None:
        """The CSMS cleared profiles on the charger: if its criteria reach ours (a broad
        "clear all", one of our stack levels or ids), ours are put back at once, the safe
        layer first, instead of the charger running unprotected until the next refresh."""
        if not self.settings.profile_layout.clear_may_remove_ours(version, payload):
            return
        restoring = self.restore_own_profiles(charger_id)
        log.warning(
            "charger %s: the CSMS's ClearChargingProfile %s may have removed our profiles; %s",
            charger_id,
            json.dumps(payload, sort_keys=True),
            "putting them back" if restoring else "its next connection puts them back",
            extra={"charger_id": charger_id},
        )

    def new_transaction_id(self, charger_id: str) -> int:
        given = self._given_transaction_ids.pop(charger_id, None)
        return given if given is not None else super().new_transaction_id(charger_id)

    async def serve(self, websocket: ServerConnection, admission: Admission) -> None:
        version = admission.version
        charger_id = admission.record.charger_id
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
            known_actions=schemas.ACTIONS[version],
            validate=functools.partial(_validate_request, version),
            max_frame_bytes=self.settings.max_frame_bytes,
        )

        async def observe(call: ocppj.Call, answer: dict[str, Any]) -> None:
            transaction_id = answer.get("transactionId")
            if call.action == "StartTransaction" and isinstance(transaction_id, int):
                self._given_transaction_ids[charger_id] = transaction_id
            await following.take_call(call)

        session = RelaySession(
            charger_id,
            websocket,
            version,
            target,
            admission.password,
            settings,
            relay,
            self._on_follow_up,
            observe,
            functools.partial(self._save_relay, charger_id) if settings.state_dir else None,
            TokenBucket(self.settings.max_calls_per_s, self.settings.call_burst),
            functools.partial(self._csms_cleared, charger_id, version),
        )
        previous = self.sessions.get(charger_id)
        self.sessions[charger_id] = session
        if previous is not None:
            previous.stop()
            await previous.websocket.close(1000, "replaced by a new connection")
        earlier = self._relays.get(charger_id)
        if earlier is not None and earlier.version is version:
            relay.adopt(earlier)
        elif earlier is None:
            self._restore(charger_id, relay)
        self._relays[charger_id] = relay

        def follow(model: ChargerModel) -> _Following:
            following = _FOLLOWING[version](
                model,
                _Void(session),
                self,
                response_timeout_s=self.settings.response_timeout_s,
                max_calls_per_s=self.settings.max_calls_per_s,
                call_burst=self.settings.call_burst,
            )
            following.session = session
            return following

        following = await self.attach(admission, follow)
        log.info(
            "charger %s connected (OCPP %s, relayed)",
            charger_id,
            version,
            extra={"charger_id": charger_id},
        )
        try:
            await session.run()
        finally:
            self.detach(following, "closed")
            # A session still replaying to the CSMS stays until a new connection takes over.
            if self.sessions.get(charger_id) is session and session.finished():
                del self.sessions[charger_id]

    # --- replays across restarts --------------------------------------------------------------

    def _state_file(self, charger_id: str) -> Path:
        assert self.upstream_settings.state_dir is not None
        return self.upstream_settings.state_dir / f"{charger_id}.json"

    def _save_relay(self, charger_id: str, relay: Relay) -> None:
        path = self._state_file(charger_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(relay.durable_state(), file, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def _restore(self, charger_id: str, relay: Relay) -> None:
        if self.upstream_settings.state_dir is None:
            return
        path = self._state_file(charger_id)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            relay.restore(state)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Kept aside for the operator, never overwritten.
            kept = path.with_suffix(".unreadable")
            with contextlib.suppress(OSError):
                os.replace(path, kept)
            log.error(
                "charger %s: saved replay queue unusable (%s); kept as %s",
                charger_id,
                exc,
                kept,
                extra={"charger_id": charger_id},
            )
            return
        if relay.replays_pending:
            log.info(
                "charger %s: %d message(s) saved for the CSMS taken up",
                charger_id,
                len(state["replays"]),
                extra={"charger_id": charger_id},
            )

    def csms_limit_w(
        self, charger_id: str, start: datetime, end: datetime, *, evse_id: int = 0, evses: int = 1
    ) -> float | None:
        """What the CSMS's own profiles the charger accepted allow (`relay.Relay.csms_profiles`)."""
        relay = self._relays.get(charger_id)
        charger = self._chargers.get(charger_id)
        if relay is None or charger is None or not relay.csms_profiles:
            return None
        return relay.csms_profiles.limit_w(
            start, end, charger.record.electrical, evse_id=evse_id, evses=evses
        )

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """A CALL of ours to a relayed charger; its answer stays here."""
        session = self.sessions.get(charger_id)
        if session is None:
            raise RelayedChargerOffline(f"{charger_id} is not connected")
        return await session.call(action, payload, timeout_s)
