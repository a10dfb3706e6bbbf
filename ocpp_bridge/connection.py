"""One charger's websocket: the asyncio shell around an `ocppj.Endpoint`.

The endpoint owns OCPP-J (framing, CALLERROR codes, one CALL in flight per direction, message
ids, timeouts as deadlines); this shell moves frames between the websocket and the endpoint,
arms a timer for the pending CALL's deadline, and runs the handlers:
- every inbound CALL is validated (by the endpoint, with validators compiled from the `ocpp`
  library's schema files, `schemas`) before its handler runs; the handler's answer is
  validated too;
- the library's dataclasses, enums and its outbound validator are used, nothing of its
  ``ChargePoint``: routes come from our own ``@on``/``@after`` markers;
- every frame but the answer to our own CALL takes from a per-charger budget, and a charger
  that keeps exceeding it is closed (the limits are settings);
- a handler never calls the charger (that deadlocks the connection until the response
  timeout): `call_raw` refuses to run inside an ``@on`` handler, follow-up CALLs run from
  ``@after`` hooks or tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import FormatViolationError, InternalError, OCPPError
from ocpp.messages import Call as LibraryCall
from ocpp.messages import CallError as LibraryCallError
from ocpp.messages import CallResult as LibraryCallResult
from ocpp.messages import validate_payload
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import ConnectionClosed

from ocpp_bridge import ocppj, schemas
from ocpp_bridge.deadline import DeadlineTimer
from ocpp_bridge.events import BootInfo, Event, ProtocolVersion
from ocpp_bridge.metering import MeterReading, read_meter_values
from ocpp_bridge.model import V16_STATUS, V201_CHARGING_STATE, V201_STATUS, ChargerModel
from ocpp_bridge.problems import ProblemLog, TokenBucket
from ocpp_bridge.timestamps import TimestampError, format_timestamp, parse_timestamp

log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

# The version strings the `ocpp` library's validator takes.
_LIBRARY_VERSION = {ProtocolVersion.OCPP16: "1.6", ProtocolVersion.OCPP201: "2.0.1"}


def on(action: str) -> Callable[[_Handler], _Handler]:
    """Marks the handler of a CALL; it returns the CALLRESULT payload (or raises OCPPError)."""

    def mark(handler: _Handler) -> _Handler:
        handler.ocpp_on_action = str(action)  # type: ignore[attr-defined]
        return handler

    return mark


def after(action: str) -> Callable[[_Handler], _Handler]:
    """Marks a hook run once the CALLRESULT is sent, so it may call the charger."""

    def mark(handler: _Handler) -> _Handler:
        handler.ocpp_after_action = str(action)  # type: ignore[attr-defined]
        return handler

    return mark


_ROUTES: dict[type, Mapping[str, tuple[str, str | None]]] = {}


def routes(connection_class: type) -> Mapping[str, tuple[str, str | None]]:
    """action -> (name of the ``@on`` handler, name of the ``@after`` hook or None).

    Names, not functions: a handler is looked up on the instance at dispatch time.
    """
    known = _ROUTES.get(connection_class)
    if known is not None:
        return known
    on_names: dict[str, str] = {}
    after_names: dict[str, str] = {}
    for name in dir(connection_class):
        member = getattr(connection_class, name, None)
        if (action := getattr(member, "ocpp_on_action", None)) is not None:
            on_names[action] = name
        if (action := getattr(member, "ocpp_after_action", None)) is not None:
            after_names[action] = name
    found = {action: (name, after_names.get(action)) for action, name in on_names.items()}
    _ROUTES[connection_class] = found
    return found


# The connection whose @on handler is running in this context (None outside handlers).
_IN_HANDLER: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "ocpp_bridge_in_handler", default=None
)


class ChargerOfflineError(ConnectionError):
    """The charger's connection closed before or while a CALL was under way."""


class CallFromHandlerError(RuntimeError):
    """A CALL to the charger was attempted from inside one of its own @on handlers."""


class ChargerHost(Protocol):
    """What a connection needs from the central system that owns it."""

    @property
    def heartbeat_interval_s(self) -> int: ...

    # The central system's clock: a scaled one in the demo, so every timestamp agrees.
    clock: Callable[[], datetime]

    def publish(self, events: list[Event]) -> None: ...

    def charger_ready(self, connection: Connection) -> None: ...

    def transaction_started(self, connection: Connection, evse_id: int) -> None: ...

    def new_transaction_id(self, charger_id: str) -> int: ...


@functools.cache
def _snake(key: str) -> str:
    converted: dict[str, Any] = camel_to_snake_case({key: None})
    return next(iter(converted))


def snake_keys(data: Any) -> Any:
    """The library's camelCase -> snake_case key conversion, cached per key (hot path)."""
    if isinstance(data, dict):
        return {_snake(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def _response_payload(response: Any) -> dict[str, Any]:
    """Handlers return the library's call_result dataclasses or, on hot paths, camelCase dicts."""
    if isinstance(response, dict):
        return response
    payload: dict[str, Any] = snake_to_camel_case(remove_nones(serialize_as_dict(response)))
    return payload


def _validate_request(version: ProtocolVersion, action: str, payload: Any) -> None:
    schemas.validate(version, action, payload, response=False)


def endpoint_for(connection_class: type[Connection]) -> ocppj.Endpoint:
    """The OCPP-J endpoint of one connection: the version's actions known, the class's
    handled, every CALL validated against the version's schema before its handler runs."""
    version = connection_class.version
    return ocppj.Endpoint(
        version,
        known_actions=schemas.ACTIONS[version],
        handled_actions=frozenset(routes(connection_class)),
        validate=functools.partial(_validate_request, version),
    )


# How one of our CALLs ended, as `Connection.exchange` returns it.
Answer = ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut | ocppj.CallAborted


class Connection:
    """Shared inbound path, outgoing CALLs and the handlers both versions spell alike.

    The version classes add their own ``@on`` handlers and ``@after`` hooks.
    """

    version: ProtocolVersion

    # This many frames refused since the charger was last well within its budget close it.
    FLOOD_CLOSE_AFTER = 1000
    # Handlers' answers are checked and written to the charger. Off for a connection that
    # follows a charger someone else answers (local-controller mode): nobody would read them.
    answers_calls = True

    def __init__(
        self,
        model: ChargerModel,
        websocket: Any,
        host: ChargerHost,
        *,
        response_timeout_s: float,
        max_calls_per_s: float,
        call_burst: int,
    ) -> None:
        self.model = model
        self.host = host
        self.response_timeout_s = response_timeout_s
        self._websocket = websocket
        self._routes = routes(type(self))
        self.endpoint = endpoint_for(type(self))
        self.problems = ProblemLog(model.charger_id)
        self._bucket = TokenBucket(max_calls_per_s, call_burst)
        self._refused = 0
        # Closing for a flood: what still arrives is dropped unread.
        self.flooded = False
        # Our CALLs awaiting their answer (or timeout, or the end of the connection), by id.
        self._waiters: dict[str, asyncio.Future[Answer]] = {}
        self._deadline = DeadlineTimer(self._deadline_passed)
        # Frames taken from the endpoint and not yet written (one writer at a time, in order).
        self._unsent: deque[str] = deque()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._boot: BootInfo | None = None
        self.setup_started = False
        self.closed = asyncio.Event()

    @property
    def charger_id(self) -> str:
        return self.model.charger_id

    @property
    def unsolicited_responses(self) -> int:
        """Responses that matched no waiting CALL, dropped (exposed as a metric by the server)."""
        return self.endpoint.dropped_responses

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task outside any handler's context (so it may call the charger), kept referenced."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            coroutine,
            name=f"{name}:{self.charger_id}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "charger %s: background task %s failed",
                self.charger_id,
                task.get_name(),
                exc_info=task.exception(),
            )

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def connection_lost(self) -> None:
        """Fail pending and future CALLs at once instead of letting them time out."""
        self.closed.set()
        self.cancel_tasks()
        self._resolve(self.endpoint.close())
        self._arm_timer()

    async def close(self, code: int, reason: str) -> None:
        """Close the websocket (the read loop then ends and calls `connection_lost`)."""
        await self._websocket.close(code, reason)

    async def _flush(self) -> None:
        """Write what the endpoint has to send, in order, one writer at a time."""
        self._unsent.extend(self.endpoint.data_to_send())
        if not self._unsent:
            return
        async with self._send_lock:
            while self._unsent:
                # Not logged per frame: this is the hot path.
                await self._websocket.send(self._unsent.popleft())

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the read loop reports the loss
            await self._flush()

    # --- deadlines and answers to our CALLs ----------------------------------------------------

    def _arm_timer(self) -> None:
        self._deadline.follow(self.endpoint.deadline)

    def _deadline_passed(self, now: float) -> None:
        self._resolve(self.endpoint.timeout(now))
        self._arm_timer()
        self.spawn(self._flush_quietly(), "send")  # the next queued CALL, if any

    def _resolve(self, events: list[ocppj.Event]) -> None:
        for event in events:
            if isinstance(event, Answer):
                waiter = self._waiters.pop(event.unique_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)

    # --- inbound ----------------------------------------------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        if self.flooded:
            return
        now = self.host.clock()
        self._publish(self.model.seen(now))
        dropped = self.endpoint.dropped_responses
        events = deque(self.endpoint.receive(raw_msg, asyncio.get_running_loop().time()))
        if self.endpoint.dropped_responses > dropped:
            # Late (its CALL timed out), duplicated, never asked for, or malformed: OCPP-J has
            # no answer to a response, so it is only counted; a stream of them is a flood.
            self.problems.report("late or unknown response", str(raw_msg[:60]))
            if not self._within_budget():
                await self._refuse_flood(None)
            return
        while events:
            event = events.popleft()
            if isinstance(event, ocppj.CallResult | ocppj.CallError):
                # The answer to our CALL takes nothing from the budget.
                if isinstance(event, ocppj.CallError) and event.malformed:
                    self.problems.report("malformed response", str(raw_msg[:80]))
                self._resolve([event])
                self._arm_timer()
                await self._flush()  # the next queued CALL, if any
                continue
            if isinstance(event, ocppj.CloseRequested):
                self.spawn(self.close(event.code, event.reason), "close")
                continue
            if not isinstance(event, ocppj.Call | ocppj.FrameRejected):
                continue
            # Every other frame takes from the budget, garbage included: each costs a CALLERROR
            # as much as a CALL costs its answer.
            if not self._within_budget():
                events.extend(await self._refuse_flood(event.unique_id))
            elif isinstance(event, ocppj.FrameRejected):
                self.problems.report(event.problem, event.detail)
                events.extend(self.endpoint.reject(event))
                await self._flush()
            else:
                events.extend(await self._dispatch(event))

    async def take_call(self, call: ocppj.Call) -> None:
        """Take in a CALL another endpoint already accepted and validated against the same
        schema (a relay's), as `route_message` would its frame, without a second parse and
        schema check. The budget and the unhandled-action report are the same; the answer goes
        to this connection's websocket like any other."""
        if self.flooded:
            return
        self._publish(self.model.seen(self.host.clock()))
        if not self._within_budget():
            await self._refuse_flood(call.unique_id)
        elif call.action not in self._routes:
            self.problems.report("unhandled action", call.action[:80])
        else:
            await self._dispatch(call)

    def _within_budget(self) -> bool:
        if not self._bucket.take():
            return False
        # Forgive earlier refusals only once the charger has slowed down for a while: a flood
        # earns a token now and then as the bucket refills, and must not reset the count.
        if self._bucket.tokens >= self._bucket.burst / 2:
            self._refused = 0
        return True

    async def _refuse_flood(self, unique_id: str | None) -> list[ocppj.Event]:
        """Over budget: answer a CALL (or a frame with an id) GenericError; close if it goes on."""
        self._refused += 1
        self.problems.report("flood", "more messages than the per-charger budget; refusing")
        follow: list[ocppj.Event] = []
        if unique_id is not None:
            follow = self.endpoint.send_error(
                unique_id, "GenericError", "too many messages; slow down"
            )
            await self._flush()
        if self._refused >= self.FLOOD_CLOSE_AFTER and not self.flooded:
            self.flooded = True
            self.problems.report("flood", "closing the connection")
            # Not awaited: the charger's close frame sits behind the frames it queued, which
            # only this read loop drains (awaiting here stalled the close for close_timeout).
            self.spawn(self.close(1008, "message flood"), "flood-close")
        return follow

    async def _answer_error(self, unique_id: str, error: OCPPError) -> list[ocppj.Event]:
        follow = self.endpoint.send_error(
            unique_id, error.code, error.description, error.details or {}
        )
        await self._flush()
        return follow

    async def _dispatch(self, call: ocppj.Call) -> list[ocppj.Event]:
        """Run the handler of a CALL the endpoint accepted (handled, valid); answer it.

        Returns what the endpoint gives back once it is answered: the charger's next CALL, if
        it sent one before this was answered.
        """
        action = call.action
        if len(call.unique_id) > ocppj.MAX_ID_LENGTH:
            self.problems.report("message id too long", call.unique_id[:40])
        on_name, after_name = self._routes[action]
        try:
            kwargs = snake_keys(call.payload)
        except RecursionError:
            # Free-form fields (customData, DataTransfer data) parse to any depth json allows.
            self.problems.report(f"invalid {action}", "nested too deeply")
            return await self._answer_error(
                call.unique_id, FormatViolationError(description="nested too deeply")
            )
        token = _IN_HANDLER.set(self)
        try:
            response = getattr(self, on_name)(**kwargs)
            if inspect.isawaitable(response):
                response = await response
            if self.answers_calls:
                payload = _response_payload(response)
                schemas.validate(self.version, action, payload, response=True)
        except OCPPError as exc:
            return await self._answer_error(call.unique_id, exc)
        except Exception:
            log.exception("charger %s: handler for %s failed", self.charger_id, action)
            return await self._answer_error(
                call.unique_id, InternalError(description=f"{action} handler failed")
            )
        finally:
            _IN_HANDLER.reset(token)
        follow: list[ocppj.Event] = []
        if self.answers_calls:
            follow = self.endpoint.send_result(call.unique_id, payload)
            await self._flush()
        if after_name is not None:
            result = getattr(self, after_name)(**kwargs)
            if inspect.iscoroutine(result):
                self.spawn(result, f"after-{action}")
        if not self.model.ready and action != "BootNotification":
            # Reconnected without booting (allowed): its first message shows it is past boot.
            self.host.charger_ready(self)
        return follow

    # --- outbound ---------------------------------------------------------------------------

    async def call_raw(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send a CALL, return the CALLRESULT payload (camelCase), raise OCPPError/TimeoutError.

        Request and response are validated with the library's validators (jsonschema; for 1.6
        SetChargingProfile with Decimal parsing, which is what checks ``multipleOf: 0.1``).
        CALLs go out one at a time, in the order they were made (the endpoint queues them);
        the timeout counts from the moment the CALL is sent.
        """
        if _IN_HANDLER.get() is self:
            raise CallFromHandlerError(
                f"{action} to {self.charger_id} from inside its own @on handler would wait for "
                "a response the connection cannot read until the handler returns; use @after"
            )
        library_version = _LIBRARY_VERSION[self.version]
        await validate_payload(LibraryCall("", action, payload), library_version)
        timeout = self.response_timeout_s if timeout_s is None else timeout_s
        if self.closed.is_set():
            raise ChargerOfflineError(f"{self.charger_id} is not connected")
        answer = await self.exchange(action, payload, timeout)
        if isinstance(answer, ocppj.CallAborted):
            raise ChargerOfflineError(f"{self.charger_id} disconnected before answering")
        if isinstance(answer, ocppj.CallTimedOut):
            raise TimeoutError(f"no response from {self.charger_id} in {timeout} s")
        if isinstance(answer, ocppj.CallError):
            error = LibraryCallError(
                answer.unique_id, answer.code, answer.description, answer.details
            ).to_exception()
            raise error
        response = LibraryCallResult(answer.unique_id, answer.payload, action)
        await validate_payload(response, library_version)
        return answer.payload

    async def exchange(self, action: str, payload: dict[str, Any], timeout_s: float) -> Answer:
        """Carry one validated CALL to the charger and return how it ended.

        The extension point for a connection whose CALLs travel another way (a relay that
        shares the charger's socket with another central system): override this, keep
        `call_raw`'s validation and error mapping. Raise `ChargerOfflineError` when the
        charger cannot be reached.
        """
        loop = asyncio.get_running_loop()
        unique_id = self.endpoint.send_call(action, payload, now=loop.time(), timeout_s=timeout_s)
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiters[unique_id] = waiter
        try:
            self._arm_timer()
            await self._flush()
            return await waiter
        except ConnectionClosed as exc:
            raise ChargerOfflineError(f"{self.charger_id} disconnected") from exc
        finally:
            # Given up (cancelled) while still queued: it must not go out later.
            self.endpoint.cancel_call(unique_id)
            self._waiters.pop(unique_id, None)

    # --- helpers for handlers ---------------------------------------------------------------

    def _timestamp(self, text: str | None) -> datetime:
        if text is None:
            return self.host.clock()
        try:
            return parse_timestamp(text)
        except TimestampError as exc:
            self.problems.report("unreadable timestamp", str(exc))
            return self.host.clock()

    def _publish(self, events: list[Event]) -> None:
        if events:
            self.host.publish(events)

    # --- handlers both versions spell alike -------------------------------------------------

    @after("BootNotification")
    def after_boot_notification(self, **kwargs: Any) -> None:
        self._publish(self.model.booted(self._boot, self.host.clock()))
        self.host.charger_ready(self)

    @on("Heartbeat")
    def on_heartbeat(self, **kwargs: Any) -> dict[str, Any]:
        return {"currentTime": format_timestamp(self.host.clock())}

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> dict[str, Any]:
        return {"status": "UnknownVendorId"}

    @on("FirmwareStatusNotification")
    def on_firmware_status(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on("SecurityEventNotification")
    def on_security_event(self, type: str, **kwargs: Any) -> dict[str, Any]:
        log.info("charger %s: security event %s", self.charger_id, type)
        return {}

    @on("LogStatusNotification")
    def on_log_status(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    def _readings(self, meter_value: Any) -> list[MeterReading]:
        readings = read_meter_values(meter_value or ())
        for reading in readings:
            for problem in reading.problems:
                self.problems.report("meter value skipped", problem)
        return readings


def _id_token_accepted_16() -> dict[str, Any]:
    # flexbridge is not an authorization system: the site's own access control (RFID lists
    # on the charger, or free charging) decides; we accept every token the charger reports.
    return {"status": "Accepted"}


class Connection16(Connection):
    version = ProtocolVersion.OCPP16

    @on(Action16.boot_notification)
    def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> r16.BootNotification:
        self._boot = BootInfo(
            vendor=charge_point_vendor,
            model=charge_point_model,
            serial_number=kwargs.get("charge_point_serial_number")
            or kwargs.get("charge_box_serial_number"),
            firmware_version=kwargs.get("firmware_version"),
            protocol=self.version,
        )
        return r16.BootNotification(
            current_time=format_timestamp(self.host.clock()),
            interval=self.host.heartbeat_interval_s,
            status="Accepted",
        )

    @on(Action16.status_notification)
    def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> dict[str, Any]:
        at = self._timestamp(kwargs.get("timestamp"))
        events = self.model.status(
            connector_id,
            1 if connector_id else 0,
            V16_STATUS[status],
            at,
            None if error_code == "NoError" else error_code,
        )
        if status == "Available":
            # Reconciliation: no transaction runs on an Available connector.
            events += self.model.status_without_transaction(connector_id, self.host.clock())
        self._publish(events)
        return {}

    @on(Action16.authorize)
    def on_authorize(self, id_tag: str, **kwargs: Any) -> dict[str, Any]:
        return {"idTagInfo": _id_token_accepted_16()}

    @on(Action16.start_transaction)
    def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any
    ) -> dict[str, Any]:
        transaction_id = self.host.new_transaction_id(self.charger_id)
        started = self._timestamp(timestamp)
        self._publish(
            self.model.start_session(
                connector_id,
                str(transaction_id),
                id_tag,
                started,
                float(meter_start),
                self.host.clock(),
            )
        )
        return {"transactionId": transaction_id, "idTagInfo": _id_token_accepted_16()}

    @after(Action16.start_transaction)
    def after_start_transaction(self, connector_id: int, **kwargs: Any) -> None:
        self.host.transaction_started(self, connector_id)

    @on(Action16.stop_transaction)
    def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any
    ) -> dict[str, Any]:
        now = self.host.clock()
        session = self.model.session(str(transaction_id))
        evse_id = session.evse_id if session else None
        readings = read_meter_values(kwargs.get("transaction_data") or ())
        events: list[Event] = []
        if evse_id:
            events += self.model.meter_readings(evse_id, readings, now, str(transaction_id))
        events += self.model.end_session(
            str(transaction_id),
            self._timestamp(timestamp),
            now,
            register_wh=float(meter_stop),
            reason=kwargs.get("reason") or "Local",
        )
        self._publish(events)
        return {"idTagInfo": _id_token_accepted_16()} if kwargs.get("id_tag") else {}

    @on(Action16.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        readings = self._readings(meter_value)
        transaction_id = kwargs.get("transaction_id")
        self._publish(
            self.model.meter_readings(
                connector_id,
                readings,
                self.host.clock(),
                None if transaction_id is None else str(transaction_id),
            )
        )
        return {}

    @on(Action16.diagnostics_status_notification)
    def on_diagnostics_status(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on(Action16.signed_firmware_status_notification)
    def on_signed_firmware_status(self, **kwargs: Any) -> dict[str, Any]:
        return {}


def _id_token_text(id_token: Mapping[str, Any] | None) -> str | None:
    if not id_token:
        return None
    value = id_token.get("id_token")
    return None if value in (None, "") else str(value)


class Connection201(Connection):
    version = ProtocolVersion.OCPP201

    @on(Action201.boot_notification)
    def on_boot_notification(
        self, charging_station: dict[str, Any], reason: str, **kwargs: Any
    ) -> r201.BootNotification:
        self._boot = BootInfo(
            vendor=charging_station.get("vendor_name", ""),
            model=charging_station.get("model", ""),
            serial_number=charging_station.get("serial_number"),
            firmware_version=charging_station.get("firmware_version"),
            protocol=self.version,
        )
        return r201.BootNotification(
            current_time=format_timestamp(self.host.clock()),
            interval=self.host.heartbeat_interval_s,
            status="Accepted",
        )

    @on(Action201.status_notification)
    def on_status_notification(
        self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **kwargs: Any
    ) -> dict[str, Any]:
        self._publish(
            self.model.status(
                evse_id, connector_id, V201_STATUS[connector_status], self._timestamp(timestamp)
            )
        )
        return {}

    @on(Action201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {"idTokenInfo": {"status": "Accepted"}}

    @on(Action201.transaction_event)
    def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        transaction_info: dict[str, Any],
        **kwargs: Any,
    ) -> dict[str, Any]:
        now = self.host.clock()
        at = self._timestamp(timestamp)
        transaction_id = str(transaction_info["transaction_id"])
        evse = kwargs.get("evse") or {}
        evse_id = evse.get("id")
        known = self.model.session(transaction_id)
        if evse_id is None and known is not None:
            evse_id = known.evse_id
        id_token = _id_token_text(kwargs.get("id_token"))
        readings = self._readings(kwargs.get("meter_value"))
        events: list[Event] = []
        if event_type == "Started":
            events += self.model.start_session(
                evse_id or 0, transaction_id, id_token, at, None, now
            )
        if evse_id:
            events += self.model.meter_readings(evse_id, readings, now, transaction_id)
            state = V201_CHARGING_STATE.get(transaction_info.get("charging_state") or "")
            if state is not None:
                events += self.model.status(evse_id, evse.get("connector_id") or 1, state, at)
        if event_type == "Ended":
            events += self.model.end_session(
                transaction_id,
                at,
                now,
                evse_id=evse_id,
                reason=transaction_info.get("stopped_reason") or "Local",
            )
        elif event_type != "Started" or id_token is not None:
            events += self.model.update_session(
                transaction_id, now, evse_id=evse_id, id_token=id_token
            )
        self._publish(events)
        # E01-E04: idTokenInfo is required when the request carried an idToken.
        return {"idTokenInfo": {"status": "Accepted"}} if kwargs.get("id_token") else {}

    @after(Action201.transaction_event)
    def after_transaction_event(self, event_type: str, **kwargs: Any) -> None:
        evse = kwargs.get("evse") or {}
        if event_type == "Started" and evse.get("id"):
            self.host.transaction_started(self, int(evse["id"]))

    @on(Action201.meter_values)
    def on_meter_values(
        self, evse_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        readings = self._readings(meter_value)
        self._publish(self.model.meter_readings(evse_id, readings, self.host.clock()))
        return {}

    @on(Action201.notify_ev_charging_needs)
    def on_notify_ev_charging_needs(
        self, charging_needs: dict[str, Any], evse_id: int, **kwargs: Any
    ) -> dict[str, Any]:
        # ISO 15118 via K15: the EV's requested energy and departure time.
        energy: float | None = None
        soc: float | None = None
        for key in ("ac_charging_parameters", "dc_charging_parameters"):
            params = charging_needs.get(key) or {}
            if params.get("energy_amount") is not None:
                energy = float(params["energy_amount"])
            if params.get("state_of_charge") is not None:
                soc = float(params["state_of_charge"])
        departure_text = charging_needs.get("departure_time")
        departure = self._timestamp(departure_text) if departure_text else None
        self._publish(self.model.ev_needs(evse_id, self.host.clock(), energy, departure, soc))
        return {"status": "Accepted"}

    @on(Action201.notify_ev_charging_schedule)
    def on_notify_ev_charging_schedule(self, **kwargs: Any) -> dict[str, Any]:
        return {"status": "Accepted"}

    @on(Action201.notify_report)
    def on_notify_report(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on(Action201.notify_event)
    def on_notify_event(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on(Action201.notify_charging_limit)
    def on_notify_charging_limit(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on(Action201.cleared_charging_limit)
    def on_cleared_charging_limit(self, **kwargs: Any) -> dict[str, Any]:
        return {}

    @on(Action201.report_charging_profiles)
    def on_report_charging_profiles(self, **kwargs: Any) -> dict[str, Any]:
        return {}


def handled_actions(connection_class: type) -> tuple[str, ...]:
    """The actions a connection class has an ``@on`` handler for (and so validates)."""
    return tuple(sorted(routes(connection_class)))


CONNECTION_CLASSES: Mapping[ProtocolVersion, type[Connection]] = {
    ProtocolVersion.OCPP16: Connection16,
    ProtocolVersion.OCPP201: Connection201,
}
