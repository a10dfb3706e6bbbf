"""The OCPP-J endpoint in memory: bad frames, the one-CALL-in-flight rule, ids and timeouts.

tests/integration/ocpp_bridge/test_bad_input.py sends the same bad frames to the listener over
a real socket; here they go straight into the endpoint the listener's connections use.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_bridge import ocppj
from ocpp_bridge.connection import CONNECTION_CLASSES, endpoint_for
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.ocppj import (
    Call,
    CallAborted,
    CallError,
    CallResult,
    CallTimedOut,
    CloseRequested,
    Endpoint,
    FrameRejected,
)
from tests.support.ocppj_frames import BAD_FRAMES

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201
VERSIONS = {"ocpp1.6": V16, "ocpp2.0.1": V201}


def bridge_endpoint(version: ProtocolVersion) -> Endpoint:
    return endpoint_for(CONNECTION_CLASSES[version])


@pytest.mark.parametrize(("subprotocol", "frame", "expected"), BAD_FRAMES)
def test_bad_frames_get_the_right_callerror(
    subprotocol: str, frame: str, expected: list[Any]
) -> None:
    endpoint = bridge_endpoint(VERSIONS[subprotocol])
    events = endpoint.receive(frame, 0.0)
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, FrameRejected)
    assert [4, rejected.unique_id, rejected.code] == expected
    assert endpoint.reject(rejected) == []
    (sent,) = endpoint.data_to_send()
    answer = json.loads(sent)
    assert answer[:3] == expected
    assert len(answer) == 5
    assert isinstance(answer[4], dict)
    # The endpoint keeps working: the next CALL is handed out.
    assert endpoint.receive('[2, "hb", "Heartbeat", {}]', 0.0) == [Call("hb", "Heartbeat", {})]


@pytest.mark.parametrize(
    ("version", "code"), [(V16, "FormatViolation"), (V201, "RpcFrameworkError")]
)
def test_binary_and_deeply_nested_frames_are_framework_errors(
    version: ProtocolVersion, code: str
) -> None:
    endpoint = bridge_endpoint(version)
    for frame in (b"\x00\x01binary", "[" * 100_000 + "]" * 100_000):
        (rejected,) = endpoint.receive(frame, 0.0)
        assert isinstance(rejected, FrameRejected)
        assert (rejected.unique_id, rejected.code) == ("-1", code)


def test_a_frame_above_the_limit_asks_for_close_1009_counting_utf8_bytes() -> None:
    endpoint = Endpoint(V16, max_frame_bytes=100)
    fits = json.dumps([2, "a", "Heartbeat", {"x": "y" * 60}])
    assert endpoint.receive(fits, 0.0) == [Call("a", "Heartbeat", {"x": "y" * 60})]
    # 40 characters, 120 bytes of UTF-8.
    wide = json.dumps([2, "b", "Heartbeat", {"x": "\u20ac" * 40}], ensure_ascii=False)
    assert len(wide) <= 100 < len(wide.encode())
    assert endpoint.receive(wide, 0.0) == [CloseRequested(1009, "frame too big")]
    assert endpoint.receive(b"x" * 101, 0.0) == [CloseRequested(1009, "frame too big")]


def test_the_validator_decides_before_a_call_is_handed_out() -> None:
    def refuse(action: str, payload: Any) -> None:
        error = ValueError("no")
        error.code = "PropertyConstraintViolation"  # type: ignore[attr-defined]
        error.description = f"{action} refused"  # type: ignore[attr-defined]
        raise error

    endpoint = Endpoint(V201, validate=refuse)
    (rejected,) = endpoint.receive('[2, "x", "Heartbeat", {}]', 0.0)
    assert isinstance(rejected, FrameRejected)
    assert rejected.code == "PropertyConstraintViolation"
    assert rejected.description == "Heartbeat refused"
    assert endpoint.answering is None


def test_a_validator_bug_is_not_turned_into_a_callerror() -> None:
    def broken(action: str, payload: Any) -> None:
        raise KeyError(action)

    with pytest.raises(KeyError):
        Endpoint(V16, validate=broken).receive('[2, "x", "Heartbeat", {}]', 0.0)


def test_our_calls_queue_behind_the_pending_one_and_answers_carry_its_action() -> None:
    endpoint = Endpoint(V201, id_prefix="csms-")
    first = endpoint.send_call("GetVariables", {"a": 1}, now=0.0, timeout_s=30)
    second = endpoint.send_call("Reset", {"type": "Immediate"}, now=1.0, timeout_s=30)
    assert (first, second) == ("csms-1", "csms-2")
    assert endpoint.data_to_send() == ['[2,"csms-1","GetVariables",{"a":1}]']
    assert endpoint.deadline == 30.0
    events = endpoint.receive('[3, "csms-1", {"ok": true}]', 5.0)
    assert events == [CallResult("csms-1", {"ok": True}, "GetVariables")]
    assert endpoint.data_to_send() == ['[2,"csms-2","Reset",{"type":"Immediate"}]']
    assert endpoint.deadline == 35.0  # counted from the moment it went out
    events = endpoint.receive('[4, "csms-2", "NotSupported", "no", {"k": 1}]', 6.0)
    assert events == [CallError("csms-2", "NotSupported", "no", {"k": 1}, "Reset")]
    assert endpoint.deadline is None


def test_a_malformed_answer_fails_the_call_and_late_answers_are_dropped() -> None:
    endpoint = Endpoint(V16)
    sent = endpoint.send_call("ClearCache", {}, now=0.0, timeout_s=10)
    assert endpoint.receive(json.dumps([3, sent, ["no"]]), 1.0) == [
        CallError(sent, "FormatViolation", "malformed response", {}, "ClearCache", True)
    ]
    late = endpoint.send_call("ClearCache", {}, now=2.0, timeout_s=10)
    assert endpoint.timeout(11.9) == []
    assert endpoint.timeout(12.0) == [CallTimedOut(late, "ClearCache")]
    assert endpoint.receive(json.dumps([3, late, {}]), 13.0) == []
    assert endpoint.dropped_responses == 1


def test_forwarded_ids_keep_their_value_and_never_collide_with_ours() -> None:
    endpoint = Endpoint(V16, id_prefix="fb-")
    assert endpoint.send_call("Reset", {}, now=0, timeout_s=5, unique_id="csms-77") == "csms-77"
    with pytest.raises(ocppj.IdCollision):
        endpoint.send_call("Reset", {}, now=0, timeout_s=5, unique_id="csms-77")
    with pytest.raises(ocppj.IdCollision):
        endpoint.send_call("Reset", {}, now=0, timeout_s=5, unique_id="fb-1")
    assert endpoint.send_call("Reset", {}, now=0, timeout_s=5) == "fb-1"


def test_the_peers_calls_are_handed_out_one_at_a_time_in_order() -> None:
    endpoint = Endpoint(V16, max_held_calls=2)
    assert endpoint.receive('[2, "a", "Heartbeat", {}]', 0) == [Call("a", "Heartbeat", {})]
    assert endpoint.receive('[2, "b", "Heartbeat", {}]', 0) == []
    assert endpoint.receive('[2, "c", "Heartbeat", {}]', 0) == []
    (refused,) = endpoint.receive('[2, "d", "Heartbeat", {}]', 0)
    assert isinstance(refused, FrameRejected)
    assert (refused.unique_id, refused.code) == ("d", "GenericError")
    assert endpoint.send_result("a", {}) == [Call("b", "Heartbeat", {})]
    assert endpoint.send_error("b", "InternalError", "x" * 300) == [Call("c", "Heartbeat", {})]
    assert endpoint.send_result("c", {}) == []
    frames = [json.loads(f) for f in endpoint.data_to_send()]
    assert [f[:2] for f in frames] == [[3, "a"], [4, "b"], [3, "c"]]
    assert len(frames[1][3]) == 255


def test_close_aborts_sent_and_queued_calls() -> None:
    endpoint = Endpoint(V16)
    ids = [endpoint.send_call("ClearCache", {}, now=0, timeout_s=5) for _ in range(3)]
    assert endpoint.close() == [CallAborted(i, "ClearCache") for i in ids]
    assert endpoint.deadline is None
    with pytest.raises(ocppj.EndpointClosed):
        endpoint.send_call("ClearCache", {}, now=0, timeout_s=5)
    assert endpoint.receive('[2, "a", "Heartbeat", {}]', 0) == []


# --- properties ------------------------------------------------------------------------------

peer_ids = st.sampled_from(["p1", "p2", "p3", "fb-1", "fb-2", "x"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("peer call"), peer_ids, st.sampled_from(["Heartbeat", "FooBar"])),
        st.tuples(st.just("answer"), st.booleans()),
        st.tuples(st.just("our call"), st.sampled_from([None, "csms-1", "fb-3", "p1"])),
        st.tuples(st.just("peer answers"), st.sampled_from(["result", "error", "malformed"])),
        st.tuples(st.just("peer answers unknown"), peer_ids | st.text(max_size=8)),
        st.tuples(st.just("time passes"), st.floats(0, 20)),
        st.tuples(st.just("garbage"), st.sampled_from(["[", '[9,"z"]', "{}", '[2,"q"]'])),
    ),
    max_size=60,
)


class Observer:
    """What a correct shell may rely on, checked after every step."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.ours_made: list[str] = []  # our CALLs in the order they were made
        self.ours_sent: list[str] = []  # ... and in the order they went out
        self.actions: dict[str, str] = {}
        self.on_wire: set[str] = set()
        self.ended: set[str] = set()
        self.peer_valid: list[str] = []  # the peer's handled CALLs in the order received
        self.peer_handed: list[str] = []
        self.peer_rejected: set[str] = set()
        self.handling: str | None = None

    def take(self, events: list[ocppj.Event]) -> None:
        for event in events:
            if isinstance(event, Call):
                assert self.handling is None, "a second CALL of the peer handed out"
                self.handling = event.unique_id
                self.peer_handed.append(event.unique_id)
            elif isinstance(event, CallResult | CallError | CallTimedOut):
                assert event.unique_id in self.on_wire
                assert event.action == self.actions[event.unique_id]
                self.on_wire.discard(event.unique_id)
                self.ended.add(event.unique_id)
            elif isinstance(event, FrameRejected):
                self.peer_rejected.add(event.unique_id)
        for frame in self.endpoint.data_to_send():
            message = json.loads(frame)
            if message[0] == ocppj.CALL:
                assert not self.on_wire, "a second CALL of ours on the wire"
                self.on_wire.add(message[1])
                self.ours_sent.append(message[1])
        assert len(self.on_wire) <= 1
        assert self.ours_sent == self.ours_made[: len(self.ours_sent)]
        assert self.peer_handed == self.peer_valid[: len(self.peer_handed)]
        pending = self.endpoint.pending_call
        assert (pending[0] if pending else None) == next(iter(self.on_wire), None)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_any_interleaving_keeps_ids_unique_one_call_per_direction_and_order(
    steps: list[tuple[Any, ...]],
) -> None:
    endpoint = Endpoint(V16, id_prefix="fb-", handled_actions={"Heartbeat"}, max_held_calls=3)
    seen = Observer(endpoint)
    now = 0.0
    for step in steps:
        kind = step[0]
        if kind == "peer call":
            unique_id, action = step[1], step[2]
            before = endpoint.held_calls
            events = endpoint.receive(json.dumps([2, unique_id, action, {}]), now)
            # Held or handed out: either way it reaches the handler in order.
            if action == "Heartbeat" and (events or endpoint.held_calls > before):
                seen.peer_valid.append(unique_id)
            seen.take(events)
        elif kind == "answer":
            if seen.handling is not None:
                answered, seen.handling = seen.handling, None
                if step[1]:
                    seen.take(endpoint.send_result(answered, {}))
                else:
                    seen.take(endpoint.send_error(answered, "InternalError", "x"))
        elif kind == "our call":
            forwarded = step[1]
            in_use = seen.on_wire | set(seen.ours_made[len(seen.ours_sent) :])
            try:
                made = endpoint.send_call("Reset", {}, now=now, timeout_s=10, unique_id=forwarded)
            except ocppj.IdCollision:
                assert forwarded is not None
                assert forwarded.startswith("fb-") or forwarded in in_use
                continue
            # Never an id in use, and ours never one a relay could forward.
            assert made not in in_use
            if forwarded is None:
                assert made.startswith("fb-")
                assert made not in seen.ours_made
            else:
                assert made == forwarded
                assert not made.startswith("fb-")
            seen.ours_made.append(made)
            seen.actions[made] = "Reset"
            seen.take([])
        elif kind == "peer answers":
            pending = endpoint.pending_call
            if pending is not None:
                frame = {
                    "result": [3, pending[0], {}],
                    "error": [4, pending[0], "GenericError", "", {}],
                    "malformed": [3, pending[0]],
                }[step[1]]
                events = endpoint.receive(json.dumps(frame), now)
                assert len(events) == 1
                seen.take(events)
        elif kind == "peer answers unknown":
            unique_id = step[1]
            pending = endpoint.pending_call
            if pending is not None and pending[0] == unique_id:
                continue
            dropped = endpoint.dropped_responses
            state = (pending, endpoint.queued_calls, endpoint.answering, endpoint.held_calls)
            assert endpoint.receive(json.dumps([3, unique_id, {}]), now) == []
            assert endpoint.data_to_send() == []
            assert endpoint.dropped_responses == dropped + 1
            after = (
                endpoint.pending_call,
                endpoint.queued_calls,
                endpoint.answering,
                endpoint.held_calls,
            )
            assert after == state
        elif kind == "time passes":
            now += step[1]
            seen.take(endpoint.timeout(now))
        else:
            events = endpoint.receive(step[1], now)
            assert all(isinstance(e, FrameRejected) for e in events)
            seen.take(events)
    # Every CALL of ours made was sent or is still queued behind the one on the wire.
    assert len(seen.ours_sent) + endpoint.queued_calls == len(seen.ours_made)
