"""``python -m bench ocpp``: OCPP message throughput of the bridge against a plain `ocpp` CSMS.

Baseline: a CSMS written in a few lines with the `ocpp` library's defaults, every route
validated (bench/_ocpp_server.py ``baseline``). Ours: `ocpp_bridge.CentralSystem` at security
profile 1 with the agent's event handling attached, every inbound message still validated
against the same schema files (compiled with fastjsonschema).

Load: N simulated chargers (default 500; half 1.6 sending MeterValues, half 2.0.1 sending
TransactionEvent Updated, each with 5 sampled values) in this process over raw websockets, closed
loop (one CALL outstanding per charger). Each server runs in its own process; its CPU is one
core, the load generator uses the other. Then 1,000 chargers connect and boot at once against
ours: time until all are booted, and the server's RSS with all of them connected.

Figures: messages/s, p50/p99 latency and peak RSS for both; the last line is
``ocpp_throughput_vs_baseline_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from bench._ocpp_server import PASSWORD
from bench.report import emit, percentile, ratio

ROOT = Path(__file__).resolve().parents[1]


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# Five sampled values per message; only the energy register changes between messages, so the
# rest is rendered once (the load generator must not be what limits the measurement).
_REST_16 = json.dumps(
    [
        {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "10.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "10.2", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "10.0", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
    ],
    separators=(",", ":"),
)[1:-1]
_REST_201 = json.dumps(
    [
        {"value": 7000, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
        {
            "value": 10.1,
            "measurand": "Current.Import",
            "phase": "L1",
            "unitOfMeasure": {"unit": "A"},
        },
        {
            "value": 10.2,
            "measurand": "Current.Import",
            "phase": "L2",
            "unitOfMeasure": {"unit": "A"},
        },
        {
            "value": 10.0,
            "measurand": "Current.Import",
            "phase": "L3",
            "unitOfMeasure": {"unit": "A"},
        },
    ],
    separators=(",", ":"),
)[1:-1]


def _sampled_16(wh: int) -> str:
    return (
        f'[{{"value":"{wh}","measurand":"Energy.Active.Import.Register","unit":"Wh"}},{_REST_16}]'
    )


def _sampled_201(wh: int) -> str:
    return (
        f'[{{"value":{wh},"measurand":"Energy.Active.Import.Register",'
        f'"unitOfMeasure":{{"unit":"Wh"}}}},{_REST_201}]'
    )


@dataclass
class LoadStats:
    latencies: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    measuring: bool = False


class Charger:
    """A load-generating charger: pre-built frames, no JSON parsing on the hot path."""

    def __init__(self, identity: str, version: str, ws: ClientConnection) -> None:
        self.identity = identity
        self.version = version
        self.ws = ws
        self.seq = 0
        self.wh = 1000

    async def _answer(self, message: str) -> None:
        # The bridge's own CALLs after boot: capabilities and the safe profile.
        frame = json.loads(message)
        if frame[2] == "SetChargingProfile":
            await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        elif frame[2] == "GetConfiguration":
            await self.ws.send(
                json.dumps([3, frame[1], {"configurationKey": [], "unknownKey": []}])
            )
        else:
            await self.ws.send(json.dumps([4, frame[1], "NotSupported", "", {}]))

    async def request(self, unique_id: str, frame: str) -> str:
        await self.ws.send(frame)
        prefix = f'[3,"{unique_id}"'
        error_prefix = f'[4,"{unique_id}"'
        while True:
            message = await self.ws.recv()
            assert isinstance(message, str)
            if message.startswith(prefix):
                return message
            if message.startswith(error_prefix):
                raise RuntimeError(f"{self.identity}: {message[:200]}")
            if message.startswith("[2"):
                await self._answer(message)

    async def boot(self) -> None:
        if self.version == "ocpp1.6":
            payload: dict[str, Any] = {"chargePointVendor": "Bench", "chargePointModel": "Load16"}
        else:
            payload = {
                "chargingStation": {"model": "Load201", "vendorName": "Bench"},
                "reason": "PowerUp",
            }
        await self.request("boot", json.dumps([2, "boot", "BootNotification", payload]))
        if self.version == "ocpp2.0.1":
            started = {
                "eventType": "Started",
                "timestamp": _stamp(),
                "triggerReason": "CablePluggedIn",
                "seqNo": 0,
                "transactionInfo": {"transactionId": f"T-{self.identity}"},
                "evse": {"id": 1, "connectorId": 1},
            }
            await self.request("start", json.dumps([2, "start", "TransactionEvent", started]))

    def next_frame(self, stamp: str) -> tuple[str, str]:
        self.seq += 1
        self.wh += 10
        unique_id = f"m{self.seq}"
        if self.version == "ocpp1.6":
            frame = (
                f'[2,"{unique_id}","MeterValues",{{"connectorId":1,"meterValue":'
                f'[{{"timestamp":"{stamp}","sampledValue":{_sampled_16(self.wh)}}}]}}]'
            )
        else:
            frame = (
                f'[2,"{unique_id}","TransactionEvent",{{"eventType":"Updated","timestamp":"{stamp}",'
                f'"triggerReason":"MeterValuePeriodic","seqNo":{self.seq},'
                f'"transactionInfo":{{"transactionId":"T-{self.identity}"}},'
                f'"evse":{{"id":1,"connectorId":1}},'
                f'"meterValue":[{{"timestamp":"{stamp}","sampledValue":{_sampled_201(self.wh)}}}]}}]'
            )
        return unique_id, frame

    async def closed_loop(self, stats: LoadStats, stop: asyncio.Event) -> None:
        stamp = _stamp()
        while not stop.is_set():
            unique_id, frame = self.next_frame(stamp)
            started = time.perf_counter()
            try:
                await self.request(unique_id, frame)
            except (RuntimeError, websockets.ConnectionClosed):
                stats.errors += 1
                return
            if stats.measuring:
                stats.completed += 1
                stats.latencies.append(time.perf_counter() - started)
            if self.seq % 50 == 0:
                stamp = _stamp()


def _auth(identity: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def connect_charger(port: int, index: int) -> Charger:
    identity = f"BENCH{index:04d}"
    version = "ocpp1.6" if index % 2 == 0 else "ocpp2.0.1"
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{identity}",
        subprotocols=[websockets.Subprotocol(version)],
        additional_headers=_auth(identity),
        compression=None,
        ping_interval=None,
        open_timeout=300,
        max_queue=None,
    )
    return Charger(identity, version, ws)


class ServerProcess:
    def __init__(self, kind: str, *args: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._ocpp_server", kind, "0", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss_bytes(self) -> int:
        return self._status("VmRSS:")

    def peak_rss_bytes(self) -> int:
        return self._status("VmHWM:")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Throughput:
    rate: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    cpu_ms_per_msg: float
    errors: int


async def measure_throughput(
    kind: str, chargers: int, warmup_s: float, duration_s: float
) -> Throughput:
    server = ServerProcess(kind)
    try:
        clients: list[Charger] = []
        for start in range(0, chargers, 100):  # connect in waves: this is not the storm test
            clients += await asyncio.gather(
                *(connect_charger(server.port, i) for i in range(start, min(chargers, start + 100)))
            )
        await asyncio.gather(*(c.boot() for c in clients))
        stats = LoadStats()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.closed_loop(stats, stop)) for c in clients]
        await asyncio.sleep(warmup_s)
        cpu_before = server.cpu_seconds()
        stats.measuring = True
        began = time.perf_counter()
        await asyncio.sleep(duration_s)
        stats.measuring = False
        elapsed = time.perf_counter() - began
        cpu = server.cpu_seconds() - cpu_before
        stop.set()
        await asyncio.gather(*tasks)
        peak = server.peak_rss_bytes()
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    finally:
        server.stop()
    latencies = stats.latencies or [float("nan")]
    return Throughput(
        rate=stats.completed / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        peak_rss_mb=peak / 2**20,
        cpu_ms_per_msg=cpu * 1000 / max(1, stats.completed),
        errors=stats.errors,
    )


@dataclass
class ConnectStorm:
    cold_s: float  # first contact after a start: every charger's password goes through scrypt
    warm_s: float  # all reconnect at once to the running process (verified passwords cached)
    rss_mb: float  # with all of them connected
    peak_rss_mb: float


async def measure_connect_storm(kind: str, chargers: int) -> ConnectStorm:
    """Seconds until `chargers` connecting at once are all booted, cold and warm; RSS."""
    server = ServerProcess(kind)

    async def connect_and_boot(index: int) -> Charger:
        charger = await connect_charger(server.port, index)
        await charger.boot()
        return charger

    async def storm() -> tuple[float, list[Charger]]:
        began = time.perf_counter()
        clients = await asyncio.gather(*(connect_and_boot(i) for i in range(chargers)))
        return time.perf_counter() - began, clients

    try:
        cold, clients = await storm()
        await asyncio.sleep(2.0)  # let post-boot profile traffic settle
        rss = server.rss_bytes() / 2**20
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
        await asyncio.sleep(1.0)
        warm, clients = await storm()
        peak = server.peak_rss_bytes() / 2**20
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    finally:
        server.stop()
    return ConnectStorm(cold, warm, rss, peak)


async def run(args: argparse.Namespace) -> None:
    results: dict[str, Throughput] = {}
    for kind in ("baseline", "bridge"):
        results[kind] = await measure_throughput(kind, args.chargers, args.warmup, args.duration)
    label = {"baseline": "baseline", "bridge": "ours"}
    emit("ocpp_chargers", args.chargers)
    for kind, figures in results.items():
        name = label[kind]
        emit(f"{name}_msgs_per_s", figures.rate)
        emit(f"{name}_latency_p50_ms", figures.p50_ms)
        emit(f"{name}_latency_p99_ms", figures.p99_ms)
        emit(f"{name}_server_cpu_ms_per_msg", figures.cpu_ms_per_msg)
        emit(f"{name}_peak_rss_mb", figures.peak_rss_mb)
        emit(f"{name}_errors", figures.errors)
    if args.connect:
        storm = await measure_connect_storm("bridge", args.connect)
        emit(f"ours_connect_boot_{args.connect}_cold_s", storm.cold_s)
        emit(f"ours_connect_boot_{args.connect}_warm_s", storm.warm_s)
        emit(f"ours_rss_{args.connect}_connected_mb", storm.rss_mb)
        emit(f"ours_peak_rss_{args.connect}_connect_mb", storm.peak_rss_mb)
    emit(
        "ocpp_throughput_vs_baseline_ratio",
        ratio(results["bridge"].rate, results["baseline"].rate),
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench ocpp", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chargers", type=int, default=500)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument(
        "--connect", type=int, default=1000, help="chargers in the connect storm (0: skip)"
    )
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))
