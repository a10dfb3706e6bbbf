"""A hostile charger's responses and malformed frames, against one connection in process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from ocpp.exceptions import FormatViolationError

from ocpp_bridge.connection import ChargerOfflineError, Connection
from ocpp_bridge.events import ProtocolVersion
from tests.unit.ocpp_bridge.fakes import connection_for

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201
FRAMEWORK_ERROR = {V16: "FormatViolation", V201: "RpcFrameworkError"}


async def test_unsolicited_responses_are_dropped_and_counted() -> None:
    connection, socket = connection_for(V16)
    for i in range(5_000):
        await connection.route_message(json.dumps([3, f"nobody-{i}", {}]))
        await connection.route_message(json.dumps([4, f"nobody-{i}", "GenericError", "", {}]))
        await connection.route_message(json.dumps([3, f"bad-{i}", "not an object"]))
    assert connection.endpoint.pending_call is None
    assert connection.unsolicited_responses == 15_000
    assert socket.sent == []  # OCPP-J has no answer to a response
    assert connection.problems.counts["late or unknown response"] == 15_000


async def test_the_pending_call_gets_its_answer_once_and_a_duplicate_is_dropped() -> None:
    connection, socket = connection_for(V16)
    call = asyncio.create_task(connection.call_raw("GetConfiguration", {}))
    await socket.until_sent(1)
    mine = socket.sent[0][1]
    assert socket.sent == [[2, mine, "GetConfiguration", {}]]
    await connection.route_message(json.dumps([3, "other", {}]))
    await connection.route_message(json.dumps([3, mine, {"configurationKey": []}]))
    await connection.route_message(json.dumps([3, mine, {"unknownKey": ["x"]}]))
    assert await call == {"configurationKey": []}
    assert connection.unsolicited_responses == 2
    assert len(socket.sent) == 1


async def test_a_malformed_answer_to_the_pending_call_fails_it_at_once() -> None:
    connection, socket = connection_for(V201)
    call = asyncio.create_task(connection.call_raw("Reset", {"type": "Immediate"}))
    await socket.until_sent(1)
    await connection.route_message(json.dumps([3, socket.sent[0][1], ["not", "an", "object"]]))
    with pytest.raises(FormatViolationError):
        await call
    assert connection.problems.counts["malformed response"] == 1


async def test_calls_go_out_one_at_a_time_in_order_and_a_timeout_releases_the_next() -> None:
    connection, socket = connection_for(V16)
    first = asyncio.create_task(connection.call_raw("GetConfiguration", {}, timeout_s=0.01))
    second = asyncio.create_task(connection.call_raw("ClearCache", {}))
    await socket.until_sent(1)
    await asyncio.sleep(0)
    assert [f[2] for f in socket.sent] == ["GetConfiguration"]
    with pytest.raises(TimeoutError):
        await first
    await socket.until_sent(2)
    assert socket.sent[1][2] == "ClearCache"
    # The late answer to the first is dropped; the second gets its own.
    await connection.route_message(json.dumps([3, socket.sent[0][1], {"configurationKey": []}]))
    await connection.route_message(json.dumps([3, socket.sent[1][1], {"status": "Accepted"}]))
    assert await second == {"status": "Accepted"}
    assert connection.unsolicited_responses == 1


async def test_a_lost_connection_fails_sent_and_queued_calls_at_once() -> None:
    connection, socket = connection_for(V16)
    calls = [asyncio.create_task(connection.call_raw("ClearCache", {})) for _ in range(3)]
    await socket.until_sent(1)
    connection.connection_lost()
    for call in calls:
        with pytest.raises(ChargerOfflineError):
            await call
    assert len(socket.sent) == 1
    with pytest.raises(ChargerOfflineError):
        await connection.call_raw("ClearCache", {})


async def test_a_stream_of_unsolicited_responses_is_a_flood() -> None:
    connection, socket = connection_for(V16, max_calls_per_s=0.001, call_burst=10)
    for i in range(10 + Connection.FLOOD_CLOSE_AFTER):
        await connection.route_message(json.dumps([3, f"u{i}", {}]))
    await asyncio.sleep(0)  # the close runs in its own task
    assert socket.closed_with == (1008, "message flood")
    assert socket.sent == []
    assert connection.endpoint.pending_call is None


async def test_garbage_takes_from_the_same_budget_as_calls() -> None:
    connection, socket = connection_for(V201, max_calls_per_s=0.001, call_burst=3)
    for _ in range(5):
        await connection.route_message("not json")
    assert [f[2] for f in socket.sent] == ["RpcFrameworkError"] * 3 + ["GenericError"] * 2


@pytest.mark.parametrize("version", [V16, V201])
async def test_deep_nesting_gets_a_callerror_not_a_crash(version: ProtocolVersion) -> None:
    connection, socket = connection_for(version)
    await connection.route_message("[" * 100_000 + "]" * 100_000)
    # Deep enough to parse, too deep to convert (2.0.1 customData takes any JSON).
    deep: Any = {}
    for _ in range(900):
        deep = {"a": deep}
    payload = {"customData": {"vendorId": "v", "x": deep}}
    await connection.route_message(json.dumps([2, "deep", "Heartbeat", payload]))
    assert socket.sent[0][:3] == [4, "-1", FRAMEWORK_ERROR[version]]
    assert socket.sent[1][:2] == [4, "deep"]


async def test_error_descriptions_stay_within_255_characters() -> None:
    connection, socket = connection_for(V201)
    await connection.route_message(json.dumps([2, "long", "X" * 10_000, {}]))
    assert socket.sent[0][:3] == [4, "long", "NotImplemented"]
    assert len(socket.sent[0][3]) <= 255
