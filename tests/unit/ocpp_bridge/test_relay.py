"""Local-controller routing (`ocpp_bridge.relay`): examples, then any interleaving.

The peers here are scripted: a charger that answers the CALLs it got in order and a CSMS that
does the same; both record every frame the relay wrote them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_bridge import schemas
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.relay import (
    AnsweredLocally,
    CloseCharger,
    FollowUp,
    OurAnswer,
    Relay,
    RelayEvent,
    UpstreamPolicy,
    UpstreamState,
)

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201


def clock() -> datetime:
    return datetime(2026, 12, 2, 4, 0, 0, 123000, tzinfo=UTC)


def call(unique_id: str, action: str, payload: dict[str, Any] | None = None) -> str:
    return json.dumps([2, unique_id, action, payload or {}])


def result(unique_id: str, payload: dict[str, Any] | None = None) -> str:
    return json.dumps([3, unique_id, payload or {}])


def frames(raw: list[str]) -> list[list[Any]]:
    return [json.loads(frame) for frame in raw]


def online(version: ProtocolVersion = V16, **kwargs: Any) -> Relay:
    relay = Relay(version, clock=clock, **kwargs)
    relay.upstream_connected(0.0)
    return relay


def test_charger_call_goes_upstream_under_its_id_and_the_answer_comes_back() -> None:
    relay = online()
    relay.from_charger(call("c1", "Heartbeat"), 0.0)
    assert frames(relay.to_csms()) == [[2, "c1", "Heartbeat", {}]]
    assert relay.to_charger() == []
    relay.from_csms(result("c1", {"currentTime": "2026-12-02T04:00:00Z"}), 0.1)
    assert frames(relay.to_charger()) == [[3, "c1", {"currentTime": "2026-12-02T04:00:00Z"}]]


def test_the_charger_waits_while_the_first_upstream_connection_opens() -> None:
    relay = Relay(V16, clock=clock)
    relay.from_charger(call("b1", "BootNotification", {"chargePointVendor": "V"}), 0.0)
    assert relay.to_charger() == []
    assert relay.to_csms() == []
    relay.upstream_connected(1.0)
    assert frames(relay.to_csms()) == [[2, "b1", "BootNotification", {"chargePointVendor": "V"}]]


def test_csms_call_goes_down_under_its_id_and_ours_queue_behind_it() -> None:
    relay = online()
    relay.from_csms(call("s1", "Reset", {"type": "Soft"}), 0.0)
    ours = relay.send_our_call("SetChargingProfile", {"connectorId": 0}, 0.0)
    assert frames(relay.to_charger()) == [[2, "s1", "Reset", {"type": "Soft"}]]
    relay.from_charger(result("s1", {"status": "Accepted"}), 0.1)
    assert frames(relay.to_csms()) == [[3, "s1", {"status": "Accepted"}]]
    assert frames(relay.to_charger()) == [[2, ours, "SetChargingProfile", {"connectorId": 0}]]
    events = relay.from_charger(result(ours, {"status": "Accepted"}), 0.2)
    assert [type(e) for e in events] == [OurAnswer]
    assert relay.to_csms() == []


def test_a_csms_id_that_looks_like_ours_is_renamed_downstream_and_restored_upstream() -> None:
    relay = online()
    relay.from_csms(call("fb-1", "Reset", {"type": "Hard"}), 0.0)
    [[_, down_id, *_]] = frames(relay.to_charger())
    assert not down_id.startswith("fb-")
    relay.from_charger(result(down_id, {"status": "Accepted"}), 0.1)
    assert frames(relay.to_csms()) == [[3, "fb-1", {"status": "Accepted"}]]


def test_follow_up_to_our_request_is_answered_here() -> None:
    relay = online(V201)
    request_id = relay.new_request_id()
    ours = relay.send_our_call("GetChargingProfiles", {"requestId": request_id}, 0.0)
    relay.to_charger()
    relay.from_charger(result(ours, {"status": "Accepted"}), 0.1)
    events = relay.from_charger(
        call("r1", "ReportChargingProfiles", {"requestId": request_id, "tbc": False}), 0.2
    )
    assert [type(e) for e in events] == [FollowUp]
    assert frames(relay.to_charger()) == [[3, "r1", {}]]
    assert relay.to_csms() == []
    # The CSMS's own request with another id is the CSMS's business.
    relay.from_charger(call("r2", "ReportChargingProfiles", {"requestId": 7, "tbc": False}), 0.3)
    assert frames(relay.to_csms())[0][1] == "r2"


def test_follow_ups_held_behind_a_forwarded_call_stay_here_even_repeated() -> None:
    relay = online(V201)
    request_id = relay.new_request_id()
    relay.send_our_call("GetChargingProfiles", {"requestId": request_id}, 0.0)
    relay.from_charger(call("c1", "Heartbeat"), 0.0)
    final = {"requestId": request_id, "tbc": False}
    relay.from_charger(call("f1", "ReportChargingProfiles", final), 0.1)
    relay.from_charger(call("f2", "ReportChargingProfiles", final), 0.2)
    relay.from_csms(result("c1", {"currentTime": "2026-12-02T04:00:00Z"}), 0.3)
    assert [m[1] for m in frames(relay.to_csms()) if m[0] == 2] == ["c1"]
    answered = [m[1] for m in frames(relay.to_charger()) if m[0] == 3]
    assert answered == ["c1", "f1", "f2"]


def test_strict_closes_the_charger_on_upstream_loss() -> None:
    relay = online(policy=UpstreamPolicy.STRICT)
    relay.from_charger(call("c1", "Heartbeat"), 0.0)
    events = relay.upstream_lost(0.5)
    assert any(isinstance(e, CloseCharger) for e in events)


def test_autonomous_answers_locally_and_replays_with_the_csms_transaction_id() -> None:
    relay = online()
    relay.from_charger(call("b1", "BootNotification", {"chargePointVendor": "V"}), 0.0)
    relay.from_csms(result("b1", {"status": "Accepted"}), 0.0)
    relay.to_charger(), relay.to_csms()
    relay.upstream_lost(1.0)
    start = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "x"}
    events = relay.from_charger(call("c2", "StartTransaction", start), 1.1)
    [local] = [e for e in events if isinstance(e, AnsweredLocally)]
    local_tx = local.payload["transactionId"]
    assert frames(relay.to_charger()) == [[3, "c2", local.payload]]
    relay.from_charger(call("c3", "Heartbeat"), 1.2)
    relay.from_charger(call("c4", "MeterValues", {"transactionId": local_tx, "x": 1}), 1.3)
    relay.from_charger(call("c5", "StopTransaction", {"transactionId": local_tx}), 1.4)
    assert len(relay.to_charger()) == 3
    assert relay.to_csms() == []
    relay.upstream_connected(2.0)
    # The boot was forwarded on the earlier connection and is not replayed: Start first.
    [[_, rid, action, payload]] = frames(relay.to_csms())
    assert (action, payload) == ("StartTransaction", start)
    relay.from_csms(result(rid, {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}), 2.1)
    assert relay.to_charger() == []  # the charger heard its answer long ago
    [[_, rid, action, payload]] = frames(relay.to_csms())
    assert (action, payload) == ("MeterValues", {"transactionId": 77, "x": 1})
    relay.from_csms(result(rid), 2.2)
    [[_, rid, action, payload]] = frames(relay.to_csms())
    assert (action, payload) == ("StopTransaction", {"transactionId": 77})
    # Live messages about the transaction also carry the CSMS's id.
    relay.from_csms(result(rid), 2.3)
    relay.from_charger(call("c6", "MeterValues", {"transactionId": local_tx}), 2.4)
    assert frames(relay.to_csms()) == [[2, "c6", "MeterValues", {"transactionId": 77}]]


def test_first_attempt_failing_in_autonomous_answers_the_waiting_boot() -> None:
    relay = Relay(V201, clock=clock)
    relay.from_charger(call("b1", "BootNotification", {"reason": "PowerUp"}), 0.0)
    relay.upstream_failed(5.0)
    [[kind, unique_id, payload]] = frames(relay.to_charger())
    assert (kind, unique_id, payload["status"]) == (3, "b1", "Accepted")
    assert payload["currentTime"] == "2026-12-02T04:00:00.123Z"
    relay.upstream_connected(9.0)
    [[_, _, action, _]] = frames(relay.to_csms())
    assert action == "BootNotification"


def test_replayed_transaction_events_are_marked_offline() -> None:
    relay = online(V201)
    relay.upstream_lost(0.0)
    event = {"eventType": "Started", "seqNo": 0, "transactionInfo": {"transactionId": "T1"}}
    relay.from_charger(call("t1", "TransactionEvent", event), 0.1)
    relay.from_charger(call("s1", "StatusNotification", {"connectorStatus": "Occupied"}), 0.2)
    assert [m[:2] for m in frames(relay.to_charger())] == [[3, "t1"], [3, "s1"]]
    relay.upstream_connected(1.0)
    [[_, _, action, payload]] = frames(relay.to_csms())
    assert (action, payload) == ("TransactionEvent", {**event, "offline": True})


def test_timed_out_upstream_answer_gives_the_charger_an_error() -> None:
    relay = online(call_timeout_s=5.0)
    relay.from_charger(call("c1", "Authorize", {"idTag": "A"}), 0.0)
    relay.to_csms()
    relay.timeout(5.0)
    [[kind, unique_id, code, *_]] = frames(relay.to_charger())
    assert (kind, unique_id, code) == (4, "c1", "GenericError")


# --- any interleaving ---------------------------------------------------------------------


@dataclass
class Peer:
    """Records what it got; answers the CALLs it got in order."""

    received: list[list[Any]] = field(default_factory=list)
    to_answer: list[str] = field(default_factory=list)

    def take(self, raw: list[str]) -> None:
        for message in frames(raw):
            self.received.append(message)
            if message[0] == 2:
                self.to_answer.append(message[1])


ACTIONS_16 = ["Heartbeat", "StatusNotification", "StartTransaction", "MeterValues", "Authorize"]

step = st.one_of(
    st.tuples(st.just("charger_call"), st.sampled_from(ACTIONS_16)),
    st.tuples(st.just("charger_answer"), st.booleans()),
    st.tuples(st.just("csms_call"), st.booleans()),
    st.tuples(st.just("csms_answer"), st.booleans()),
    st.tuples(st.just("our_call"), st.booleans()),
    st.tuples(st.just("follow_up"), st.booleans()),
    st.tuples(st.just("tick"), st.floats(0.0, 40.0)),
    st.tuples(st.just("lost"), st.booleans()),
    st.tuples(st.just("connected"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(step, max_size=60),
    st.sampled_from([UpstreamPolicy.AUTONOMOUS, UpstreamPolicy.STRICT]),
)
def test_any_interleaving_keeps_ids_order_and_our_answers_here(
    steps: list[tuple[str, Any]], policy: UpstreamPolicy
) -> None:
    relay = Relay(V16, clock=clock, policy=policy, call_timeout_s=30.0)
    relay.upstream_connected(0.0)
    charger, csms = Peer(), Peer()
    csms_sessions: list[list[list[Any]]] = [[]]
    now = 0.0
    sent_by_charger: list[str] = []
    sent_by_csms: list[str] = []
    our_ids: set[str] = set()
    follow_up_ids: set[str] = set()
    events: list[RelayEvent] = []
    closed = False

    def drain() -> None:
        charger.take(relay.to_charger())
        got = relay.to_csms()
        csms.take(got)
        csms_sessions[-1].extend(frames(got))

    for counter, (kind, arg) in enumerate(steps, 1):
        if closed:
            break
        if kind == "charger_call":
            unique_id = f"c{counter}"
            sent_by_charger.append(unique_id)
            payload: dict[str, Any] = {"seq": counter}
            if arg == "MeterValues":
                payload["transactionId"] = 2_000_000_000
            events += relay.from_charger(call(unique_id, arg, payload), now)
        elif kind == "charger_answer" and charger.to_answer:
            events += relay.from_charger(result(charger.to_answer.pop(0), {"ok": 1}), now)
        elif kind == "csms_call":
            unique_id = f"fb-s{counter}" if arg else f"s{counter}"
            if relay.state is UpstreamState.ONLINE:
                sent_by_csms.append(unique_id)
            events += relay.from_csms(call(unique_id, "Reset", {"seq": counter}), now)
        elif kind == "csms_answer" and csms.to_answer:
            answer = {"transactionId": counter} if arg else {}
            events += relay.from_csms(result(csms.to_answer.pop(0), answer), now)
        elif kind == "our_call":
            request_id = relay.new_request_id()
            our_ids.add(relay.send_our_call("GetChargingProfiles", {"requestId": request_id}, now))
        elif kind == "follow_up" and relay._our_requests:
            unique_id = f"f{counter}"
            follow_up_ids.add(unique_id)
            request_id = min(relay._our_requests)
            payload = {"requestId": request_id, "tbc": arg}
            events += relay.from_charger(call(unique_id, "ReportChargingProfiles", payload), now)
        elif kind == "tick":
            now += arg
            events += relay.timeout(now)
        elif kind == "lost":
            if relay.state is UpstreamState.ONLINE:
                csms.to_answer.clear()
                csms_sessions.append([])
            events += relay.upstream_lost(now)
        elif kind == "connected" and relay.state is not UpstreamState.ONLINE:
            events += relay.upstream_connected(now)
        drain()
        closed = any(isinstance(e, CloseCharger) for e in events)

    # Ids unique per direction: no CALL id twice on the charger's wire, nor on one CSMS session.
    down_calls = [m[1] for m in charger.received if m[0] == 2]
    assert len(down_calls) == len(set(down_calls))
    for session in csms_sessions:
        up_calls = [m[1] for m in session if m[0] == 2]
        assert len(up_calls) == len(set(up_calls))
    # No answer to our CALLs, and no follow-up to our requests, ever reaches the CSMS.
    up_answers = {m[1] for m in csms.received if m[0] in (3, 4)}
    assert not up_answers & our_ids
    up_call_ids = {m[1] for m in csms.received if m[0] == 2}
    assert not up_call_ids & follow_up_ids
    # Per-direction order: what was forwarded arrives in the order it was sent.
    forwarded_up = [m[1] for m in csms.received if m[0] == 2 and m[1] in sent_by_charger]
    assert forwarded_up == [i for i in sent_by_charger if i in forwarded_up]
    charger_saw = [m[3].get("seq") for m in charger.received if m[0] == 2 and m[2] == "Reset"]
    assert charger_saw == sorted(charger_saw)
    # Every CSMS answer upstream answers a CALL the CSMS sent, once.
    up_answer_list = [m[1] for m in csms.received if m[0] in (3, 4)]
    assert len(up_answer_list) == len(set(up_answer_list))
    assert set(up_answer_list) <= set(sent_by_csms)
    # The charger gets at most one answer per CALL, and only for CALLs it sent.
    down_answers = [m[1] for m in charger.received if m[0] in (3, 4)]
    assert len(down_answers) == len(set(down_answers))
    assert set(down_answers) <= set(sent_by_charger) | follow_up_ids
    # Our answers come back to us, never anywhere else.
    for event in events:
        if isinstance(event, OurAnswer):
            assert event.answer.unique_id in our_ids


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["StartTransaction", "MeterValues", "StopTransaction"]), max_size=12)
)
def test_autonomous_replays_every_transaction_message_once_in_order(actions: list[str]) -> None:
    relay = Relay(V16, clock=clock)
    relay.upstream_connected(0.0)
    relay.upstream_lost(0.0)
    local_tx: int | None = None
    for seq, action in enumerate(actions):
        payload: dict[str, Any] = {"seq": seq}
        if action != "StartTransaction" and local_tx is not None:
            payload["transactionId"] = local_tx
        elif action != "StartTransaction":
            payload["transactionId"] = 5
        events = relay.from_charger(call(f"c{seq}", action, payload), 0.0)
        for event in events:
            if isinstance(event, AnsweredLocally) and action == "StartTransaction":
                local_tx = event.payload["transactionId"]
    assert len(frames(relay.to_charger())) == len(actions)
    relay.upstream_connected(1.0)
    seen: list[int] = []
    csms_tx = 500
    for _ in range(len(actions) + 1):
        got = frames(relay.to_csms())
        if not got:
            break
        [[_, unique_id, action, payload]] = got
        seen.append(payload["seq"])
        if payload.get("transactionId") is not None and payload["transactionId"] >= 2_000_000_000:
            pytest.fail(f"local transaction id reached the CSMS: {payload}")
        csms_tx += 1
        answer = {"transactionId": csms_tx} if action == "StartTransaction" else {}
        relay.from_csms(result(unique_id, answer), 1.0)
    assert seen == list(range(len(actions)))
    assert relay.to_charger() == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(["StartTransaction", "MeterValues", "StopTransaction"]), max_size=10),
    st.integers(0, 10),
)
def test_what_is_saved_replays_after_a_restart_as_it_would_have(
    actions: list[str], answered_before: int
) -> None:
    """A restart after some replays were answered: the rest goes out from the saved state, in
    order, with the CSMS's transaction ids, and the local ids are never given out again."""
    relay = Relay(V16, clock=clock)
    relay.upstream_connected(0.0)
    relay.upstream_lost(0.0)
    local_tx = 0
    for seq, action in enumerate(actions):
        payload: dict[str, Any] = {"seq": seq, "transactionId": local_tx}
        for event in relay.from_charger(call(f"c{seq}", action, payload), 0.0):
            if isinstance(event, AnsweredLocally) and action == "StartTransaction":
                local_tx = event.payload["transactionId"]
    relay.upstream_connected(1.0)
    seen: list[int] = []

    def answer_next(target: Relay) -> bool:
        got = frames(target.to_csms())
        if not got:
            return False
        [[_, unique_id, action, payload]] = got
        seen.append(payload["seq"])
        tx = 500 + len(seen)
        target.from_csms(
            result(unique_id, {"transactionId": tx} if action == "StartTransaction" else {}), 1.0
        )
        return True

    for _ in range(answered_before):
        if not answer_next(relay):
            break
    saved = json.loads(json.dumps(relay.durable_state()))
    restarted = Relay(V16, clock=clock)
    restarted.restore(saved)
    restarted.upstream_connected(2.0)
    while answer_next(restarted):
        pass
    assert seen == list(range(len(actions)))
    restarted.upstream_lost(3.0)
    new = restarted.from_charger(call("n1", "StartTransaction", {"seq": 99}), 3.0)
    [fresh] = [e.payload["transactionId"] for e in new if isinstance(e, AnsweredLocally)]
    assert fresh > local_tx >= 0


def test_a_validated_charger_call_goes_upstream_as_the_charger_wrote_it() -> None:
    """Validation (the schemas' `default`s, e.g. 2.0.1 unitOfMeasure.multiplier) must not add
    to what the CSMS gets: a real libocpp station's TransactionEvent showed up with
    ``"multiplier": 0`` the station never sent."""
    payload = {
        "eventType": "Updated",
        "timestamp": "2026-12-02T04:00:00Z",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 1,
        "transactionInfo": {"transactionId": "t1"},
        "meterValue": [
            {
                "timestamp": "2026-12-02T04:00:00Z",
                "sampledValue": [
                    {
                        "value": 9.7,
                        "measurand": "Energy.Active.Import.Register",
                        "unitOfMeasure": {"unit": "Wh"},
                    }
                ],
            }
        ],
    }
    relay = online(V201, validate=functools.partial(schemas.validate, V201, response=False))
    relay.from_charger(call("c1", "TransactionEvent", payload), 0.0)
    assert frames(relay.to_csms()) == [[2, "c1", "TransactionEvent", payload]]


def csms_profile(profile_id: int, limit_a: float) -> dict[str, Any]:
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": profile_id,
            "stackLevel": 5,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": "2026-12-02T00:00:00Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_a}],
            },
        },
    }


def csms_limit_w(relay: Relay) -> float | None:
    start = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    return relay.csms_profiles.limit_w(
        start, start.replace(hour=5), ElectricalData(phases=3, nominal_voltage_v=230.0)
    )


def test_the_csms_profiles_the_charger_accepted_are_kept_and_survive_a_restart() -> None:
    relay = online()
    relay.from_csms(call("s1", "SetChargingProfile", csms_profile(1, 10.0)), 0.0)
    relay.from_charger(result("s1", {"status": "Accepted"}), 0.1)
    assert frames(relay.to_csms()) == [[3, "s1", {"status": "Accepted"}]]
    assert csms_limit_w(relay) == 10 * 690.0
    # Refused by the charger: not in force.
    relay.from_csms(call("s2", "SetChargingProfile", csms_profile(2, 6.0)), 0.2)
    relay.from_charger(result("s2", {"status": "Rejected"}), 0.3)
    assert csms_limit_w(relay) == 10 * 690.0
    # Our own profiles are not the CSMS's.
    ours = relay.send_our_call("SetChargingProfile", csms_profile(9_000_201, 6.0), 0.4)
    relay.from_charger(result(ours, {"status": "Accepted"}), 0.5)
    assert csms_limit_w(relay) == 10 * 690.0
    saved = json.loads(json.dumps(relay.durable_state()))
    restarted = Relay(V16, clock=clock)
    restarted.restore(saved)
    assert csms_limit_w(restarted) == 10 * 690.0
    # A later connection of the charger keeps them too.
    following = Relay(V16, clock=clock)
    following.adopt(restarted)
    assert csms_limit_w(following) == 10 * 690.0
    following.upstream_connected(1.0)
    following.from_csms(call("s3", "ClearChargingProfile", {"id": 1}), 1.0)
    following.from_charger(result("s3", {"status": "Accepted"}), 1.1)
    assert csms_limit_w(following) is None


def test_a_csms_profile_accepted_after_the_csms_went_away_is_still_in_force() -> None:
    relay = online()
    relay.from_csms(call("s1", "SetChargingProfile", csms_profile(1, 8.0)), 0.0)
    relay.upstream_lost(0.1)
    relay.from_charger(result("s1", {"status": "Accepted"}), 0.2)
    assert relay.to_csms() == []
    assert csms_limit_w(relay) == 8 * 690.0
