"""Local-controller routing without I/O: which frame goes to the charger, which to the CSMS.

In local-controller mode a charger talks to flexbridge and flexbridge talks, under the charger's
identity, to the operator's own CSMS. `Relay` is one such charger: two `ocppj.Endpoint`s,
downstream (we are the CSMS) and upstream (we are the charging station), and the rules between
them:

- the charger's CALLs go upstream under the charger's message id, one at a time and in order
  (the downstream endpoint hands them out one at a time); the CSMS's answer goes back under
  that id;
- follow-ups to one of OUR requests (ReportChargingProfiles, NotifyReport, ... carrying a
  requestId we sent) are answered here and given to the host as `FollowUp`, never forwarded;
- the CSMS's CALLs go downstream under the CSMS's message id (another id only if that one
  starts with our prefix), the charger's answer goes back upstream under the CSMS's id;
- our own CALLs (smart charging) take the downstream endpoint's prefixed ids; their answers
  come back as `OurAnswer` and never go upstream. Our CALLs and the CSMS's share the one CALL
  in flight towards the charger, in the order they were asked for;
- upstream loss: policy ``strict`` asks the host to close the charger (`CloseCharger`);
  ``autonomous`` keeps it and answers here what must be answered (boot, heartbeat, status,
  meter values, Authorize as configured, 1.6 StartTransaction with a local transactionId,
  2.0.1 TransactionEvent) and
  queues what the CSMS must still learn (BootNotifications and every transaction message) for
  replay, in order, once the CSMS is back. A 1.6 transaction started while the
  CSMS was away runs under a local transactionId; once the CSMS has given its own id for it,
  every later message about that transaction carries the CSMS's id upstream. Replayed 2.0.1
  TransactionEvents carry ``offline: true``: the CSMS did not hear of them when they happened;
- the CSMS's own charging profiles: its SetChargingProfile / ClearChargingProfile the charger
  accepted are kept in `csms_profiles` (they survive restarts with the replays), so that
  flexbridge plans within the limit they set.

The charger's CALLs wait (unanswered) while the first upstream connection is being opened: a
CSMS must see the charger's own BootNotification, not one we answered. The host says when that
attempt failed (`upstream_failed`), and the policy decides from then on.

Time is data (``now`` in monotonic seconds, the `clock` only for the ``currentTime`` we write);
frames to write accumulate and are drained with `to_charger` and `to_csms`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from ocpp_bridge import ocppj
from ocpp_bridge.csms_profiles import CsmsProfiles
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.timestamps import format_timestamp

# Charger CALLs that answer a request of the CSMS side and say which one in `requestId`.
FOLLOW_UP_ACTIONS = frozenset(
    {
        "ReportChargingProfiles",
        "NotifyReport",
        "NotifyMonitoringReport",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
    }
)


# The CSMS's CALLs that change the profiles the charger holds (kept in `csms_profiles`).
PROFILE_ACTIONS = frozenset({"SetChargingProfile", "ClearChargingProfile"})

# How many of our latest requestIds are recognised in follow-ups.
OUR_REQUESTS_KEPT = 1024


class UpstreamPolicy(StrEnum):
    """What the charger gets while the operator's CSMS is unreachable."""

    STRICT = "strict"  # the charger's socket is closed: it sees what the CSMS outage is
    AUTONOMOUS = "autonomous"  # the charger stays connected and controlled by flexbridge


class UpstreamState(StrEnum):
    CONNECTING = "connecting"  # first attempt under way: the charger's CALLs wait
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class OurAnswer:
    """The charger's answer (or its absence) to one of our own CALLs."""

    answer: ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut | ocppj.CallAborted


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A charger CALL following up one of our requests; already answered."""

    call: ocppj.Call


@dataclass(frozen=True, slots=True)
class Answered:
    """A charger CALL the CSMS answered with a CALLRESULT, relayed to the charger."""

    call: ocppj.Call
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AnsweredLocally:
    """A charger CALL answered here because the CSMS was unreachable (`replayed`: queued)."""

    call: ocppj.Call
    payload: dict[str, Any]
    replayed: bool


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame of the charger (`from_charger`) or of the CSMS that got a CALLERROR here."""

    from_charger: bool
    rejected: ocppj.FrameRejected


@dataclass(frozen=True, slots=True)
class CloseCharger:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CsmsCleared:
    """The charger accepted a ClearChargingProfile of the CSMS: whatever its criteria matched
    is gone from the charger, ours included when they matched ours too."""

    payload: dict[str, Any]


RelayEvent = (
    OurAnswer
    | FollowUp
    | Answered
    | AnsweredLocally
    | Rejected
    | CloseCharger
    | CloseUpstream
    | CsmsCleared
)


@dataclass(slots=True)
class _Upward:
    """A charger CALL on its way to the CSMS: live (`charger_id` awaits the answer) or replay."""

    action: str
    payload: dict[str, Any]
    charger_id: str | None  # None: a replay, already answered to the charger
    local_tx: int | None = None  # a replayed 1.6 StartTransaction: the local id it was given


@dataclass(slots=True)
class _Counters:
    forwarded_up: int = 0
    forwarded_down: int = 0
    answered_locally: int = 0
    replayed: int = 0
    dropped_answers: int = 0


def _replayed(version: ProtocolVersion, action: str, payload: dict[str, Any]) -> bool:
    """What the CSMS must still hear once back: a boot (the station may have restarted) and
    every message about a transaction (sessions and energy are billed from them)."""
    if action == "BootNotification":
        return True
    if version is ProtocolVersion.OCPP201:
        return action == "TransactionEvent"
    if action in ("StartTransaction", "StopTransaction"):
        return True
    return action == "MeterValues" and "transactionId" in payload


class Relay:
    """One charger between flexbridge and the operator's CSMS (see the module docstring)."""

    def __init__(
        self,
        version: ProtocolVersion,
        *,
        clock: Callable[[], datetime],
        policy: UpstreamPolicy = UpstreamPolicy.AUTONOMOUS,
        heartbeat_interval_s: int = 300,
        call_timeout_s: float = 30.0,
        our_prefix: str = "fb-",
        local_transaction_ids: tuple[int, int] = (2_000_000_000, 2_100_000_000),
        request_ids: tuple[int, int] = (1_900_000_000, 2_000_000_000),
        known_actions: Container[str] | None = None,
        validate: ocppj.Validator | None = None,
        max_frame_bytes: int | None = None,
        max_replay: int = 100_000,
        authorize_offline: bool = True,
    ) -> None:
        """`local_transaction_ids` and `request_ids`: [start, stop) ranges kept for our own
        1.6 transaction ids and requestIds, apart from what a CSMS uses. `known_actions`
        and `validate`: the version's actions and payload check, applied to the CALLs of both
        sides before they are relayed (an unknown action gets NotImplemented here).
        `authorize_offline`: while the CSMS is away, Authorize is answered Accepted (what a
        charger's own offline authorisation would do) or refused."""
        self.version = version
        self.clock = clock
        self.policy = policy
        self.heartbeat_interval_s = heartbeat_interval_s
        self.call_timeout_s = call_timeout_s
        self.our_prefix = our_prefix
        self._known_actions = known_actions
        self._validate = validate
        self._max_frame_bytes = max_frame_bytes
        self.downstream = self._endpoint()
        self.upstream = self._endpoint()
        self.state = UpstreamState.CONNECTING
        self.counters = _Counters()
        self.max_replay = max_replay
        self.authorize_offline = authorize_offline
        self._next_tx, self._tx_stop = local_transaction_ids
        # Bumped whenever what must survive a restart changes (see `durable_state`).
        self.revision = 0
        self._request_ids = itertools.cycle(range(*request_ids))
        # Every requestId we used, latest last (the oldest forgotten beyond OUR_REQUESTS_KEPT):
        # a follow-up is recognised whatever arrives in between, a repeated final one too.
        self._our_requests: dict[int, None] = {}
        # Waiting for the upstream endpoint, in order: one of them on the wire at a time.
        self._up: deque[_Upward] = deque()
        self._up_pending: tuple[str, _Upward] | None = None
        # The CSMS's CALLs forwarded downstream: downstream id -> CSMS id.
        self._down: dict[str, str] = {}
        # Those that change the charger's profiles, until the charger answered them.
        self._down_profiles: dict[str, ocppj.Call] = {}
        self.csms_profiles = CsmsProfiles(version)
        self._csms_ids = itertools.count(1)
        # Local 1.6 transaction id -> the CSMS's, once a replayed StartTransaction was answered.
        self.transaction_ids: dict[int, int] = {}

    def _endpoint(self) -> ocppj.Endpoint:
        return ocppj.Endpoint(
            self.version,
            id_prefix=self.our_prefix,
            known_actions=self._known_actions,
            handled_actions=self._known_actions,
            validate=self._validate,
            max_frame_bytes=self._max_frame_bytes,
        )

    # --- state -------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        deadlines = [d for d in (self.downstream.deadline, self.upstream.deadline) if d]
        return min(deadlines) if deadlines else None

    def _replays(self) -> list[_Upward]:
        """Every replay the CSMS has not answered yet (the one on the wire first), in order."""
        replays = [u for u in self._up if u.charger_id is None]
        if self._up_pending is not None and self._up_pending[1].charger_id is None:
            replays.insert(0, self._up_pending[1])
        return replays

    def durable_state(self) -> dict[str, Any]:
        """What must survive a restart, as JSON data: the replays not yet answered by the
        CSMS, the 1.6 transaction ids mapped so far and the next local transaction id."""
        return {
            "version": str(self.version),
            "replays": [[u.action, u.payload, u.local_tx] for u in self._replays()],
            "transaction_ids": [[k, v] for k, v in self.transaction_ids.items()],
            "next_transaction_id": self._next_tx,
            "csms_profiles": self.csms_profiles.to_json(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take up a `durable_state` saved before a restart (replays ahead of anything new)."""
        if state.get("version") != str(self.version):
            raise ValueError(f"saved for OCPP {state.get('version')}, not {self.version}")
        replays = [
            _Upward(str(action), dict(payload), None, local_tx)
            for action, payload, local_tx in state["replays"]
        ]
        self._up.extendleft(reversed(replays))
        self.transaction_ids.update({int(k): int(v) for k, v in state["transaction_ids"]})
        self._next_tx = max(self._next_tx, int(state["next_transaction_id"]))
        self.csms_profiles.restore(state.get("csms_profiles", []))
        self.revision += 1

    def to_charger(self) -> list[str]:
        return self.downstream.data_to_send()

    def to_csms(self) -> list[str]:
        return self.upstream.data_to_send()

    # --- our own CALLs -----------------------------------------------------------------------

    def new_request_id(self) -> int:
        """A requestId from our range, for a CALL whose follow-ups must stay here."""
        request_id = next(self._request_ids)
        self._remember_request(request_id)
        return request_id

    def _remember_request(self, request_id: int) -> None:
        self._our_requests.pop(request_id, None)
        self._our_requests[request_id] = None
        while len(self._our_requests) > OUR_REQUESTS_KEPT:
            del self._our_requests[next(iter(self._our_requests))]

    def send_our_call(
        self, action: str, payload: dict[str, Any], now: float, timeout_s: float | None = None
    ) -> str:
        """Queue a CALL of ours to the charger; its answer comes back as `OurAnswer`."""
        request_id = payload.get("requestId")
        if isinstance(request_id, int):
            self._remember_request(request_id)
        return self.downstream.send_call(
            action,
            payload,
            now=now,
            timeout_s=self.call_timeout_s if timeout_s is None else timeout_s,
        )

    # --- the charger's side ------------------------------------------------------------------

    def from_charger(self, frame: str | bytes, now: float) -> list[RelayEvent]:
        events = deque(self.downstream.receive(frame, now))
        out: list[RelayEvent] = []
        while events:
            event = events.popleft()
            if isinstance(event, ocppj.Call):
                events.extend(self._charger_call(event, now, out))
            elif isinstance(event, ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut):
                self._charger_answer(event, now, out)
            elif isinstance(event, ocppj.FrameRejected):
                out.append(Rejected(True, event))
                events.extend(self.downstream.reject(event))
            elif isinstance(event, ocppj.CloseRequested):
                out.append(CloseCharger(event.code, event.reason))
        return out

    def _charger_call(
        self, call: ocppj.Call, now: float, out: list[RelayEvent]
    ) -> list[ocppj.Event]:
        if call.action in FOLLOW_UP_ACTIONS and self._ours(call.payload):
            out.append(FollowUp(call))
            return self.downstream.send_result(call.unique_id, {})
        self._transaction_end(call)
        if self.state is UpstreamState.OFFLINE:
            return self._offline(call, out)
        self._up.append(_Upward(call.action, call.payload, call.unique_id))
        self._pump_up(now)
        return []

    def _transaction_end(self, call: ocppj.Call) -> None:
        """The CSMS's TxProfiles for a transaction end with it."""
        if call.action == "StopTransaction":
            ended = call.payload.get("transactionId")
        elif call.action == "TransactionEvent" and call.payload.get("eventType") == "Ended":
            ended = (call.payload.get("transactionInfo") or {}).get("transactionId")
        else:
            return
        if ended is not None and self.csms_profiles:
            before = len(self.csms_profiles)
            self.csms_profiles.transaction_ended(str(ended))
            if len(self.csms_profiles) != before:
                self.revision += 1

    def _ours(self, payload: dict[str, Any]) -> bool:
        request_id = payload.get("requestId")
        return isinstance(request_id, int) and request_id in self._our_requests

    def _charger_answer(
        self,
        answer: ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut,
        now: float,
        out: list[RelayEvent],
    ) -> None:
        csms_id = self._down.pop(answer.unique_id, None)
        if csms_id is None:
            # Not the CSMS's, so ours: it never goes upstream.
            out.append(OurAnswer(answer))
            return
        profile_call = self._down_profiles.pop(answer.unique_id, None)
        if (
            profile_call is not None
            and isinstance(answer, ocppj.CallResult)
            and answer.payload.get("status") == "Accepted"
        ):
            # The charger holds it now, whether or not the CSMS is still there to hear so.
            self._profiles_changed(profile_call)
            if profile_call.action == "ClearChargingProfile":
                out.append(CsmsCleared(profile_call.payload))
        if self.state is not UpstreamState.ONLINE or self.upstream.answering != csms_id:
            self.counters.dropped_answers += 1  # the CSMS that asked is gone
            return
        if isinstance(answer, ocppj.CallResult):
            follow = self.upstream.send_result(csms_id, answer.payload)
        elif isinstance(answer, ocppj.CallError):
            follow = self.upstream.send_error(
                csms_id, answer.code, answer.description, answer.details
            )
        else:
            follow = self.upstream.send_error(
                csms_id, "GenericError", "the charging station did not answer in time"
            )
        self._csms_calls(follow, now, out)

    # --- the CSMS's side ---------------------------------------------------------------------

    def from_csms(self, frame: str | bytes, now: float) -> list[RelayEvent]:
        out: list[RelayEvent] = []
        if self.state is not UpstreamState.ONLINE:
            return out
        self._csms_calls(self.upstream.receive(frame, now), now, out)
        return out

    def _csms_calls(self, incoming: list[ocppj.Event], now: float, out: list[RelayEvent]) -> None:
        events = deque(incoming)
        while events:
            event = events.popleft()
            if isinstance(event, ocppj.Call):
                self._forward_down(event, now)
            elif isinstance(event, ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut):
                self._csms_answer(event, now, out)
            elif isinstance(event, ocppj.FrameRejected):
                out.append(Rejected(False, event))
                events.extend(self.upstream.reject(event))
            elif isinstance(event, ocppj.CloseRequested):
                out.append(CloseUpstream(event.code, event.reason))

    def _forward_down(self, call: ocppj.Call, now: float) -> None:
        if self.downstream.closed:
            # Only replays keep the upstream open after the charger left.
            self._csms_calls(
                self.upstream.send_error(
                    call.unique_id, "GenericError", "the charging station is not connected"
                ),
                now,
                [],
            )
            return
        down_id = call.unique_id
        try:
            self.downstream.send_call(
                call.action,
                call.payload,
                now=now,
                timeout_s=self.call_timeout_s,
                unique_id=down_id,
            )
        except ocppj.IdCollision:
            # The CSMS chose an id that looks like ours: the charger sees another one.
            while True:
                down_id = f"cs-{next(self._csms_ids)}"
                try:
                    self.downstream.send_call(
                        call.action,
                        call.payload,
                        now=now,
                        timeout_s=self.call_timeout_s,
                        unique_id=down_id,
                    )
                    break
                except ocppj.IdCollision:
                    continue
        self._down[down_id] = call.unique_id
        if call.action in PROFILE_ACTIONS:
            self._down_profiles[down_id] = call
        self.counters.forwarded_down += 1

    def _profiles_changed(self, call: ocppj.Call) -> None:
        try:
            if call.action == "SetChargingProfile":
                self.csms_profiles.set(call.payload)
            else:
                self.csms_profiles.clear(call.payload)
        except (KeyError, TypeError, ValueError):
            # Schema-valid, so only a value nothing here can read (an unknown unit): the
            # charger decides about it; the limit flexbridge plans with does not count it.
            return
        self.revision += 1

    def _csms_answer(
        self,
        answer: ocppj.CallResult | ocppj.CallError | ocppj.CallTimedOut,
        now: float,
        out: list[RelayEvent],
    ) -> None:
        if self._up_pending is None or self._up_pending[0] != answer.unique_id:
            return
        _, upward = self._up_pending
        self._up_pending = None
        if upward.charger_id is None:
            # A replay: the charger was answered long ago. A 1.6 transaction gets its CSMS id.
            self.revision += 1
            if (
                isinstance(answer, ocppj.CallResult)
                and upward.local_tx is not None
                and isinstance(answer.payload.get("transactionId"), int)
            ):
                self.transaction_ids[upward.local_tx] = answer.payload["transactionId"]
        elif isinstance(answer, ocppj.CallResult):
            call = ocppj.Call(upward.charger_id, upward.action, upward.payload)
            out.append(Answered(call, answer.payload))
            self._answer_charger(upward.charger_id, answer.payload, now, out)
        elif isinstance(answer, ocppj.CallError):
            self._error_charger(
                upward.charger_id, answer.code, answer.description, answer.details, now, out
            )
        else:
            self._error_charger(
                upward.charger_id,
                "GenericError",
                "the CSMS did not answer in time",
                {},
                now,
                out,
            )
        self._pump_up(now)

    # --- the upstream queue ------------------------------------------------------------------

    def _pump_up(self, now: float) -> None:
        """Send the next waiting charger CALL (live or replay) to the CSMS, one at a time."""
        if self.state is not UpstreamState.ONLINE or self._up_pending is not None:
            return
        while self._up:
            upward = self._up.popleft()
            # Written anew from what was parsed and checked, not forwarded as the charger's
            # text: a key given twice would carry to the CSMS a value no schema check saw.
            payload = self._rewrite(upward.action, upward.payload)
            try:
                unique_id = self.upstream.send_call(
                    upward.action,
                    payload,
                    now=now,
                    timeout_s=self.call_timeout_s,
                    unique_id=upward.charger_id,
                )
            except ocppj.IdCollision:
                # The charger chose an id that looks like ours: the CSMS sees one of ours.
                unique_id = self.upstream.send_call(
                    upward.action, payload, now=now, timeout_s=self.call_timeout_s
                )
            if upward.charger_id is None:
                self.counters.replayed += 1
            else:
                self.counters.forwarded_up += 1
            self._up_pending = (unique_id, upward)
            return

    def _rewrite(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A 1.6 message about a transaction we numbered carries the CSMS's number upstream."""
        if self.version is not ProtocolVersion.OCPP16:
            return payload
        local = payload.get("transactionId")
        if isinstance(local, int) and local in self.transaction_ids:
            return {**payload, "transactionId": self.transaction_ids[local]}
        return payload

    def _answer_charger(
        self, unique_id: str, payload: dict[str, Any], now: float, out: list[RelayEvent]
    ) -> None:
        follow = self.downstream.send_result(unique_id, payload)
        self._charger_follow(follow, now, out)

    def _error_charger(
        self,
        unique_id: str,
        code: str,
        description: str,
        details: dict[str, Any],
        now: float,
        out: list[RelayEvent],
    ) -> None:
        follow = self.downstream.send_error(unique_id, code, description, details)
        self._charger_follow(follow, now, out)

    def _charger_follow(self, follow: list[ocppj.Event], now: float, out: list[RelayEvent]) -> None:
        events = deque(follow)
        while events:
            event = events.popleft()
            if isinstance(event, ocppj.Call):
                events.extend(self._charger_call(event, now, out))

    # --- offline -----------------------------------------------------------------------------

    def _offline(self, call: ocppj.Call, out: list[RelayEvent]) -> list[ocppj.Event]:
        if self.policy is UpstreamPolicy.STRICT:
            return self.downstream.send_error(
                call.unique_id, "GenericError", "the CSMS is unreachable"
            )
        payload = self._local_answer(call)
        if payload is None:
            return self.downstream.send_error(
                call.unique_id, "GenericError", "the CSMS is unreachable"
            )
        replayed = _replayed(self.version, call.action, call.payload)
        if replayed and len(self._up) < self.max_replay:
            request = call.payload
            local_tx = None
            if call.action == "StartTransaction":
                local_tx = payload["transactionId"]
            elif self.version is ProtocolVersion.OCPP201:
                request = {**request, "offline": True}
            self._up.append(_Upward(call.action, request, None, local_tx))
            self.revision += 1
        self.counters.answered_locally += 1
        out.append(AnsweredLocally(call, payload, replayed))
        return self.downstream.send_result(call.unique_id, payload)

    def _local_answer(self, call: ocppj.Call) -> dict[str, Any] | None:
        """What the charger must hear while the CSMS is away; None: nothing we can say."""
        action = call.action
        now = format_timestamp(self.clock())
        if action == "BootNotification":
            return {
                "status": "Accepted",
                "currentTime": now,
                "interval": self.heartbeat_interval_s,
            }
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            if self.version is ProtocolVersion.OCPP16:
                status = "Accepted" if self.authorize_offline else "Invalid"
                return {"idTagInfo": {"status": status}}
            status = "Accepted" if self.authorize_offline else "Unknown"
            return {"idTokenInfo": {"status": status}}
        if action in ("StatusNotification", "MeterValues", "NotifyEvent", "TransactionEvent"):
            return {}
        if self.version is ProtocolVersion.OCPP16:
            if action == "StartTransaction":
                if self._next_tx >= self._tx_stop:
                    return None
                transaction_id = self._next_tx
                self._next_tx += 1
                self.revision += 1
                return {"transactionId": transaction_id, "idTagInfo": {"status": "Accepted"}}
            if action == "StopTransaction":
                return {}
        return None

    # --- upstream connection -----------------------------------------------------------------

    def upstream_connected(self, now: float) -> list[RelayEvent]:
        """A new upstream websocket is open: replay, then forward what waits, in order."""
        self.upstream = self._endpoint()
        self.state = UpstreamState.ONLINE
        self._pump_up(now)
        return []

    def upstream_failed(self, now: float) -> list[RelayEvent]:
        """The first upstream attempt failed: the policy decides for what waits."""
        if self.state is UpstreamState.CONNECTING:
            return self._go_offline(now)
        return []

    def upstream_lost(self, now: float) -> list[RelayEvent]:
        """The upstream websocket is gone (or its first attempt failed)."""
        if self.state is UpstreamState.OFFLINE:
            return []
        self.upstream.close()
        if self._up_pending is not None:
            # On the wire, unanswered: it goes again (a replay) or is answered below.
            self._up.appendleft(self._up_pending[1])
            self._up_pending = None
        # The CSMS's CALLs on their way to the charger: their answers have nobody to go to.
        return self._go_offline(now)

    def _go_offline(self, now: float) -> list[RelayEvent]:
        self.state = UpstreamState.OFFLINE
        out: list[RelayEvent] = []
        if self.policy is UpstreamPolicy.STRICT:
            out.append(CloseCharger(1011, "the CSMS is unreachable"))
            return out
        waiting = [u for u in self._up if u.charger_id is not None]
        self._up = deque(u for u in self._up if u.charger_id is None)
        for upward in waiting:
            assert upward.charger_id is not None
            call = ocppj.Call(upward.charger_id, upward.action, upward.payload)
            self._charger_follow(self._offline(call, out), now, out)
        return out

    # --- time and the end --------------------------------------------------------------------

    def timeout(self, now: float) -> list[RelayEvent]:
        out: list[RelayEvent] = []
        for event in self.downstream.timeout(now):
            if isinstance(event, ocppj.CallTimedOut):
                self._charger_answer(event, now, out)
        if self.state is UpstreamState.ONLINE:
            self._csms_calls(self.upstream.timeout(now), now, out)
        return out

    @property
    def replays_pending(self) -> bool:
        """Something the CSMS has not heard yet is queued or on its way."""
        return bool(self._replays())

    def adopt(self, previous: Relay) -> None:
        """Take over what an earlier connection of the same charger still had to replay
        (ahead of anything of ours) and its transaction ids; `previous` is left with none."""
        self._up.extendleft(reversed(previous._replays()))
        self.transaction_ids.update(previous.transaction_ids)
        self._next_tx = max(self._next_tx, previous._next_tx)
        self.csms_profiles = previous.csms_profiles
        previous._up.clear()
        previous._up_pending = None
        self.revision += 1

    def charger_closed(self) -> list[OurAnswer]:
        """The charger's websocket is gone: our CALLs are aborted; the relay is done."""
        return [
            OurAnswer(event)
            for event in self.downstream.close()
            if isinstance(event, ocppj.CallAborted)
        ]
