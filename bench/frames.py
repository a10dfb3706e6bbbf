"""``python -m bench frames``: a well-behaved charger's round trips beside a hostile one.

Baseline: the same charger, GOOD, on the same listener with nobody else connected. The
listener is `CentralSystem` with the agent's defaults in a process of its own, and GOOD keeps
its Heartbeat and MeterValues going every 60 ms from a third process, timing each round trip
less the time either process waited for a CPU (both as in the frame fuzzer test:
tests/integration/ocpp_bridge/fuzz_listener.py and fuzz_neighbour.py).

Load: a second charger, FUZZ, sends what costs the listener most per frame, paced just under
the per-charger CALL budget so every frame is read and parsed: frames just under the 256 KiB
limit (a huge DataTransfer, JSON nested 100,000 levels deep, 200 KB that is not JSON), and on
every other connection one 10 MB frame, which the listener must close (1009) without reading.

What it shows: one charger's frames must not hold the event loop that every other charger on
the site shares. Figures in ms; the last line is ``neighbour_p99_hostile_over_quiet``, GOOD's
p99 with FUZZ sending over its p99 alone (1.0: not affected at all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidState

from bench.report import emit, percentile
from tests.integration.ocpp_bridge.fuzz_neighbour import (
    close_charger,
    closed_with,
    next_answer,
    open_charger,
    read_samples,
    start_helper,
)

FRAME_LIMIT = 256 * 1024  # BridgeSettings.max_frame_bytes, the agent's default
PACE_S = 1 / 18  # under the default budget of 20 CALLs per second, so every frame is parsed
FRAMES_PER_CONNECTION = 12


def hostile_frames() -> list[tuple[str, str]]:
    """(kind, text) of each frame FUZZ cycles through; each under the frame limit."""
    bulk = "x" * (FRAME_LIMIT - 1_000)
    depth = 100_000
    return [
        ("huge_payload", json.dumps([2, "h", "DataTransfer", {"vendorId": "v", "data": bulk}])),
        ("deep_lists", "[" * depth + "]" * depth),
        (
            "deep_payload",
            '[2,"d","DataTransfer",{"vendorId":"v","data":' + "[" * depth + "]" * depth + "}]",
        ),
        ("not_json", "{" + bulk[:200_000]),
    ]


async def _drain_answers(ws: ClientConnection, until_id: str) -> int:
    answers = 0
    while True:
        answer = await next_answer(ws)
        answers += 1
        if answer[1] == until_id:
            return answers


async def hostile(url: str, duration_s: float) -> Counter[str]:
    """FUZZ's load for `duration_s`; returns what it sent and what came back."""
    frames = hostile_frames()
    sent: Counter[str] = Counter()
    oversized = "x" * (10 * 2**20)
    deadline = time.monotonic() + duration_s
    connection = 0
    while time.monotonic() < deadline:
        connection += 1
        ws = await open_charger(url, "FUZZ", "ocpp1.6")
        try:
            for n in range(FRAMES_PER_CONNECTION):
                kind, frame = frames[(connection + n) % len(frames)]
                await ws.send(frame)
                sent[kind] += 1
                await asyncio.sleep(PACE_S)
            await ws.send(json.dumps([2, "sentinel", "Heartbeat", {}]))
            sent["answers"] += await _drain_answers(ws, "sentinel")
            if connection % 2 == 0:
                with contextlib.suppress(InvalidState):
                    ws.protocol.send_text(oversized.encode())
                    ws.send_data()
                sent["oversized"] += 1
                code = await closed_with(ws)
                sent[f"closed_{code if code is not None else 'without_frame'}"] += 1
        finally:
            await close_charger(ws)
        await asyncio.sleep(PACE_S)
    sent["connections"] = connection
    return sent


def run(quiet_s: float, hostile_s: float) -> None:
    with TemporaryDirectory(prefix="bench-frames-") as tmp:
        samples = Path(tmp) / "neighbour.samples"
        samples.touch()
        with (
            (Path(tmp) / "listener.log").open("w") as listener_log,
            (Path(tmp) / "neighbour.log").open("w") as neighbour_log,
        ):
            listener = start_helper(
                "fuzz_listener", "FUZZ", "GOOD", stdout=subprocess.PIPE, stderr=listener_log
            )
            neighbour: subprocess.Popen[str] | None = None
            try:
                assert listener.stdout is not None
                line = listener.stdout.readline()
                if not line.startswith("PORT "):
                    raise SystemExit(f"the listener did not start: {line!r}")
                url = f"ws://127.0.0.1:{int(line.split()[1])}/ocpp"
                neighbour = start_helper(
                    "fuzz_neighbour",
                    url,
                    str(samples),
                    str(listener.pid),
                    stdout=neighbour_log,
                    stderr=neighbour_log,
                )
                time.sleep(2.0)  # boot and warm-up, not measured
                quiet_from = time.monotonic()
                time.sleep(quiet_s)
                hostile_from = time.monotonic()
                sent = asyncio.run(hostile(url, hostile_s))
                hostile_to = time.monotonic()
            finally:
                if neighbour is not None and neighbour.poll() is None:
                    assert neighbour.stdin is not None
                    neighbour.stdin.close()
                    neighbour.wait(30)
                if listener.poll() is None:
                    listener.kill()
                    listener.wait()
        every = read_samples(samples)
    quiet = [r.bridge_s * 1e3 for r in every if quiet_from <= r.at < hostile_from]
    loaded = [r.bridge_s * 1e3 for r in every if hostile_from <= r.at <= hostile_to]
    for kind, count in sorted(sent.items()):
        emit(f"fuzz_{kind}", count)
    emit("neighbour_quiet_round_trips", len(quiet))
    emit("neighbour_hostile_round_trips", len(loaded))
    emit("neighbour_quiet_p50_ms", percentile(quiet, 0.5))
    emit("neighbour_quiet_p99_ms", percentile(quiet, 0.99))
    emit("neighbour_hostile_p50_ms", percentile(loaded, 0.5))
    emit("neighbour_hostile_p99_ms", percentile(loaded, 0.99))
    emit("neighbour_hostile_max_ms", max(loaded))
    emit(
        "neighbour_p99_hostile_over_quiet",
        percentile(loaded, 0.99) / percentile(quiet, 0.99),
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench frames", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds GOOD runs alone")
    parser.add_argument("--hostile", type=float, default=30.0, help="seconds FUZZ sends")
    args = parser.parse_args(argv)
    run(args.quiet, args.hostile)
