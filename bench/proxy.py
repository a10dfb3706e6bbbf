"""``python -m bench proxy``: what local-controller mode costs, chargers relayed vs direct.

Baseline: N simulated chargers (default 500, half 1.6 MeterValues, half 2.0.1
TransactionEvent, closed loop, as ``python -m bench ocpp``) connected straight to a plain
CSMS built on the `ocpp` library (bench/_ocpp_server.py ``baseline``). Ours: the same chargers
connected to flexbridge's `LocalController` (security profile 1, the agent-side event consumer
attached), which relays every message to that same CSMS, runs its own set-up and safe layer on
each charger and follows every message with its site model. Each server is its own process.

Figures: messages/s and p50/p99 round-trip latency for both, the p99 the relay adds, and last
``proxy_throughput_vs_direct_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.ocpp import ROOT, Charger, LoadStats, connect_charger
from bench.report import emit, percentile, ratio


class _Server:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._ocpp_server", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{args[0]} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Figures:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


async def _load(port: int, chargers: int, warmup_s: float, duration_s: float) -> Figures:
    clients: list[Charger] = []
    for start in range(0, chargers, 100):
        clients += await asyncio.gather(
            *(connect_charger(port, i) for i in range(start, min(chargers, start + 100)))
        )
    await asyncio.gather(*(c.boot() for c in clients))
    stats = LoadStats()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.closed_loop(stats, stop)) for c in clients]
    await asyncio.sleep(warmup_s)
    stats.measuring = True
    began = time.perf_counter()
    await asyncio.sleep(duration_s)
    stats.measuring = False
    elapsed = time.perf_counter() - began
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    latencies = stats.latencies or [float("nan")]
    return Figures(
        rate=stats.completed / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=stats.errors,
    )


async def run(args: argparse.Namespace) -> None:
    csms = _Server("baseline", "0")
    try:
        direct = await _load(csms.port, args.chargers, args.warmup, args.duration)
        proxy = _Server("proxy", "0", str(csms.port))
        try:
            relayed = await _load(proxy.port, args.chargers, args.warmup, args.duration)
        finally:
            proxy.stop()
    finally:
        csms.stop()
    emit("proxy_chargers", args.chargers)
    for name, figures in (("direct", direct), ("proxy", relayed)):
        emit(f"{name}_msgs_per_s", figures.rate)
        emit(f"{name}_latency_p50_ms", figures.p50_ms)
        emit(f"{name}_latency_p99_ms", figures.p99_ms)
        emit(f"{name}_errors", figures.errors)
    emit("proxy_added_latency_p99_ms", relayed.p99_ms - direct.p99_ms)
    emit("proxy_throughput_vs_direct_ratio", ratio(relayed.rate, direct.rate))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chargers", type=int, default=500)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))
