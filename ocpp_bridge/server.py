"""The central system: one websocket listener for OCPP 1.6J and 2.0.1, events up, commands down.

Handshake (OCPP-J 1.6 §3, 2.0.1 Part 4 §3 and Security Whitepaper / Part 2 A00):
- identity = last path segment (``ws://host:port/ocpp/CP001`` -> ``CP001``);
- subprotocol: the first of ``ocpp2.0.1``, ``ocpp1.6`` the charger offers; a charger that
  offers none is a legacy 1.6 charger; one that offers only others gets the 101 without a
  subprotocol and an immediate close (1002), as OCPP-J 2.0.1 §3.2 asks, not a bare HTTP 400;
- security profile 1/2: HTTP Basic with user == identity (A00.FR.204) checked against the
  registry's hashed password; 3: the client certificate's CN must equal the identity;
  0 only when explicitly allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any

from ocpp.exceptions import OCPPError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocpp_bridge import schemas
from ocpp_bridge.admission import (
    Admission,
    PasswordChecks,
    basic_credentials,
    certificate_common_name,
    identity_from_path,
)
from ocpp_bridge.capabilities import (
    DEFAULTS,
    V16_KEYS,
    ChargerCapabilities,
    from_v16_configuration,
    from_v201_variables,
    v201_get_variable_data,
)
from ocpp_bridge.connection import CONNECTION_CLASSES, Connection, handled_actions
from ocpp_bridge.event_buffer import EventBuffer
from ocpp_bridge.events import (
    ChargerSnapshot,
    CommandResult,
    CommandStatus,
    CompositeSchedule,
    DynamicScheduleSnapshot,
    Event,
    PowerPeriod,
    ProtocolVersion,
    SessionEnded,
    SessionInfo,
)
from ocpp_bridge.model import ChargerModel
from ocpp_bridge.settings import (
    BridgeSettings,
    ChargerRecord,
    ChargerRegistry,
    SecurityProfile,
    UnknownChargerPolicy,
)
from ocpp_bridge.smart_charging import DynamicSchedule, SmartCharging, validate_schedule
from ocpp_bridge.timestamps import real_sleep, utc_now

log = logging.getLogger(__name__)

SUBPROTOCOLS: dict[str, ProtocolVersion] = {
    "ocpp2.0.1": ProtocolVersion.OCPP201,
    "ocpp1.6": ProtocolVersion.OCPP16,
}
EventCallback = Callable[[Event], Awaitable[None]]


@dataclass
class _SetUp:
    """The set-up of one connection: nothing but the safe layer reaches the charger before it.

    `done` is set once the safe layer was answered (accepted, fallen back or failed), the
    charger was asked for what the agent does not know, and the dynamic layer kept from
    before was re-sent; `applied` holds what that re-send achieved per EVSE.
    """

    connection: Connection
    safe_done: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    applied: dict[int, tuple[DynamicSchedule, tuple[PowerPeriod, ...], CommandResult]] = field(
        default_factory=dict
    )


@dataclass
class _Charger:
    model: ChargerModel
    record: ChargerRecord
    smart: SmartCharging
    connection: Connection | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    setup: _SetUp | None = None
    # Unsolicited responses of the charger's connections that have ended.
    unsolicited_responses: int = 0


class CentralSystem:
    """The OCPP listener as a service component: ``await start()``, ``await stop()``.

    Events: pass `on_event` (awaited one at a time by a consumer task) or iterate `events()`
    (one consumer). Commands are coroutines returning a `CommandResult`; they may be called
    from any task except inside an OCPP ``@on`` handler.
    """

    name = "ocpp"

    def __init__(
        self,
        settings: BridgeSettings,
        registry: ChargerRegistry,
        on_event: EventCallback | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = real_sleep,
    ) -> None:
        """`clock` and `sleep` are one time base (e.g. `agent.clock.ScaledClock`'s ``now`` and
        ``sleep``): profile times, event times and the refresh timers all follow it."""
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.sleep = sleep
        self._on_event = on_event
        self._events = EventBuffer(settings.event_queue_size)
        self._chargers: dict[str, _Charger] = {}
        self._admitted: weakref.WeakKeyDictionary[
            ServerConnection, tuple[ChargerRecord, str | None]
        ] = weakref.WeakKeyDictionary()
        self._passwords = PasswordChecks()
        self._refused_identities: set[str] = set()
        self._server: Server | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Models of chargers with sessions kept from before that have not connected yet.
        self._waiting: dict[str, ChargerModel] = {}
        self._transaction_seq = 0
        self.port: int | None = None

    @property
    def heartbeat_interval_s(self) -> int:
        return self.settings.heartbeat_interval_s

    @property
    def dropped_events(self) -> int:
        return self._events.dropped

    def unsolicited_responses(self) -> dict[str, int]:
        """Per charger: CALLRESULTs/CALLERRORs that answered no pending CALL (dropped), ever."""
        return {
            charger_id: charger.unsolicited_responses
            + (charger.connection.unsolicited_responses if charger.connection else 0)
            for charger_id, charger in self._chargers.items()
        }

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._passwords.open()
        # Every action the bridge handles, before the first charger connects: compiling one
        # validator holds the event loop for up to ~75 ms here (several times that on a
        # Raspberry Pi), which a charger could otherwise trigger at will, once per action.
        for version, connection_class in CONNECTION_CLASSES.items():
            schemas.warm_up(version, handled_actions(connection_class))
        profile = self.settings.security_profile
        ssl_context = None
        if profile >= SecurityProfile.TLS_BASIC:
            assert self.settings.tls is not None
            ssl_context = self.settings.tls.server_context(profile is SecurityProfile.MUTUAL_TLS)
        ping = self.settings.ping_interval_s or None
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            subprotocols=[Subprotocol(p) for p in SUBPROTOCOLS],
            select_subprotocol=self._select_subprotocol,
            process_request=self._admit,
            ssl=ssl_context,
            ping_interval=ping,
            ping_timeout=self.settings.ping_timeout_s if ping else None,
            max_size=self.settings.max_frame_bytes,
            # The handshake includes the password check; after a restart hundreds of chargers
            # queue for the KDF at once, and a charger that waits is better than one that is
            # dropped and retries (paying for its check again).
            open_timeout=self.settings.handshake_timeout_s,
            server_header="flexbridge",
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        if self._on_event is not None:
            self._consumer = asyncio.get_running_loop().create_task(
                self._consume(self._on_event), name="ocpp-events"
            )
        if not self.settings.ping_interval_s:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch_heartbeats(), name="ocpp-heartbeat-watchdog"
            )
        if self.settings.session_silence_s > 0:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._close_silent_sessions(), name="ocpp-silent-sessions"
            )
        log.info(
            "OCPP listener on %s:%s (security profile %d)",
            self.settings.host,
            self.port,
            int(profile),
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        for charger in self._chargers.values():
            for task in list(charger.tasks):
                task.cancel()
            if charger.connection is not None:
                charger.connection.cancel_tasks()
        for background in (self._watchdog, self._sweeper):
            if background is not None:
                background.cancel()
        self._watchdog = self._sweeper = None
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        self._passwords.close()

    async def _watch_heartbeats(self) -> None:
        """Without websocket pings, a charger silent for two heartbeat intervals is offline.

        (With pings on, websockets closes a dead connection itself, and a charger may rely on
        pings instead of Heartbeat messages, so this check is off then.)
        """
        interval = self.settings.heartbeat_interval_s
        allowed = timedelta(seconds=2 * interval + min(30, interval))
        while True:
            await self.sleep(max(1.0, interval / 2))
            now = self.clock()
            for charger in list(self._chargers.values()):
                connection = charger.connection
                seen = charger.model.last_seen
                if connection is not None and seen is not None and now - seen > allowed:
                    connection.problems.report("silent", f"nothing received since {seen}")
                    await connection.close(1001, "no heartbeat")

    async def _close_silent_sessions(self) -> None:
        """A session whose end message was lost and whose charger says nothing more about it
        must not stay an EV the agent plans for: close it after `session_silence_s`."""
        silence = timedelta(seconds=self.settings.session_silence_s)
        while True:
            await self.sleep(min(60.0, max(1.0, self.settings.session_silence_s / 4)))
            now = self.clock()
            models = [c.model for c in self._chargers.values()] + list(self._waiting.values())
            for model in models:
                events = model.close_silent(now, silence)
                for event in events:
                    if not isinstance(event, SessionEnded):
                        continue
                    log.info(
                        "charger %s: closing session %s: nothing heard of it for %.0f s",
                        model.charger_id,
                        event.session.session_id,
                        silence.total_seconds(),
                        extra={"charger_id": model.charger_id},
                    )
                self.publish(events)

    def resume_sessions(self, sessions: Sequence[SessionInfo]) -> None:
        """Sessions that were open when the agent last stopped (from its store).

        Their chargers' models take them over, with the register at their start, so energy
        continues from the charger's own count and reconciliation on the next connect can
        close those the charger no longer has.
        """
        now = self.clock()
        for info in sessions:
            charger = self._chargers.get(info.charger_id)
            if charger is not None:
                charger.model.resume([info], now)
            else:
                # Held until the charger connects, and closed if it stays silent too long.
                model = self._waiting.setdefault(info.charger_id, ChargerModel(info.charger_id))
                model.resume([info], now)

    async def events(self) -> AsyncIterator[Event]:
        if self._on_event is not None:
            raise RuntimeError("events() is not available when an on_event callback is set")
        while True:
            yield await self._events.get()

    async def _consume(self, callback: EventCallback) -> None:
        while True:
            event = await self._events.get()
            try:
                await callback(event)
            except Exception:
                log.exception("event callback failed for %s", type(event).__name__)

    # --- ChargerHost (called by connections) --------------------------------------------------

    def publish(self, events: list[Event]) -> None:
        for event in events:
            self._events.put(event)

    def new_transaction_id(self, charger_id: str) -> int:
        # 1.6 transactionId is an integer chosen by us; unique across restarts while fewer
        # than one transaction per second starts on average (see smart_charging.ScheduleIds).
        self._transaction_seq = max(self._transaction_seq + 1, int(time.time()) - 1_700_000_000)
        return self._transaction_seq

    def charger_ready(self, connection: Connection) -> None:
        if connection.setup_started:
            return
        connection.setup_started = True
        charger = self._chargers.get(connection.charger_id)
        if charger is None or charger.connection is not connection:
            return
        setup = _SetUp(connection)
        charger.setup = setup
        if not connection.model.ready:
            self.publish(connection.model.booted(None, self.clock()))
        connection.spawn(self._set_up(charger, connection, setup), "setup")

    def transaction_started(self, connection: Connection, evse_id: int) -> None:
        charger = self._chargers.get(connection.charger_id)
        if charger is not None and charger.connection is connection:

            async def after_safe_layer() -> None:
                if await self._wait_set_up(charger, connection, safe_only=True):
                    await charger.smart.transaction_started(connection, evse_id)

            connection.spawn(after_safe_layer(), "tx-profile")

    async def _set_up(self, charger: _Charger, connection: Connection, setup: _SetUp) -> None:
        """After (re)connecting: capabilities, the safe layer, what we do not know, the
        dynamic layer, then keep it refreshed.

        Nothing else may reach the charger's profiles before the safe layer: a dynamic
        profile that lands first would be the only limit left if the agent died right then.
        Commands from the agent (a dispatch round the connection started) wait for `done`.
        """
        try:
            caps = await self._read_capabilities(connection)
            self.publish(charger.model.capabilities_known(caps, self.clock()))
            await charger.smart.apply_safe(connection)
            setup.safe_done.set()
            await self._ask_what_is_unknown(charger, connection)
            for evse_id in list(charger.smart.dynamic):
                schedule = charger.smart.dynamic.get(evse_id)
                if schedule is None:
                    continue
                periods = schedule.periods
                result = await charger.smart.apply_dynamic(connection, evse_id)
                setup.applied[evse_id] = (schedule, periods, result)
        finally:
            setup.safe_done.set()
            setup.done.set()
        await charger.smart.refresh_forever(connection)

    def restore_own_profiles(self, charger_id: str) -> bool:
        """Put our safe layer, then our dynamic layer, back on a connected charger after
        something else removed them (another CSMS's ClearChargingProfile in local-controller
        mode): the safe layer is what holds the charger if the agent dies. False when the
        charger is not connected (its next connection's set-up puts them back anyway)."""
        charger = self._chargers.get(charger_id)
        connection = charger.connection if charger is not None else None
        if charger is None or connection is None or connection.closed.is_set():
            return False

        async def restore() -> None:
            if not await self._wait_set_up(charger, connection):
                return  # a set-up still to come puts the safe layer first by itself
            result = await charger.smart.apply_safe(connection)
            if not result.accepted:
                connection.problems.report("safe layer not restored", str(result.reason))
            for evse_id in list(charger.smart.dynamic):
                await charger.smart.apply_dynamic(connection, evse_id)

        connection.spawn(restore(), "restore-profiles")
        return True

    async def _wait_set_up(
        self, charger: _Charger, connection: Connection, *, safe_only: bool = False
    ) -> bool:
        """Wait (bounded) until the connection's set-up has put the safe layer first."""
        setup = charger.setup
        if setup is None or setup.connection is not connection:
            # This connection's set-up has not begun: nothing may go before its safe layer.
            return False
        event = setup.safe_done if safe_only else setup.done
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        closed = asyncio.ensure_future(connection.closed.wait())
        try:
            await asyncio.wait(
                (waiter, closed),
                timeout=4 * self.settings.response_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
            closed.cancel()
        return event.is_set() and not connection.closed.is_set()

    async def _trigger(
        self, connection: Connection, payload: dict[str, Any], *, probing: bool = False
    ) -> str | None:
        """TriggerMessage; the status, or None when the charger could not answer.

        `probing`: asking for an EVSE that may not exist, so a CALLERROR is an answer too
        (libocpp 2.0.1 answers OccurrenceConstraintViolation for an unknown EVSE)."""
        try:
            response = await connection.call_raw("TriggerMessage", payload)
        except OCPPError as exc:
            if not probing:
                connection.problems.report(
                    "TriggerMessage failed", f"{payload['requestedMessage']}: {exc}"
                )
            return None
        except (TimeoutError, ConnectionError) as exc:
            connection.problems.report(
                "TriggerMessage failed", f"{payload['requestedMessage']}: {exc}"
            )
            return None
        return str(response.get("status"))

    async def _ask_what_is_unknown(self, charger: _Charger, connection: Connection) -> None:
        """On every (re)connect: status and meter of each EVSE, and which transactions still
        run. A charger that reconnects sends no BootNotification and need not repeat its
        status; and transactions may have ended while nobody listened (their end messages
        lost): those are closed here with a recorded reason."""
        model = charger.model
        if connection.version is ProtocolVersion.OCPP16:
            # All connectors at once; an Available one closes a session still open there.
            await self._trigger(connection, {"requestedMessage": "StatusNotification"})
            await self._trigger(connection, {"requestedMessage": "MeterValues"})
            return
        known = sorted(e.evse_id for e in model.evses() if e.evse_id > 0)
        evse_id = 0
        while True:
            evse_id = evse_id + 1
            if known and evse_id > max(known):
                break
            status = await self._trigger(
                connection,
                {
                    "requestedMessage": "StatusNotification",
                    "evse": {"id": evse_id, "connectorId": 1},
                },
                probing=not known,
            )
            # Without a known EVSE list, the first refused id is past the last EVSE.
            if (status != "Accepted" and not known) or evse_id >= 64:
                break
        # Each running transaction reports itself (with its meter); refused when none runs.
        await self._trigger(connection, {"requestedMessage": "TransactionEvent"})
        for session in model.active_sessions():
            try:
                response = await connection.call_raw(
                    "GetTransactionStatus", {"transactionId": session.transaction_id}
                )
            except (OCPPError, TimeoutError, ConnectionError) as exc:
                connection.problems.report("GetTransactionStatus failed", str(exc))
                continue
            if response.get("ongoingIndicator") is False and not response.get("messagesInQueue"):
                events = model.transaction_not_ongoing(session.transaction_id, self.clock())
                if events:
                    log.info(
                        "charger %s no longer has transaction %s; session closed",
                        model.charger_id,
                        session.transaction_id,
                        extra={"charger_id": model.charger_id},
                    )
                self.publish(events)

    async def _read_capabilities(self, connection: Connection) -> ChargerCapabilities:
        try:
            if connection.version is ProtocolVersion.OCPP16:
                response = await connection.call_raw("GetConfiguration", {"key": list(V16_KEYS)})
                caps = from_v16_configuration(response.get("configurationKey") or ())
            else:
                response = await connection.call_raw(
                    "GetVariables", {"getVariableData": v201_get_variable_data()}
                )
                caps = from_v201_variables(response.get("getVariableResult") or ())
        except Exception as exc:  # timeout, CALLERROR, invalid response: defaults it is
            connection.problems.report("capabilities unreadable", f"{type(exc).__name__}: {exc}")
            return DEFAULTS
        for problem in caps.problems:
            connection.problems.report("capability value", problem)
        return caps

    # --- handshake ----------------------------------------------------------------------------

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        for name in SUBPROTOCOLS:
            if name in offered:
                return Subprotocol(name)
        return None  # handled in _handle: legacy 1.6 or close

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, identity: str | None, why: str
    ) -> Response:
        key = f"{identity}:{why}"
        if key not in self._refused_identities and len(self._refused_identities) < 10_000:
            self._refused_identities.add(key)
            log.warning(
                "refused charger %s: %s",
                identity or "<no identity>",
                why,
                extra={"charger_id": identity},
            )
        response = connection.respond(status, f"{why}\n")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="flexbridge", charset="UTF-8"'
        return response

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = identity_from_path(request.path)
        if identity is None:
            return self._refuse(
                connection, HTTPStatus.NOT_FOUND, None, "no valid charger identity in the URL path"
            )
        profile = self.settings.security_profile
        password: str | None = None
        if profile is SecurityProfile.MUTUAL_TLS:
            peercert = connection.transport.get_extra_info("peercert")
            common_name = certificate_common_name(peercert)
            if common_name != identity:
                return self._refuse(
                    connection,
                    HTTPStatus.FORBIDDEN,
                    identity,
                    f"client certificate CN {common_name!r} is not the identity",
                )
        elif profile in (SecurityProfile.BASIC, SecurityProfile.TLS_BASIC):
            credentials = basic_credentials(request.headers)
            if credentials is None:
                return self._refuse(
                    connection, HTTPStatus.UNAUTHORIZED, identity, "HTTP Basic credentials missing"
                )
            user, password = credentials
            if user != identity:
                return self._refuse(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    identity,
                    f"Basic auth user {user!r} is not the identity (A00.FR.204)",
                )
        record = await self.registry.lookup(identity)
        if record is None:
            if self.settings.unknown_chargers is UnknownChargerPolicy.REJECT:
                return self._refuse(
                    connection, HTTPStatus.UNAUTHORIZED, identity, "unknown charger"
                )
            password_hash = None
            if password is not None:
                try:
                    password_hash = await self._passwords.hash(password)
                except ValueError as exc:
                    return self._refuse(connection, HTTPStatus.UNAUTHORIZED, identity, str(exc))
            record = await self.registry.register(identity, password_hash)
            if record is None:
                return self._refuse(
                    connection, HTTPStatus.UNAUTHORIZED, identity, "registry refused the charger"
                )
            log.info("registered new charger %s", identity, extra={"charger_id": identity})
            if password is not None and password_hash is not None:
                self._passwords.cache.remember(identity, password, password_hash)
        elif password is not None:
            if record.password_hash is None:
                return self._refuse(
                    connection, HTTPStatus.UNAUTHORIZED, identity, "no password configured"
                )
            if not await self._passwords.verify(identity, password, record.password_hash):
                return self._refuse(connection, HTTPStatus.UNAUTHORIZED, identity, "wrong password")
        self._admitted[connection] = (record, password)
        return None

    # --- connections --------------------------------------------------------------------------

    def _charger_for(self, record: ChargerRecord) -> _Charger:
        charger = self._chargers.get(record.charger_id)
        if charger is None:
            model = self._waiting.pop(record.charger_id, None) or ChargerModel(record.charger_id)
            smart = SmartCharging(
                model,
                record.electrical,
                record.safe_power_w,
                self.settings.dynamic_validity_s,
                self.clock,
                self.sleep,
                layout=self.settings.profile_layout,
            )
            charger = _Charger(model, record, smart)
            self._chargers[record.charger_id] = charger
        else:
            charger.record = record
            charger.smart.electrical = record.electrical
        return charger

    async def _handle(self, websocket: ServerConnection) -> None:
        admitted = self._admitted.pop(websocket, None)
        if admitted is None:  # cannot happen: _admit runs first
            await websocket.close(1011, "not admitted")
            return
        record, password = admitted
        version = SUBPROTOCOLS.get(websocket.subprotocol or "", ProtocolVersion.OCPP16)
        offered = (
            websocket.request.headers.get_all("Sec-WebSocket-Protocol") if websocket.request else []
        )
        if websocket.subprotocol is None and offered:
            log.warning(
                "charger %s offered no supported OCPP version (%s); closing",
                record.charger_id,
                ", ".join(offered),
            )
            await websocket.close(1002, "supported subprotocols: ocpp2.0.1, ocpp1.6")
            return
        # No subprotocol offered at all: a legacy 1.6 charger.
        await self.serve(websocket, Admission(record, version, password))

    async def serve(self, websocket: ServerConnection, admission: Admission) -> None:
        """Serve one admitted connection until it ends. The extension point for a central
        system that answers chargers another way (the local controller relays them): override
        it, pairing `attach` with `detach` so model, smart charging and commands follow."""
        settings = self.settings
        connection = await self.attach(
            admission,
            lambda model: CONNECTION_CLASSES[admission.version](
                model,
                websocket,
                self,
                response_timeout_s=settings.response_timeout_s,
                max_calls_per_s=settings.max_calls_per_s,
                call_burst=settings.call_burst,
            ),
        )
        charger_id = admission.record.charger_id
        log.info(
            "charger %s connected (OCPP %s)",
            charger_id,
            admission.version,
            extra={"charger_id": charger_id},
        )
        reason = "closed"
        try:
            async for raw in websocket:
                await connection.route_message(raw)
        except ConnectionClosed as exc:
            reason = f"connection lost ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        finally:
            self.detach(connection, reason)

    async def attach(
        self, admission: Admission, connect: Callable[[ChargerModel], Connection]
    ) -> Connection:
        """Make `connect(model)` the charger's connection: commands and set-up go through it.
        A connection it replaces (the charger reconnected before we noticed the old socket
        died) is told it is lost and closed before this returns."""
        charger = self._charger_for(admission.record)
        previous = charger.connection
        connection = charger.connection = connect(charger.model)
        # Not ready before the old socket is closed: a command arriving meanwhile must not
        # count the old connection's boot for the new one (it would then skip the new
        # connection's set-up and put a dynamic profile before the safe layer).
        charger.model.connection_opened(admission.version, self.clock())
        if previous is not None:
            previous.connection_lost()
            charger.smart.connection_lost()
            await previous.close(1000, "replaced by a new connection")
        return connection

    def detach(self, connection: Connection, reason: str) -> None:
        """`connection` has ended: unless a newer one took over, the charger is offline."""
        connection.connection_lost()
        charger = self._chargers[connection.charger_id]
        charger.unsolicited_responses += connection.unsolicited_responses
        if charger.connection is connection:
            charger.connection = None
            charger.smart.connection_lost()
            self.publish(charger.model.connection_closed(self.clock(), reason))
        if connection.problems.counts:
            log.info(
                "charger %s disconnected; problems: %s",
                connection.charger_id,
                connection.problems.summary(),
                extra={"charger_id": connection.charger_id},
            )

    # --- commands -----------------------------------------------------------------------------

    async def _known(self, charger_id: str) -> _Charger | None:
        charger = self._chargers.get(charger_id)
        if charger is not None:
            return charger
        record = await self.registry.lookup(charger_id)
        return None if record is None else self._charger_for(record)

    @staticmethod
    def _online(charger: _Charger) -> Connection | None:
        connection = charger.connection
        return connection if connection is not None and charger.model.ready else None

    async def set_safe_limit(self, charger_id: str, limit_w: float) -> CommandResult:
        """The charger's static safe limit (W); kept and re-sent on every reconnect."""
        if not limit_w >= 0 or limit_w == float("inf"):
            raise ValueError(f"safe limit must be a finite number >= 0 W, got {limit_w}")
        charger = await self._known(charger_id)
        if charger is None:
            return CommandResult(CommandStatus.REJECTED, f"unknown charger {charger_id!r}")
        charger.smart.safe_limit_w = limit_w
        connection = self._online(charger)
        if connection is None:
            return CommandResult(CommandStatus.OFFLINE, "sent when the charger connects")
        return await charger.smart.apply_safe(connection)

    async def set_dynamic_schedule(
        self,
        charger_id: str,
        periods: Sequence[PowerPeriod],
        valid_until: datetime,
        evse_id: int = 0,
    ) -> CommandResult:
        """A schedule of (start, W) periods until `valid_until` for the charger or one EVSE."""
        validate_schedule(periods, valid_until)
        if evse_id < 0:
            raise ValueError(f"EVSE id must be >= 0, got {evse_id}")
        charger = await self._known(charger_id)
        if charger is None:
            return CommandResult(CommandStatus.REJECTED, f"unknown charger {charger_id!r}")
        schedule = charger.smart.want(evse_id, periods, valid_until)
        connection = self._online(charger)
        if connection is None:
            return CommandResult(CommandStatus.OFFLINE, "sent when the charger connects")
        if not await self._wait_set_up(charger, connection):
            return CommandResult(
                CommandStatus.TIMEOUT, "the charger's set-up (safe layer first) is not done"
            )
        setup = charger.setup
        if setup is not None and setup.connection is connection:
            sent = setup.applied.get(evse_id)
            if sent is not None and sent[0] is schedule and sent[1] == schedule.periods:
                return sent[2]  # the set-up sent this very schedule after the safe layer
        return await charger.smart.apply_dynamic(connection, evse_id)

    async def clear_dynamic_schedule(self, charger_id: str, evse_id: int = 0) -> CommandResult:
        charger = await self._known(charger_id)
        if charger is None:
            return CommandResult(CommandStatus.REJECTED, f"unknown charger {charger_id!r}")
        connection = self._online(charger)
        if connection is not None:
            await self._wait_set_up(charger, connection)
        return await charger.smart.clear_dynamic(connection, evse_id)

    async def composite_schedule(
        self, charger_id: str, evse_id: int = 0, duration_s: int = 3600
    ) -> CompositeSchedule:
        """What the charger will allow (GetCompositeSchedule), converted to W."""
        if duration_s <= 0:
            # libocpp#1169: duration 0 returns default limits, not the schedule.
            raise ValueError(f"duration must be positive, got {duration_s}")
        charger = await self._known(charger_id)
        if charger is None:
            return CompositeSchedule(
                CommandResult(CommandStatus.REJECTED, f"unknown charger {charger_id!r}"), evse_id
            )
        connection = self._online(charger)
        if connection is None:
            return CompositeSchedule(CommandResult(CommandStatus.OFFLINE), evse_id)
        return await charger.smart.composite(connection, evse_id, duration_s)

    def csms_limit_w(
        self, charger_id: str, start: datetime, end: datetime, *, evse_id: int = 0, evses: int = 1
    ) -> float | None:
        """The lowest power (W) another CSMS's own profiles allow the charger (`evse_id` 0, with
        `evses` EVSEs) or one EVSE in [start, end); None: no limit of theirs. Always None here:
        only a charger relayed to its operator's CSMS (`LocalController`) has such profiles."""
        return None

    def dynamic_schedule(self, charger_id: str, evse_id: int = 0) -> DynamicScheduleSnapshot | None:
        """The dynamic layer the bridge keeps on one charger's EVSE (None when there is none):
        a composite schedule read back is only comparable up to the held profile's validTo,
        after which the charger rightly falls back to its safe layer until the refresh."""
        charger = self._chargers.get(charger_id)
        if charger is None:
            return None
        return next((s for s in charger.smart.snapshot() if s.evse_id == evse_id), None)

    def snapshot(self) -> tuple[ChargerSnapshot, ...]:
        return tuple(
            self._snapshot_of(charger_id, charger)
            for charger_id, charger in sorted(self._chargers.items())
        )

    def charger_snapshot(self, charger_id: str) -> ChargerSnapshot | None:
        """One charger's snapshot (None for a charger the bridge has not met)."""
        charger = self._chargers.get(charger_id)
        return None if charger is None else self._snapshot_of(charger_id, charger)

    @staticmethod
    def _snapshot_of(charger_id: str, charger: _Charger) -> ChargerSnapshot:
        return ChargerSnapshot(
            charger_id=charger_id,
            online=charger.model.online,
            boot=charger.model.boot,
            last_seen=charger.model.last_seen,
            capabilities=charger.model.capabilities,
            safe_limit_w=charger.smart.safe_limit_w,
            safe_purpose=charger.smart.safe_purpose.value if charger.smart.safe_purpose else None,
            evses=charger.model.evses(),
            dynamic=charger.smart.snapshot(),
            rejected_purposes=tuple(sorted(p.value for p in charger.smart.refused)),
            controllable=charger.smart.controllable,
        )
