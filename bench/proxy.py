"""``python -m bench proxy``: what local-controller mode costs, chargers relayed vs direct.

Baseline: N simulated chargers (default 500, half 1.6 MeterValues, half 2.0.1
TransactionEvent, 5 sampled values each, as ``python -m bench ocpp``) connected straight to a
plain CSMS built on the `ocpp` library (bench/_ocpp_server.py ``baseline``). Ours: as many
chargers of the same kind connected to flexbridge's `LocalController` (security profile 1, the
agent-side event consumer attached), which relays every message to that same CSMS, runs its
own set-up and safe layer on each charger and follows every message with its site model.

Three processes: this one is the load generator (every charger, one event loop), the CSMS is
one, flexbridge another; none shares an event loop or a GIL with the others. On a 2-core
machine they still share the two cores.

Two fleets of N chargers, other identities, both connected for the whole run: one straight to
the CSMS, one through flexbridge to the same CSMS.

- latency at a realistic load: each charger sends one message every ``--interval`` seconds
  (default 5 s, random phase; real chargers send MeterValues every 10-60 s, so this is the
  site's load compressed, and far below what either path can carry), open loop. Both fleets
  are paced at once, so that whatever else runs on the machine disturbs both paths in the
  same window. A round trip is timed from the moment the message was due (a late send counts
  against the path) to its answer. The relay's cost is the relayed p99 minus the direct p99,
  under the same offered load per fleet.
- throughput at saturation, measured apart: each fleet alone in a closed loop (the next
  message as soon as the previous one is answered), messages/s relayed over direct; and
  flexbridge's CPU per relayed message.

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


async def _latency(
    fleets: dict[str, list[Charger]], args: argparse.Namespace
) -> dict[str, Latency]:
    """Every fleet paced at once: what disturbs one path in the window disturbs the other."""
    stats = {name: LoadStats() for name in fleets}
    stop = asyncio.Event()
    start = time.perf_counter()
    phases = random.Random(1)
    tasks = [
        asyncio.create_task(
            _paced(c, stats[name], stop, args.interval, start + phases.uniform(0, args.interval))
        )
        for name, clients in fleets.items()
        for c in clients
    ]
    await asyncio.sleep(args.warmup)
    for fleet in stats.values():
        fleet.measuring = True
    began = time.perf_counter()
    await asyncio.sleep(args.duration)
    for fleet in stats.values():
        fleet.measuring = False
    elapsed = time.perf_counter() - began
    stop.set()
    await asyncio.gather(*tasks)
    figures = {}
    for name, fleet in stats.items():
        latencies = fleet.latencies or [float("nan")]
        figures[name] = Latency(
            offered_per_s=len(fleets[name]) / args.interval,
            rate=fleet.completed / elapsed,
            p50_ms=percentile(latencies, 0.5) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            errors=fleet.errors,
        )
    return figures


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


async def _fleet(port: int, first: int, count: int) -> list[Charger]:
    clients: list[Charger] = []
    for start in range(first, first + count, 100):  # in waves: this is not the connect storm
        clients += await asyncio.gather(
            *(connect_charger(port, i) for i in range(start, min(first + count, start + 100)))
        )
    await asyncio.gather(*(c.boot() for c in clients))
    return clients


async def run(args: argparse.Namespace) -> None:
    csms = ServerProcess("baseline")
    proxy: ServerProcess | None = None
    fleets: dict[str, list[Charger]] = {}
    try:
        proxy = ServerProcess("proxy", str(csms.port))
        # Other identities for the relayed fleet: both reach the one CSMS at the same time.
        fleets["direct"] = await _fleet(csms.port, 0, args.chargers)
        fleets["proxy"] = await _fleet(proxy.port, args.chargers, args.chargers)
        latency = await _latency(fleets, args)
        direct_rate = await _saturation(fleets["direct"], None, args)
        proxy_rate = await _saturation(fleets["proxy"], proxy, args)
    finally:
        clients = [c for fleet in fleets.values() for c in fleet]
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
        if proxy is not None:
            proxy.stop()
        csms.stop()
    direct_latency, proxy_latency = latency["direct"], latency["proxy"]
    emit("proxy_chargers", args.chargers)
    emit("proxy_message_interval_s", args.interval)
    emit("proxy_offered_msgs_per_s", direct_latency.offered_per_s)
    for name, paced in (("direct", direct_latency), ("proxy", proxy_latency)):
        emit(f"{name}_paced_msgs_per_s", paced.rate)
        emit(f"{name}_paced_latency_p50_ms", paced.p50_ms)
        emit(f"{name}_paced_latency_p99_ms", paced.p99_ms)
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
