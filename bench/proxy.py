"""``python -m bench proxy``: what local-controller mode costs, chargers relayed vs direct.

Baseline: N simulated chargers (default 500, half 1.6 MeterValues, half 2.0.1
TransactionEvent, 5 sampled values each, as ``python -m bench ocpp``) connected straight to a
plain CSMS built on the `ocpp` library (bench/_ocpp_server.py ``baseline``). Ours: the same
chargers connected to flexbridge's `LocalController` (security profile 1, the agent-side event
consumer attached), which relays every message to that same CSMS, runs its own set-up and safe
layer on each charger and follows every message with its site model.

Three processes: this one is the load generator (every charger, one event loop), the CSMS is
one, flexbridge another; none shares an event loop or a GIL with the others. On a 2-core
machine they still share the two cores.

Two measurements per path, on the same connections, direct first and then relayed:

- latency at a realistic load: each charger sends one message every ``--interval`` seconds
  (default 5 s, random phase; real chargers send MeterValues every 10-60 s, so this is the
  site's load compressed, and far below what either path can carry), open loop. A round trip
  is timed from the moment the message was due (a late send counts against the path), to its
  answer. The relay's cost is the relayed p99 minus the direct p99 under that offered load.
- throughput at saturation: every charger in a closed loop (the next message as soon as the
  previous one is answered), messages/s relayed over direct; and flexbridge's CPU per message.

Figures: the offered load, both p50/p99 at that load, ``proxy_added_latency_p99_ms``, the
saturated rates and last ``proxy_throughput_vs_direct_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import time
from dataclasses import dataclass

import websockets

from bench.ocpp import Charger, LoadStats, ServerProcess, _stamp, connect_charger
from bench.report import emit, percentile, ratio


@dataclass
class Latency:
    offered_per_s: float
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Saturation:
    rate: float
    errors: int
    server_cpu_ms_per_msg: float | None


async def _paced(
    charger: Charger,
    stats: LoadStats,
    stop: asyncio.Event,
    interval_s: float,
    first_at: float,
) -> None:
    """One message every `interval_s`, timed from when it was due (open loop)."""
    due = first_at
    stamp = _stamp()
    while not stop.is_set():
        delay = due - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
        unique_id, frame = charger.next_frame(stamp)
        try:
            await charger.request(unique_id, frame)
        except (RuntimeError, websockets.ConnectionClosed):
            stats.errors += 1
            return
        if stats.measuring:
            stats.completed += 1
            stats.latencies.append(time.perf_counter() - due)
        due += interval_s
        if charger.seq % 50 == 0:
            stamp = _stamp()


async def _measure(
    stats: LoadStats, tasks: list[asyncio.Task[None]], stop: asyncio.Event, args: argparse.Namespace
) -> float:
    """Seconds measured, between the warm-up and the end of the load."""
    await asyncio.sleep(args.warmup)
    stats.measuring = True
    began = time.perf_counter()
    await asyncio.sleep(args.duration)
    stats.measuring = False
    elapsed = time.perf_counter() - began
    stop.set()
    await asyncio.gather(*tasks)
    return elapsed


async def _latency(clients: list[Charger], args: argparse.Namespace) -> Latency:
    stats = LoadStats()
    stop = asyncio.Event()
    start = time.perf_counter()
    phases = random.Random(1)
    tasks = [
        asyncio.create_task(
            _paced(c, stats, stop, args.interval, start + phases.uniform(0, args.interval))
        )
        for c in clients
    ]
    elapsed = await _measure(stats, tasks, stop, args)
    latencies = stats.latencies or [float("nan")]
    return Latency(
        offered_per_s=len(clients) / args.interval,
        rate=stats.completed / elapsed,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=stats.errors,
    )


async def _saturation(
    clients: list[Charger], server: ServerProcess | None, args: argparse.Namespace
) -> Saturation:
    stats = LoadStats()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.closed_loop(stats, stop)) for c in clients]
    await asyncio.sleep(args.saturation_warmup)
    cpu_before = server.cpu_seconds() if server is not None else 0.0
    stats.measuring = True
    began = time.perf_counter()
    await asyncio.sleep(args.saturation_duration)
    stats.measuring = False
    elapsed = time.perf_counter() - began
    cpu = server.cpu_seconds() - cpu_before if server is not None else None
    stop.set()
    await asyncio.gather(*tasks)
    return Saturation(
        rate=stats.completed / elapsed,
        errors=stats.errors,
        server_cpu_ms_per_msg=None if cpu is None else cpu * 1000 / max(1, stats.completed),
    )


async def _path(
    port: int, relay: ServerProcess | None, args: argparse.Namespace
) -> tuple[Latency, Saturation]:
    clients: list[Charger] = []
    for start in range(0, args.chargers, 100):  # in waves: this is not the connect storm
        clients += await asyncio.gather(
            *(connect_charger(port, i) for i in range(start, min(args.chargers, start + 100)))
        )
    try:
        await asyncio.gather(*(c.boot() for c in clients))
        latency = await _latency(clients, args)
        saturation = await _saturation(clients, relay, args)
    finally:
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    return latency, saturation


async def run(args: argparse.Namespace) -> None:
    csms = ServerProcess("baseline")
    try:
        direct = await _path(csms.port, None, args)
        proxy = ServerProcess("proxy", str(csms.port))
        try:
            relayed = await _path(proxy.port, proxy, args)
        finally:
            proxy.stop()
    finally:
        csms.stop()
    (direct_latency, direct_rate), (proxy_latency, proxy_rate) = direct, relayed
    emit("proxy_chargers", args.chargers)
    emit("proxy_message_interval_s", args.interval)
    emit("proxy_offered_msgs_per_s", direct_latency.offered_per_s)
    for name, latency in (("direct", direct_latency), ("proxy", proxy_latency)):
        emit(f"{name}_paced_msgs_per_s", latency.rate)
        emit(f"{name}_paced_latency_p50_ms", latency.p50_ms)
        emit(f"{name}_paced_latency_p99_ms", latency.p99_ms)
    for name, saturation in (("direct", direct_rate), ("proxy", proxy_rate)):
        emit(f"{name}_saturated_msgs_per_s", saturation.rate)
    assert proxy_rate.server_cpu_ms_per_msg is not None
    emit("proxy_server_cpu_ms_per_msg", proxy_rate.server_cpu_ms_per_msg)
    emit("direct_errors", direct_latency.errors + direct_rate.errors)
    emit("proxy_errors", proxy_latency.errors + proxy_rate.errors)
    emit("proxy_added_latency_p50_ms", proxy_latency.p50_ms - direct_latency.p50_ms)
    emit("proxy_added_latency_p99_ms", proxy_latency.p99_ms - direct_latency.p99_ms)
    emit("proxy_throughput_vs_direct_ratio", ratio(proxy_rate.rate, direct_rate.rate))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chargers", type=int, default=500)
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between a charger's paced messages"
    )
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument(
        "--saturation-warmup", type=float, default=3.0, help="seconds before measuring, saturated"
    )
    parser.add_argument(
        "--saturation-duration", type=float, default=10.0, help="seconds measured, saturated"
    )
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))
