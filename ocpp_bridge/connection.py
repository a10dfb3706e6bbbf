"""One charger's websocket: OCPP-J framing, validation, routing, and outgoing CALLs.

Built on the `ocpp` library's `ChargePoint` (its ``@on``/``@after`` route map, CALL lock,
response matching and outbound validation) with our own inbound path, for three reasons
(OCPP.md §2.4, §2.8):
- every inbound CALL is validated with validators compiled from the library's schema files
  (`schemas`), several times cheaper than the library's jsonschema path;
- a frame that is not JSON or not an OCPP message gets the CALLERROR OCPP-J asks for (id
  ``"-1"`` when the message id cannot be read) instead of silence, and floods are throttled;
- a handler never calls the charger (that deadlocks the connection until the response
  timeout): `call_raw` refuses to run inside an ``@on`` handler, follow-up CALLs run from
  ``@after`` hooks or tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import (
    FormatViolationError,
    GenericError,
    InternalError,
    NotSupportedError,
    OCPPError,
    ProtocolError,
)
from ocpp.exceptions import (
    NotImplementedError as OcppNotImplementedError,
)
from ocpp.messages import Call, CallError, CallResult, MessageType, validate_payload
from ocpp.routing import after as _library_after
from ocpp.routing import on as _library_on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import ConnectionClosed

from ocpp_bridge import schemas
from ocpp_bridge.events import BootInfo, Event, ProtocolVersion
from ocpp_bridge.metering import MeterReading, read_meter_values
from ocpp_bridge.model import V16_STATUS, V201_CHARGING_STATE, V201_STATUS, ChargerModel
from ocpp_bridge.timestamps import TimestampError, format_timestamp, parse_timestamp

log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def on(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@on`` with types (the library ships none)."""
    return cast(Callable[[_Handler], _Handler], _library_on(action))


def after(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@after``: runs once the CALLRESULT is sent, so it may call the charger."""
    return cast(Callable[[_Handler], _Handler], _library_after(action))


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

    heartbeat_interval_s: int
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


def _error_frame(unique_id: str, error: OCPPError) -> str:
    return json.dumps(
        [MessageType.CallError, unique_id, error.code, error.description, error.details or {}],
        separators=(",", ":"),
        default=str,
    )


class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ProblemLog:
    """Logs the first problem of each kind per connection; counts the rest.

    A broken or hostile charger must not flood the log (or the disk of a Raspberry Pi).
    """

    def __init__(self, charger_id: str) -> None:
        self.charger_id = charger_id
        self.counts: dict[str, int] = {}

    def report(self, kind: str, detail: str) -> None:
        seen = self.counts.get(kind, 0)
        self.counts[kind] = seen + 1
        if seen == 0:
            log.warning(
                "charger %s: %s: %s (further ones are counted, not logged)",
                self.charger_id,
                kind,
                detail,
                extra={"charger_id": self.charger_id, "problem": kind},
            )

    def summary(self) -> str:
        return ", ".join(f"{kind} x{count}" for kind, count in sorted(self.counts.items()))


class Connection:
    """Shared inbound path, outgoing CALLs and the handlers both versions spell alike.

    The version classes add their own handlers; ``_library_class`` is the `ocpp` library's
    ChargePoint they derive from.
    """

    version: ProtocolVersion
    _library_class: Any
    # The library's ChargePoint provides these.
    route_map: dict[str, dict[str, Any]]
    _call_lock: asyncio.Lock
    _response_queue: asyncio.Queue[Any]
    _connection: Any
    _ocpp_version: str

    # Calls per connection beyond the budget by this factor (in a row) close it.
    FLOOD_CLOSE_AFTER = 1000

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
        self._library_class.__init__(self, model.charger_id, websocket, response_timeout_s)
        self.model = model
        self.host = host
        self.response_timeout_s = response_timeout_s
        self.problems = ProblemLog(model.charger_id)
        self._bucket = _TokenBucket(max_calls_per_s, call_burst)
        self._refused_in_a_row = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._boot: BootInfo | None = None
        self.setup_started = False
        self.closed = asyncio.Event()

    @property
    def charger_id(self) -> str:
        return self.model.charger_id

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

    async def _send(self, message: str) -> None:
        # The library logs every frame at INFO; this is the hot path.
        await self._connection.send(message)

    # --- inbound ----------------------------------------------------------------------------

    def _framework_error(self, description: str) -> OCPPError:
        # 2.0.1 OCPP-J §4.3 has RpcFrameworkError for frames that are no RPC; 1.6 has not, its
        # closest code is FormatViolation (1.6 errata name for FormationViolation).
        if self.version is ProtocolVersion.OCPP201:
            error = GenericError(description=description)
            error.code = "RpcFrameworkError"
            return error
        return FormatViolationError(description=description)

    async def route_message(self, raw_msg: str | bytes) -> None:
        now = self.host.clock()
        self._publish(self.model.seen(now))
        if isinstance(raw_msg, bytes):
            self.problems.report("binary frame", f"{len(raw_msg)} bytes; OCPP-J uses text frames")
            await self._send(
                _error_frame("-1", self._framework_error("binary frames are not OCPP-J"))
            )
            return
        try:
            message = json.loads(raw_msg)
        except ValueError:
            self.problems.report("not JSON", raw_msg[:80])
            await self._send(_error_frame("-1", self._framework_error("frame is not valid JSON")))
            return
        if (
            not isinstance(message, list)
            or len(message) < 3
            or not isinstance(message[0], int)
            or isinstance(message[0], bool)
            or not isinstance(message[1], str)
        ):
            unique_id = (
                message[1]
                if isinstance(message, list) and len(message) > 1 and isinstance(message[1], str)
                else "-1"
            )
            self.problems.report("not an OCPP-J message", raw_msg[:80])
            await self._send(
                _error_frame(unique_id, self._framework_error("not an OCPP-J message array"))
            )
            return
        kind, unique_id = message[0], message[1]
        if kind == MessageType.Call:
            if (
                len(message) != 4
                or not isinstance(message[2], str)
                or not isinstance(message[3], dict)
            ):
                self.problems.report("malformed CALL", raw_msg[:80])
                await self._send(
                    _error_frame(
                        unique_id,
                        ProtocolError(description="CALL needs [2, id, action, {payload}]"),
                    )
                )
                return
            if len(unique_id) > 36:
                self.problems.report("message id too long", unique_id[:40])
            if not self._bucket.take():
                await self._refuse_flood(unique_id)
                return
            self._refused_in_a_row = 0
            await self._dispatch(Call(unique_id, message[2], message[3]))
        elif kind == MessageType.CallResult and len(message) == 3 and isinstance(message[2], dict):
            self._response_queue.put_nowait(CallResult(unique_id, message[2]))
        elif kind == MessageType.CallError and len(message) >= 4:
            details = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
            self._response_queue.put_nowait(
                CallError(unique_id, str(message[2]), str(message[3]), details)
            )
        else:
            self.problems.report("unknown message type", str(kind))
            if self.version is ProtocolVersion.OCPP201:
                error: OCPPError = GenericError(description=f"message type {kind} is not supported")
                error.code = "MessageTypeNotSupported"
            else:
                error = ProtocolError(description=f"message type {kind} is not supported")
            await self._send(_error_frame(unique_id, error))

    async def _refuse_flood(self, unique_id: str) -> None:
        self._refused_in_a_row += 1
        self.problems.report("flood", "more CALLs than the per-charger budget; refusing")
        await self._send(
            _error_frame(unique_id, GenericError(description="too many messages; slow down"))
        )
        if self._refused_in_a_row >= self.FLOOD_CLOSE_AFTER:
            self.problems.report("flood", "closing the connection")
            await self._connection.close(1008, "message flood")

    async def _dispatch(self, call: Call) -> None:
        action = call.action
        handlers = self.route_map.get(action)
        if handlers is None or "_on_action" not in handlers:
            known = schemas.has_action(self.version, action)
            error: OCPPError = (
                OcppNotImplementedError(description=f"{action} is not handled by this CSMS")
                if known
                else NotSupportedError(description=f"{action} is not an OCPP {self.version} action")
            )
            self.problems.report("unhandled action", action)
            await self._send(_error_frame(call.unique_id, error))
            return
        try:
            schemas.validate(self.version, action, call.payload, response=False)
        except OCPPError as exc:
            self.problems.report(f"invalid {action}", exc.description)
            await self._send(_error_frame(call.unique_id, exc))
            return
        kwargs = snake_keys(call.payload)
        token = _IN_HANDLER.set(self)
        try:
            response = handlers["_on_action"](**kwargs)
            if inspect.isawaitable(response):
                response = await response
            payload = _response_payload(response)
            schemas.validate(self.version, action, payload, response=True)
        except OCPPError as exc:
            await self._send(_error_frame(call.unique_id, exc))
            return
        except Exception:
            log.exception("charger %s: handler for %s failed", self.charger_id, action)
            await self._send(
                _error_frame(call.unique_id, InternalError(description=f"{action} handler failed"))
            )
            return
        finally:
            _IN_HANDLER.reset(token)
        await self._send(
            json.dumps([MessageType.CallResult, call.unique_id, payload], separators=(",", ":"))
        )
        after_hook = handlers.get("_after_action")
        if after_hook is not None:
            result = after_hook(**kwargs)
            if inspect.iscoroutine(result):
                self.spawn(result, f"after-{action}")
        if not self.model.ready and action != "BootNotification":
            # Reconnected without booting (allowed): its first message shows it is past boot.
            self.host.charger_ready(self)

    # --- outbound ---------------------------------------------------------------------------

    async def call_raw(
        self, action: str, payload: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send a CALL, return the CALLRESULT payload (camelCase), raise OCPPError/TimeoutError.

        Request and response are validated with the library's validators (jsonschema; for 1.6
        SetChargingProfile with Decimal parsing, which is what checks ``multipleOf: 0.1``).
        """
        if _IN_HANDLER.get() is self:
            raise CallFromHandlerError(
                f"{action} to {self.charger_id} from inside its own @on handler would wait for "
                "a response the connection cannot read until the handler returns; use @after"
            )
        call = Call(str(uuid.uuid4()), action, payload)
        await validate_payload(call, self._ocpp_version)
        timeout = self.response_timeout_s if timeout_s is None else timeout_s
        async with self._call_lock:
            if self.closed.is_set():
                raise ChargerOfflineError(f"{self.charger_id} is not connected")
            try:
                await self._send(call.to_json())
            except ConnectionClosed as exc:
                raise ChargerOfflineError(f"{self.charger_id} disconnected") from exc
            response = await self._await_response(call.unique_id, timeout)
        if response.message_type_id == MessageType.CallError:
            raise response.to_exception()
        response.action = action
        await validate_payload(response, self._ocpp_version)
        result: dict[str, Any] = response.payload
        return result

    async def _await_response(self, unique_id: str, timeout_s: float) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no response from {self.charger_id} in {timeout_s} s")
            getter = asyncio.ensure_future(self._response_queue.get())
            closed = asyncio.ensure_future(self.closed.wait())
            try:
                await asyncio.wait(
                    (getter, closed), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                closed.cancel()
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                if self.closed.is_set():
                    raise ChargerOfflineError(f"{self.charger_id} disconnected before answering")
                raise TimeoutError(f"no response from {self.charger_id} in {timeout_s} s")
            response = getter.result()
            if response.unique_id == unique_id:
                return response
            # A late answer to a call that timed out before (mobilityhouse/ocpp#297).
            self.problems.report("late or unknown response", str(response.unique_id))

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


class Connection16(Connection, ChargePoint16):  # type: ignore[misc]
    version = ProtocolVersion.OCPP16

    _library_class = ChargePoint16

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


class Connection201(Connection, ChargePoint201):  # type: ignore[misc]
    version = ProtocolVersion.OCPP201

    _library_class = ChargePoint201

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


CONNECTION_CLASSES: Mapping[ProtocolVersion, Callable[..., Connection]] = {
    ProtocolVersion.OCPP16: Connection16,
    ProtocolVersion.OCPP201: Connection201,
}
