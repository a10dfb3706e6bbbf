"""A hostile charger on a real socket: traversal action names and unsolicited responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ocpp_bridge import schemas
from ocpp_bridge.connection import CONNECTION_CLASSES, handled_actions
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.settings import BridgeSettings, ChargerRecord
from tests.integration.ocpp_bridge.conftest import run_bridge, test_hash
from tests.integration.ocpp_bridge.test_bad_input import heartbeat_ok, open_ws, reply
from tests.support.opened_files import outside, recording_opens

pytestmark = pytest.mark.integration

RECORDS = [ChargerRecord("BAD", test_hash()), ChargerRecord("GOOD", test_hash())]
VERSIONS = {"ocpp1.6": ProtocolVersion.OCPP16, "ocpp2.0.1": ProtocolVersion.OCPP201}


def traversal_names(version: ProtocolVersion, tmp_path: Path) -> list[str]:
    """Names that lead from the package's schema folder to schema files an attacker planted."""
    planted = tmp_path / "x"
    planted.mkdir()
    for name in ("evil", "evilRequest", "evilResponse"):
        (planted / f"{name}.json").write_text('{"type": "object"}')
    target = planted / "evil"
    return [
        os.path.relpath(target, schemas.schema_dir(version)),
        "../" * 40 + str(target).lstrip("/"),
        str(target),
    ]


async def send_until_closed(ws: ClientConnection, frames: list[list[Any]]) -> int:
    """How many of `frames` went out (50 every 50 ms) before the bridge closed the connection.

    The pace matters: 1,000 frames/s against a budget of 2/s means ~500 refusals between two
    tokens the refilling bucket hands out; a flood counter that any granted frame resets never
    reaches FLOOD_CLOSE_AFTER.
    """
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        for frame in frames:
            await ws.send(json.dumps(frame))
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0.05)
    return sent


# 2 frames/s with a burst of 10 (the defaults are 20 and 200): a flood is seen in seconds.
FLOOD_SETTINGS = BridgeSettings(host="127.0.0.1", port=0, max_calls_per_s=2, call_burst=10)


@pytest.mark.parametrize("subprotocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_traversal_action_names_open_nothing_and_get_not_implemented(
    subprotocol: str, tmp_path: Path
) -> None:
    version = VERSIONS[subprotocol]
    names = traversal_names(version, tmp_path)
    async with run_bridge(records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", subprotocol)
        with recording_opens() as opened:
            answers = []
            for i, name in enumerate(names):
                await bad.send(json.dumps([2, f"t{i}", name, {}]))
                answers.append(await reply(bad))
        assert [a[:3] for a in answers] == [[4, f"t{i}", "NotImplemented"] for i in range(3)]
        assert [path for path in opened if str(tmp_path) in path] == []
        assert outside(opened, [schemas.schema_dir(version)]) == []
        assert await heartbeat_ok(bad)
        await bad.close()


async def test_unsolicited_responses_are_dropped_counted_and_a_stream_is_a_flood() -> None:
    async with run_bridge(FLOOD_SETTINGS, records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp1.6")
        good = await open_ws(bridge.url, "GOOD", "ocpp1.6")
        assert await heartbeat_ok(good)
        unsolicited: list[list[Any]] = [
            [3, f"nobody-{i}", {}] if i % 2 else [4, f"nobody-{i}", "GenericError", "", {}]
            for i in range(5_000)
        ]
        sent = await send_until_closed(bad, unsolicited)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(bad.recv(), 10)
        # Burst, then FLOOD_CLOSE_AFTER refusals in a row: closed as a flood, never answered.
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        counted = bridge.system.unsolicited_responses()["BAD"]
        assert 10 + 1000 <= counted <= sent < 5_000
        assert bridge.system._chargers["BAD"].connection is None
        assert await heartbeat_ok(good)
        await good.close()


async def test_within_budget_the_queue_stays_empty_and_a_real_answer_still_arrives() -> None:
    settings = BridgeSettings(host="127.0.0.1", port=0, max_calls_per_s=1e6, call_burst=10**6)
    async with run_bridge(settings, records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp2.0.1")
        for i in range(3_000):
            await bad.send(json.dumps([3, f"nobody-{i}", {"status": "Accepted"}]))
        await bad.send(json.dumps([2, "hb", "Heartbeat", {}]))
        # The heartbeat makes the bridge set the charger up: it asks for its variables.
        connection = bridge.system._chargers["BAD"].connection
        assert connection is not None
        while True:
            frame = json.loads(await asyncio.wait_for(bad.recv(), 10))
            if frame[0] == 2 and frame[2] == "GetVariables":
                break
        # The noise answered nothing: the CALL is still pending.
        assert connection.endpoint.pending_call == (frame[1], "GetVariables")
        assert bridge.system.unsolicited_responses()["BAD"] == 3_000
        # More noise while the call is pending, then the answer: it is taken, the noise is not.
        for i in range(100):
            await bad.send(json.dumps([3, f"noise-{i}", {"getVariableResult": []}]))
        result = {
            "attributeStatus": "UnknownVariable",
            "component": {"name": "SmartChargingCtrlr"},
            "variable": {"name": "RateUnit"},
        }
        await bad.send(json.dumps([3, frame[1], {"getVariableResult": [result]}]))
        await bridge.log.wait_for(
            lambda: (
                connection.problems.counts.get("capabilities unreadable") is None
                and bridge.system.snapshot()[0].capabilities is not None
            ),
            what="capabilities read",
        )
        assert connection.endpoint.pending_call != (frame[1], "GetVariables")
        assert bridge.system.unsolicited_responses()["BAD"] == 3_100
        await bad.close()


async def test_a_fast_call_flood_is_closed_too() -> None:
    # A token earned now and then as the bucket refills used to reset the refusal count, so a
    # flood faster than the budget but steady was answered forever and never closed.
    async with run_bridge(FLOOD_SETTINGS, records=RECORDS) as bridge:
        bad = await open_ws(bridge.url, "BAD", "ocpp1.6")
        answers: list[Any] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    answers.append(json.loads(await bad.recv()))

        reader = asyncio.create_task(read())
        calls: list[list[Any]] = [[2, f"c{i}", "Heartbeat", {}] for i in range(5_000)]
        assert await send_until_closed(bad, calls) < 5_000
        await asyncio.wait_for(reader, 10)
        assert bad.close_code == 1008
        refused = [a for a in answers if a[0] == 4]
        assert len(refused) >= 1000
        assert {a[2] for a in refused} == {"GenericError"}


async def test_every_handled_action_is_compiled_before_the_first_charger() -> None:
    # Compiling a validator holds the event loop (up to ~75 ms here): a charger must not be
    # able to trigger that at will by sending an action for the first time.
    schemas._cache.clear()
    async with run_bridge(records=RECORDS):
        for version, connection_class in CONNECTION_CLASSES.items():
            for action in handled_actions(connection_class):
                for response in (False, True):
                    name = schemas.schema_name(version, action, response=response)
                    assert (version, name) in schemas._cache, name
