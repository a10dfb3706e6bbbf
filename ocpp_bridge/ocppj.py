"""OCPP-J without I/O: frames in, typed events out; CALLs and answers in, frames out.

`Endpoint` is one side of one OCPP-J websocket. It owns everything OCPP-J (1.6 §4, 2.0.1 Part 4
§4) says about the RPC layer and nothing about sockets, clocks or tasks:

- `receive` reads one websocket message and returns what it means: a `Call` to handle, the
  `CallResult`/`CallError` answering our pending CALL (with that CALL's action), or a
  `FrameRejected` carrying the CALLERROR code OCPP-J asks for (FormatViolation in 1.6 where
  2.0.1 has RpcFrameworkError, ProtocolError in 1.6 where 2.0.1 has MessageTypeNotSupported,
  NotImplemented for an action the version does not know, NotSupported for one it knows but
  nobody here handles) and the message id, ``"-1"`` when none can be read; a frame above the
  size limit gives `CloseRequested` (1009). A response that answers no pending CALL (late,
  duplicated, never asked for, malformed) gives no event at all: it is counted in
  `dropped_responses`, because OCPP-J has no answer to a response.
- One CALL in flight per direction. Ours: `send_call` queues behind the pending one and goes
  out when that one is answered or timed out. The peer's: its next well-formed CALL is held
  until we answered the current one (`send_result` / `send_error` return it), so calls reach
  the handler in the order they were sent, one at a time, whatever the peer does; beyond
  `max_held_calls` waiting the peer is told GenericError at once.
- Time is data: the caller passes ``now`` (any monotonic seconds), reads `deadline` (when the
  pending CALL times out), sleeps and calls `timeout(now)`, which gives `CallTimedOut`.
- Frames to write accumulate in an outbox that `data_to_send` drains, in the order they must go
  on the wire.
- Our message ids are ``id_prefix`` + a counter. An id given to `send_call` (a relay forwarding a
  CALL with the id its sender chose) may not start with that prefix, so the two never collide.

Payload validation is not OCPP-J's business but must come before a handler sees a CALL: the
endpoint takes a validator callable (`schemas.validate` for the version) and the set of actions
that are handled, so the order of checks (unknown action, unhandled action, schema) is the same
for every user.

A relay between a charger and the operator's own CSMS uses two endpoints per charger: downstream
one where we are the CSMS (the charger's CALLs come in as `Call` events, the CSMS's CALLs go out
with `send_call` under the CSMS's own message ids), upstream one where we are the charging
station (the reverse). Each endpoint keeps its own one-in-flight rule and id space; our own
CALLs (smart charging) take the prefixed ids of the downstream endpoint and are told apart from
forwarded ones by id, so their answers never leak to the CSMS.
"""

from __future__ import annotations

import decimal
import itertools
import json
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, Final

from ocpp_bridge.events import ProtocolVersion

CALL: Final = 2
CALLRESULT: Final = 3
CALLERROR: Final = 4

# OCPP-J 2.0.1 §4.2.3 caps errorDescription at 255 characters; descriptions may quote input.
MAX_DESCRIPTION = 255
# OCPP-J 2.0.1 §4.1.4: a message id is at most 36 characters (1.6 says the same of its CALLs).
MAX_ID_LENGTH = 36
# Websocket close codes (RFC 6455 §7.4.1).
CLOSE_TOO_BIG = 1009

# (action, payload) -> None, or raises an error with `code`, `description`, `details`
# (the `ocpp` library's OCPPError and so `schemas.validate`).
Validator = Callable[[str, Any], None]


@dataclass(frozen=True, slots=True)
class Call:
    """A CALL from the peer, ready for its handler; answer it with `Endpoint.send_result`."""

    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    """The answer to our pending CALL; `action` is that CALL's action."""

    unique_id: str
    payload: dict[str, Any]
    action: str


@dataclass(frozen=True, slots=True)
class CallError:
    """An error answering our pending CALL. `malformed`: the peer's answer had its id but was no
    valid CALLRESULT/CALLERROR; the call fails with FormatViolation rather than time out."""

    unique_id: str
    code: str
    description: str
    details: dict[str, Any]
    action: str
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class CallTimedOut:
    """Our CALL got no answer by its deadline; a later answer will be dropped."""

    unique_id: str
    action: str


@dataclass(frozen=True, slots=True)
class CallAborted:
    """Our CALL (sent or still queued) will never be answered: the endpoint was closed."""

    unique_id: str
    action: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame that is no CALL we may handle, with the CALLERROR it should get.

    `problem` names the kind of fault (for logs and counters); `detail` quotes the input.
    The endpoint does not answer by itself: the caller may answer something else (a flood
    budget's GenericError) with `send_error`, or this with `Endpoint.reject`.
    """

    unique_id: str
    code: str
    description: str
    problem: str
    detail: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The connection should be closed with this websocket close code."""

    code: int
    reason: str


Event = Call | CallResult | CallError | CallTimedOut | CallAborted | FrameRejected | CloseRequested


class EndpointClosed(ConnectionError):
    """A CALL was asked of an endpoint that was closed."""


class IdCollision(ValueError):
    """A message id given to `send_call` is one of ours or still in use."""


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


# One encoder for every frame: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def _dumps(message: list[Any]) -> str:
    return _ENCODER.encode(message)


def error_frame(
    unique_id: str, code: str, description: str, details: dict[str, Any] | None = None
) -> str:
    """A CALLERROR frame (description cut to what OCPP-J 2.0.1 allows)."""
    return _dumps([CALLERROR, unique_id, code, description[:MAX_DESCRIPTION], details or {}])


@dataclass(slots=True)
class _Outgoing:
    unique_id: str
    action: str
    payload: dict[str, Any]
    timeout_s: float
    deadline: float = 0.0


class Endpoint:
    """One side of one OCPP-J connection, as a state machine (see the module docstring)."""

    def __init__(
        self,
        version: ProtocolVersion,
        *,
        id_prefix: str = "fb-",
        known_actions: Container[str] | None = None,
        handled_actions: Container[str] | None = None,
        validate: Validator | None = None,
        max_frame_bytes: int | None = None,
        max_held_calls: int = 8,
    ) -> None:
        """`known_actions`: the version's actions (unknown ones get NotImplemented; None: all
        are known); `handled_actions`: those a `Call` may be produced for (others get
        NotSupported; None: all); `validate` checks a CALL's payload before it is produced."""
        if not id_prefix:
            raise ValueError("id_prefix must not be empty")
        self.version = version
        self.id_prefix = id_prefix
        self.known_actions = known_actions
        self.handled_actions = handled_actions
        self.validate = validate
        self.max_frame_bytes = max_frame_bytes
        self.max_held_calls = max_held_calls
        # Responses that answered no pending CALL, dropped.
        self.dropped_responses = 0
        self._ids = itertools.count(1)
        self._pending: _Outgoing | None = None
        self._queue: deque[_Outgoing] = deque()
        # The peer's CALL being handled, and the ones it sent since (in order).
        self._answering: str | None = None
        self._held: deque[Call] = deque()
        self._outbox: list[str] = []
        self.closed = False

    # --- state -------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When the pending CALL times out (the ``now`` scale), None with none pending."""
        return None if self._pending is None else self._pending.deadline

    @property
    def pending_call(self) -> tuple[str, str] | None:
        """(message id, action) of our CALL on the wire, awaiting its answer."""
        return None if self._pending is None else (self._pending.unique_id, self._pending.action)

    @property
    def queued_calls(self) -> int:
        return len(self._queue)

    @property
    def answering(self) -> str | None:
        """The message id of the peer's CALL handed out and not yet answered."""
        return self._answering

    @property
    def held_calls(self) -> int:
        return len(self._held)

    def data_to_send(self) -> list[str]:
        """The frames to write, in order (and forget them)."""
        frames, self._outbox = self._outbox, []
        return frames

    # --- inbound -----------------------------------------------------------------------------

    def _framework(self) -> str:
        # 2.0.1 OCPP-J §4.3 has RpcFrameworkError for frames that are no RPC; 1.6 has not, its
        # closest code is FormatViolation (1.6 errata name for FormationViolation).
        return "RpcFrameworkError" if self.version is ProtocolVersion.OCPP201 else "FormatViolation"

    def _too_big(self, frame: str | bytes) -> bool:
        limit = self.max_frame_bytes
        if limit is None:
            return False
        if len(frame) > limit:
            return True
        # A character is at most 4 bytes of UTF-8: encode only when that could matter.
        return isinstance(frame, str) and len(frame) * 4 > limit and len(frame.encode()) > limit

    def receive(self, frame: str | bytes, now: float) -> list[Event]:
        """What one websocket message (text: str, binary: bytes) means."""
        if self.closed:
            return []
        if self._too_big(frame):
            return [CloseRequested(CLOSE_TOO_BIG, "frame too big")]
        if isinstance(frame, bytes):
            return [
                FrameRejected(
                    "-1",
                    self._framework(),
                    "binary frames are not OCPP-J",
                    "binary frame",
                    f"{len(frame)} bytes; OCPP-J uses text frames",
                )
            ]
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            # RecursionError: nested deeper than the interpreter's stack (``[[[[...``).
            return [
                FrameRejected(
                    "-1", self._framework(), "frame is not valid JSON", "not JSON", frame[:80]
                )
            ]
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
            return [
                FrameRejected(
                    unique_id,
                    self._framework(),
                    "not an OCPP-J message array",
                    "not an OCPP-J message",
                    frame[:80],
                )
            ]
        kind, unique_id = message[0], message[1]
        if kind in (CALLRESULT, CALLERROR):
            return self._response(message, now)
        if kind != CALL:
            code = (
                "MessageTypeNotSupported"
                if self.version is ProtocolVersion.OCPP201
                else "ProtocolError"
            )
            return [
                FrameRejected(
                    unique_id,
                    code,
                    f"message type {kind} is not supported",
                    "unknown message type",
                    str(kind)[:40],
                )
            ]
        if len(message) != 4 or not isinstance(message[2], str) or not isinstance(message[3], dict):
            return [
                FrameRejected(
                    unique_id,
                    "ProtocolError",
                    "CALL needs [2, id, action, {payload}]",
                    "malformed CALL",
                    frame[:80],
                )
            ]
        return self._call(Call(unique_id, message[2], message[3]))

    def _call(self, call: Call) -> list[Event]:
        handled = self.handled_actions
        if handled is not None and call.action not in handled:
            # OCPP-J (1.6 §4.2.3, 2.0.1 §4.3): NotImplemented is "Requested Action is not known
            # by receiver", NotSupported "recognized but not supported". (The `ocpp` library
            # answers the other way round.)
            known = self.known_actions is None or call.action in self.known_actions
            return [
                FrameRejected(
                    call.unique_id,
                    "NotSupported" if known else "NotImplemented",
                    f"{call.action} is not handled here"
                    if known
                    else f"{call.action[:64]} is not an OCPP {self.version} action",
                    "unhandled action",
                    call.action[:80],
                )
            ]
        if self.validate is not None:
            try:
                self.validate(call.action, call.payload)
            except Exception as exc:
                code = getattr(exc, "code", None)
                if not isinstance(code, str):
                    raise
                description = str(getattr(exc, "description", "") or code)
                details = getattr(exc, "details", None)
                return [
                    FrameRejected(
                        call.unique_id,
                        code,
                        description,
                        f"invalid {call.action}",
                        description,
                        details if isinstance(details, dict) else {},
                    )
                ]
        if self._answering is None:
            self._answering = call.unique_id
            return [call]
        if len(self._held) >= self.max_held_calls:
            return [
                FrameRejected(
                    call.unique_id,
                    "GenericError",
                    "too many CALLs sent before the previous ones were answered",
                    "CALLs not awaiting their answer",
                    call.action[:80],
                )
            ]
        self._held.append(call)
        return []

    def _response(self, message: list[Any], now: float) -> list[Event]:
        kind, unique_id = message[0], message[1]
        pending = self._pending
        if pending is None or unique_id != pending.unique_id:
            self.dropped_responses += 1
            return []
        self._pending = None
        event: Event
        if kind == CALLRESULT and len(message) == 3 and isinstance(message[2], dict):
            event = CallResult(unique_id, message[2], pending.action)
        elif kind == CALLERROR and len(message) >= 4:
            details = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
            event = CallError(unique_id, str(message[2]), str(message[3]), details, pending.action)
        else:
            event = CallError(
                unique_id, "FormatViolation", "malformed response", {}, pending.action, True
            )
        self._next_call(now)
        return [event]

    # --- answering the peer's CALLs ----------------------------------------------------------

    def send_result(self, unique_id: str, payload: dict[str, Any]) -> list[Event]:
        """Answer a `Call`; returns the next CALL the peer sent meanwhile, if any."""
        self._outbox.append(_dumps([CALLRESULT, unique_id, payload]))
        return self._answered(unique_id)

    def send_error(
        self,
        unique_id: str,
        code: str,
        description: str,
        details: dict[str, Any] | None = None,
    ) -> list[Event]:
        """Answer a `Call` or a rejected frame with a CALLERROR; returns the next held CALL."""
        self._outbox.append(error_frame(unique_id, code, description, details))
        return self._answered(unique_id)

    def reject(self, rejected: FrameRejected) -> list[Event]:
        """Answer a rejected frame with the CALLERROR OCPP-J asks for."""
        return self.send_error(
            rejected.unique_id, rejected.code, rejected.description, rejected.details
        )

    def _answered(self, unique_id: str) -> list[Event]:
        if self._answering is None or unique_id != self._answering:
            return []
        self._answering = None
        if self._held and not self.closed:
            call = self._held.popleft()
            self._answering = call.unique_id
            return [call]
        return []

    # --- our CALLs ---------------------------------------------------------------------------

    def send_call(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        now: float,
        timeout_s: float,
        unique_id: str | None = None,
    ) -> str:
        """Send a CALL now, or queue it behind the pending one; returns its message id.

        `unique_id`: keep the id another party chose (a relay); it must not start with
        `id_prefix` nor be in use here (`IdCollision`).
        """
        if self.closed:
            raise EndpointClosed("the connection is closed")
        if unique_id is None:
            unique_id = f"{self.id_prefix}{next(self._ids)}"
        elif unique_id.startswith(self.id_prefix) or unique_id in self._in_use():
            raise IdCollision(f"message id {unique_id[:40]!r} is reserved or in use")
        outgoing = _Outgoing(unique_id, action, payload, timeout_s)
        if self._pending is None:
            self._start(outgoing, now)
        else:
            self._queue.append(outgoing)
        return unique_id

    def _in_use(self) -> set[str]:
        ids = {queued.unique_id for queued in self._queue}
        if self._pending is not None:
            ids.add(self._pending.unique_id)
        return ids

    def _start(self, outgoing: _Outgoing, now: float) -> None:
        outgoing.deadline = now + outgoing.timeout_s
        self._pending = outgoing
        self._outbox.append(_dumps([CALL, outgoing.unique_id, outgoing.action, outgoing.payload]))

    def _next_call(self, now: float) -> None:
        if self._queue and not self.closed:
            self._start(self._queue.popleft(), now)

    def cancel_call(self, unique_id: str) -> bool:
        """Forget a CALL still queued (its caller gave up); one on the wire stays pending."""
        for queued in self._queue:
            if queued.unique_id == unique_id:
                self._queue.remove(queued)
                return True
        return False

    def timeout(self, now: float) -> list[Event]:
        """`CallTimedOut` when the pending CALL's deadline has passed (and the next goes out)."""
        pending = self._pending
        if pending is None or now < pending.deadline:
            return []
        self._pending = None
        self._next_call(now)
        return [CallTimedOut(pending.unique_id, pending.action)]

    def close(self) -> list[Event]:
        """The connection is gone: every CALL of ours, sent or queued, is aborted."""
        self.closed = True
        aborted = [self._pending] if self._pending is not None else []
        aborted += self._queue
        self._pending = None
        self._queue.clear()
        self._held.clear()
        self._answering = None
        self._outbox.clear()
        return [CallAborted(call.unique_id, call.action) for call in aborted]
