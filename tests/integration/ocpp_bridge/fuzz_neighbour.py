"""The well-behaved charger beside the frame fuzzer, in a process of its own.

GOOD boots (1.6) and then sends Heartbeat and MeterValues alternately every 60 ms (under the
bridge's default budget of 20 messages per second), timing each round trip. Its own process
keeps the fuzzer's work (building and masking 10 MB frames holds the GIL for milliseconds)
out of what it measures. Each round trip is appended to SAMPLES as ``<monotonic start>
<seconds> <seconds waited for a CPU>``: CLOCK_MONOTONIC is the same clock in every process,
and the last figure is how long this process and the listener (LISTENER_PID) were runnable but
not running during the round trip (the kernel's run-queue delay, /proc/PID/schedstat): time the
machine's scheduler took, not the bridge. It stops when stdin closes.

    python -m tests.integration.ocpp_bridge.fuzz_neighbour URL SAMPLES LISTENER_PID
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ocpp_bridge.simulator import basic_auth_header
from tests.integration.ocpp_bridge.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[3]


def start_helper(
    module: str, *args: str, stdout: IO[str] | int, stderr: IO[str] | int
) -> subprocess.Popen[str]:
    """`python -m tests.integration.ocpp_bridge.<module> ARGS` from the repository root, with
    a pipe on stdin (how the listener and the neighbour are told to stop)."""
    return subprocess.Popen(
        [sys.executable, "-m", f"tests.integration.ocpp_bridge.{module}", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@dataclass(frozen=True)
class RoundTrip:
    """One line of SAMPLES."""

    at: float  # monotonic start
    seconds: float
    scheduler_s: float  # of which the neighbour or the listener waited for a CPU

    @property
    def bridge_s(self) -> float:
        """The round trip without the time the machine's scheduler held either process."""
        return max(0.0, self.seconds - self.scheduler_s)


def read_samples(path: Path) -> list[RoundTrip]:
    """The round trips written so far (a line being written is skipped)."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return [RoundTrip(*map(float, row)) for row in rows if len(row) == 3]


async def open_charger(url: str, identity: str, version: str) -> ClientConnection:
    return await connect(
        f"{url}/{identity}",
        subprotocols=[websockets.Subprotocol(version)],
        additional_headers=basic_auth_header(identity, PASSWORD),
        compression=None,
        max_size=None,
        open_timeout=30,
        # No pings: websockets draws their payload from `random`, which hypothesis forbids
        # while it generates in the fuzzer's process.
        ping_interval=None,
    )


async def closed_with(ws: ClientConnection) -> int | None:
    """Wait (up to 15 s a frame) until the bridge closes the connection; the code of the close
    frame it sent, None if it sent none. Its own CALLs on the way are dropped."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    received = ws.protocol.close_rcvd
    return None if received is None else received.code


async def close_charger(ws: ClientConnection) -> None:
    if ws.transport.is_closing():
        # Closed by the bridge: close() would abort a transport already closed, which
        # CPython 3.11's selector transport turns into an AttributeError (client side).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 15)
    else:
        await ws.close()


def answer_to_bridge(call: list[Any]) -> list[Any]:
    """What the chargers answer the bridge's own CALLs (set-up and profiles): all is fine."""
    unique_id, action = call[1], call[2]
    if action == "GetConfiguration":
        return [3, unique_id, {"configurationKey": []}]
    if action == "GetVariables":
        unknown = {
            "attributeStatus": "UnknownVariable",
            "component": {"name": "SmartChargingCtrlr"},
            "variable": {"name": "RateUnit"},
        }
        return [3, unique_id, {"getVariableResult": [unknown]}]
    if action in ("SetChargingProfile", "ClearChargingProfile"):
        return [3, unique_id, {"status": "Accepted"}]
    return [4, unique_id, "NotSupported", "", {}]


async def next_answer(ws: ClientConnection, timeout_s: float = 15) -> Any:
    """The next CALLRESULT/CALLERROR; the bridge's own CALLs are answered on the way."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if frame[0] == 2:
            await ws.send(json.dumps(answer_to_bridge(frame)))
            continue
        return frame


def _next_call(n: int) -> list[Any]:
    if n % 2 == 0:
        return [2, f"h{n}", "Heartbeat", {}]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sampled = [{"value": str(1000 + n), "measurand": "Energy.Active.Import.Register"}]
    payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": sampled}]}
    return [2, f"m{n}", "MeterValues", payload]


def run_queue_wait_s(pid: int | str) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


async def charge(url: str, samples: Path, listener_pid: int) -> None:
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    ws = await open_charger(url, "GOOD", "ocpp1.6")
    boot = {"chargePointVendor": "flexbridge", "chargePointModel": "neighbour"}
    await ws.send(json.dumps([2, "boot", "BootNotification", boot]))
    answer = await next_answer(ws)
    assert answer[0] == 3, answer
    with samples.open("a", buffering=1) as out:
        for n in itertools.count():
            if stop.done():
                break
            call = _next_call(n)
            waited = run_queue_wait_s("self") + run_queue_wait_s(listener_pid)
            started = time.monotonic()
            await ws.send(json.dumps(call))
            answer = await next_answer(ws)
            rtt = time.monotonic() - started
            waited = run_queue_wait_s("self") + run_queue_wait_s(listener_pid) - waited
            out.write(f"{started} {rtt} {waited}\n")
            assert answer[:2] == [3, call[1]], answer
            await asyncio.sleep(0.06)
    await ws.close()


if __name__ == "__main__":
    asyncio.run(charge(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
