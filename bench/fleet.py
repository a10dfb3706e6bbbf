"""``python -m bench fleet``: an order's fan-out to 1,000 sites over the fleet bus.

A real 3-node nats-server cluster (tests/support/nats_cluster.py), streams with 3 replicas and
one durable consumer per site made ahead of time, as the centre does when sites join. The
sites run in ``--site-processes`` processes (default 2), one asyncio loop each, every site
with its own connection as its own NATS user (``site-<id>``, its own permissions), as on the
gateways: 1,000 connections cost the site processes some RSS and a few seconds to open,
which the run reports, and the server's per-connection work (permissions, interest, slow
consumer checks) is part of what is measured; sharing one connection among sites would
measure a bus no site runs on.

Each site long-polls its consumer, "applies" a command (records it in an in-memory set: this
is a transport benchmark, not the site's SQLite), publishes an `Ack` upstream (confirmed by
FLEET_UP, retried with the same id) and acks the command. The centre publishes one `Command`
per site (64 in flight, each waiting for its PubAck) and consumes the acks from its
``central`` consumer. A site's latency is from the start of its command's publish to the
centre holding its ack; everything timed is in the centre's process.

Runs, in order:
1. the fan-out over JetStream: ``fleet_order_fanout_p99_s``;
2. the fan-out again with the FLEET_CMD stream leader SIGKILLed after a third of the
   commands were published (the centre republishes unconfirmed commands with the same id):
   ``fleet_lost_messages_node_kill`` counts sites whose ack never came (must be 0);
3. the killed node restarted while a third fan-out runs: ``fleet_cluster_healthy_after_restart_s``
   until every node's /healthz is OK (all streams and consumers current). nats-server
   2.9.10 can leave a consumer replica "not current" on a restarted node until its leader
   steps down; after ``--stepdown-after`` seconds the centre steps the leaders of the
   consumers the node names down, as docs/fleet.md tells an operator to (counted);
4. the named baseline: the same fan-out over core NATS publish/subscribe, no JetStream
   (no storage, no acks, no redelivery), the same processes and connection layout.

Last line ``fleet_fanout_vs_core_nats_ratio``: core NATS p99 over JetStream p99, so below 1
says how much of core NATS's speed the stored, acknowledged fan-out keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import queue
import re
import resource
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent.fleet.bus import (
    NatsBus,
    ensure_central_consumer,
    ensure_site_consumer,
    ensure_streams,
)
from agent.fleet.ports import BusUnavailable
from agent.fleet.protocol import (
    CENTRAL_CONSUMER,
    CMD_STREAM,
    UP_STREAM,
    Ack,
    Command,
    cmd_subject,
    decode_command,
    decode_upstream,
    encode,
    site_consumer,
    up_subject,
)
from bench.report import emit, percentile, ratio

if TYPE_CHECKING:
    from tests.support.nats_cluster import NatsCluster

IN_FLIGHT = 64


def _now() -> datetime:
    return datetime.now(UTC)


def _site_ids(count: int) -> list[str]:
    return [f"s{i:04d}" for i in range(count)]


def _command(site: str, order_id: str) -> Command:
    now = _now()
    start = datetime.fromtimestamp((int(now.timestamp()) // 900 + 1) * 900, UTC)
    return Command(
        id=f"{order_id}:{site}:1",
        site=site,
        sent_at=now,
        order_id=order_id,
        seq=1,
        valid_until=start + timedelta(hours=2),
        congestion_point="ean.000000000000000001",
        start=start,
        cap_w=[11_000.0] * 8,
    )


# --- the site processes ---------------------------------------------------------------------
@dataclass
class SiteJob:
    urls: list[str]
    sites: list[str]
    passwords: dict[str, str]
    central_password: str
    mode: str  # "jetstream" or "core"


async def _publish_until_confirmed(
    bus: NatsBus, subject: str, msg_id: str, data: bytes, deadline: float
) -> tuple[bool, int]:
    """Publish until the stream confirms or `deadline` (perf_counter) passes: (confirmed,
    failed attempts). Bounded, so a cluster that never regains a quorum ends the run with its
    sites counted lost instead of hanging it."""
    failures = 0
    while True:
        try:
            await bus.publish(subject, msg_id, data)
            return True, failures
        except BusUnavailable:
            failures += 1
            if time.perf_counter() >= deadline:
                return False, failures
            await asyncio.sleep(0.2)


async def _jetstream_site(
    bus: NatsBus, site: str, applied: set[tuple[str, int]], dupes: list[int]
) -> None:
    while True:
        try:
            deliveries = await bus.fetch(CMD_STREAM, site_consumer(site), 10, 5.0)
        except BusUnavailable:
            await asyncio.sleep(0.5)
            continue
        for delivery in deliveries:
            command = decode_command(delivery.data)
            key = (command.order_id, command.seq)
            if key in applied:
                dupes[0] += 1  # a redelivery: no second effect, the same Ack again
            applied.add(key)
            now = _now()
            ack = Ack(
                id=f"ack:{command.order_id}:{command.seq}:{site}",
                site=site,
                sent_at=now,
                order_id=command.order_id,
                seq=command.seq,
                outcome="applied",
                applied_at=now,
            )
            confirmed, _ = await _publish_until_confirmed(
                bus, up_subject(site, "ack"), ack.id, encode(ack), time.perf_counter() + 30.0
            )
            if not confirmed:
                continue  # the command stays unacked: redelivered, and its Ack tried again
            with contextlib.suppress(BusUnavailable):  # not acked: redelivered, see above
                await delivery.ack()


async def _run_sites(job: SiteJob, ready: Any, stop: MpEvent, results: Any) -> None:
    applied: set[tuple[str, int]] = set()
    dupes = [0]
    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    closers: list[Any] = []
    if job.mode == "jetstream":
        buses = await asyncio.gather(
            *(
                NatsBus.connect_site(job.urls, site, job.passwords[site], connect_timeout_s=60.0)
                for site in job.sites
            )
        )
        closers = [bus.close for bus in buses]
        for site, bus in zip(job.sites, buses, strict=True):
            tasks.append(asyncio.create_task(_jetstream_site(bus, site, applied, dupes)))
    else:
        clients: list[Client] = []
        for site in job.sites:
            nc = await nats.connect(
                job.urls, user="central", password=job.central_password, name=f"core-{site}"
            )
            clients.append(nc)

            async def on_command(msg: Msg, nc: Client = nc, site: str = site) -> None:
                command = decode_command(msg.data)
                applied.add((command.order_id, command.seq))
                now = _now()
                ack = Ack(
                    id=f"ack:{command.order_id}:{command.seq}:{site}",
                    site=site,
                    sent_at=now,
                    order_id=command.order_id,
                    seq=command.seq,
                    outcome="applied",
                    applied_at=now,
                )
                await nc.publish(f"bench.core.ack.{site}", encode(ack))

            await nc.subscribe(f"bench.core.cmd.{site}", cb=on_command)
            await nc.flush()
        closers = [nc.close for nc in clients]
    connect_s = time.perf_counter() - started
    ready.put(("ready", len(job.sites), connect_s, _rss_mb_self()))
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put(("done", len(applied), dupes[0], _rss_mb_self()))
    await asyncio.gather(*(close() for close in closers), return_exceptions=True)


def _quiet_bus_log() -> None:
    """Reconnect warnings of 1,000 sites through a node kill would bury the figures."""
    logging.getLogger("agent.fleet.bus").setLevel(logging.ERROR)


def _site_process(job: SiteJob, ready: Any, stop: MpEvent, results: Any) -> None:
    _raise_nofile()
    _quiet_bus_log()
    asyncio.run(_run_sites(job, ready, stop, results))


def _rss_mb_self() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class SiteFleet:
    """The site processes of one phase (JetStream or core NATS)."""

    processes: list[BaseProcess] = field(default_factory=list)
    connect_s: float = 0.0
    rss_mb: float = 0.0
    applied: int = 0
    duplicates: int = 0

    @classmethod
    def start(
        cls, cluster: NatsCluster, sites: list[str], mode: str, count: int, timeout_s: float
    ) -> tuple[SiteFleet, MpEvent, Any]:
        ctx = mp.get_context("spawn")
        ready, results = ctx.Queue(), ctx.Queue()
        stop = ctx.Event()
        fleet = cls()
        passwords = {c.site: c.password for c in cluster.sites}
        for index in range(count):
            job = SiteJob(
                urls=cluster.client_urls,
                sites=sites[index::count],
                passwords={s: passwords[s] for s in sites[index::count]},
                central_password=cluster.central_password,
                mode=mode,
            )
            proc = ctx.Process(target=_site_process, args=(job, ready, stop, results))
            proc.start()
            fleet.processes.append(proc)
        deadline = time.monotonic() + timeout_s
        for _ in range(count):
            while True:
                try:
                    _tag, _n, connect_s, _rss = ready.get(timeout=1.0)
                    break
                except queue.Empty:
                    dead = [c.exitcode for c in fleet.processes if not c.is_alive()]
                    if dead or time.monotonic() > deadline:
                        for child in fleet.processes:
                            child.kill()
                        raise RuntimeError(
                            f"site processes not connected within {timeout_s:.0f} s"
                            if not dead
                            else f"a site process exited at start (exit codes {dead})"
                        ) from None
            fleet.connect_s = max(fleet.connect_s, connect_s)
        return fleet, stop, results

    def finish(self, stop: MpEvent, results: Any) -> None:
        stop.set()
        for _ in self.processes:
            _tag, applied, duplicates, rss = results.get(timeout=60)
            self.applied += applied
            self.duplicates += duplicates
            self.rss_mb = max(self.rss_mb, rss)
        for proc in self.processes:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


# --- the centre ------------------------------------------------------------------------------
@dataclass
class FanOut:
    latencies_s: dict[str, float]
    missing: list[str]
    republished: int
    duration_s: float


class Centre:
    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus
        self.acked: dict[tuple[str, str], float] = {}
        self.counts: dict[str, int] = {}
        self.expected: dict[str, tuple[int, asyncio.Event]] = {}
        self._consumer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume())

    async def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer

    async def _consume(self) -> None:
        while True:
            try:
                deliveries = await self.bus.fetch(UP_STREAM, CENTRAL_CONSUMER, 500, 1.0)
            except BusUnavailable:
                await asyncio.sleep(0.2)
                continue
            now = time.perf_counter()
            for delivery in deliveries:
                message = decode_upstream(delivery.data)
                if not isinstance(message, Ack):
                    continue
                key = (message.order_id, message.site)
                if key in self.acked:
                    continue  # the same Ack again (a redelivered command): no second effect
                self.acked[key] = now
                self.counts[message.order_id] = self.counts.get(message.order_id, 0) + 1
                wanted = self.expected.get(message.order_id)
                if wanted is not None and self.counts[message.order_id] >= wanted[0]:
                    wanted[1].set()
            await asyncio.gather(*(d.ack() for d in deliveries), return_exceptions=True)

    async def fan_out(
        self,
        order_id: str,
        sites: list[str],
        timeout_s: float,
        on_published: Any = None,
    ) -> FanOut:
        done = asyncio.Event()
        self.expected[order_id] = (len(sites), done)
        started_at: dict[str, float] = {}
        republished = [0]
        published = [0]
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(site: str) -> None:
            command = _command(site, order_id)
            async with gate:
                started_at[site] = time.perf_counter()
                confirmed, failures = await _publish_until_confirmed(
                    self.bus, cmd_subject(site), command.id, encode(command), deadline
                )
                republished[0] += failures
                if not confirmed:
                    return  # never stored: the site's ack cannot come, it counts as missing
                published[0] += 1
                if on_published is not None:
                    on_published(published[0])

        begin = time.perf_counter()
        deadline = begin + timeout_s  # the whole fan-out, publishing included
        await asyncio.gather(*(one(site) for site in sites))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.0, deadline - time.perf_counter()))
        duration = time.perf_counter() - begin
        latencies = {
            site: self.acked[(order_id, site)] - started_at[site]
            for site in sites
            if (order_id, site) in self.acked
        }
        missing = [site for site in sites if site not in latencies]
        return FanOut(latencies, missing, republished[0], duration)


async def _core_fan_out(cluster: NatsCluster, sites: list[str], timeout_s: float) -> FanOut:
    nc = await nats.connect(
        cluster.client_urls, user="central", password=cluster.central_password, name="core"
    )
    acked: dict[str, float] = {}
    done = asyncio.Event()

    async def on_ack(msg: Msg) -> None:
        ack = decode_upstream(msg.data)
        acked.setdefault(ack.site, time.perf_counter())
        if len(acked) == len(sites):
            done.set()

    await nc.subscribe("bench.core.ack.*", cb=on_ack)
    await nc.flush()
    started_at: dict[str, float] = {}
    begin = time.perf_counter()
    for site in sites:
        command = _command(site, "core-1")
        started_at[site] = time.perf_counter()
        await nc.publish(f"bench.core.cmd.{site}", encode(command))
    await nc.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout_s)
    duration = time.perf_counter() - begin
    await nc.close()
    latencies = {s: acked[s] - started_at[s] for s in sites if s in acked}
    return FanOut(latencies, [s for s in sites if s not in acked], 0, duration)


async def _make_consumers(bus: NatsBus, sites: list[str]) -> float:
    started = time.perf_counter()
    await ensure_streams(bus.jetstream, replicas=3)
    await ensure_central_consumer(bus.jetstream)
    gate = asyncio.Semaphore(16)

    async def one(site: str) -> None:
        async with gate:
            for attempt in range(20):
                try:
                    await ensure_site_consumer(bus.jetstream, site)
                    return
                except (nats.errors.Error, TimeoutError):  # a busy meta leader: again
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(one(site) for site in sites))
    return time.perf_counter() - started


_NOT_CURRENT = re.compile(r"consumer '[^']*> ([A-Z_]+) > ([a-z0-9_-]+)' is not current")


async def _until_healthy(
    cluster: NatsCluster, bus: NatsBus, since: float, stepdown_after_s: float, timeout_s: float
) -> tuple[float | None, int]:
    """When (perf_counter) every node's /healthz was OK, or None; and how many consumer
    leaders were stepped down meanwhile."""
    stepdowns = 0
    while time.perf_counter() - since < timeout_s:
        unhealthy = [i for i in range(3) if not cluster.healthy(i)]
        if not unhealthy:
            return time.perf_counter(), stepdowns
        if time.perf_counter() - since > stepdown_after_s:
            for index in unhealthy:
                with contextlib.suppress(OSError, ValueError):
                    _status, body = cluster.healthz(index)
                    match = _NOT_CURRENT.search(str(body))
                    if match:
                        with contextlib.suppress(BusUnavailable):
                            await bus.step_down_consumer(match[1], match[2])
                            stepdowns += 1
        await asyncio.sleep(0.25)
    return None, stepdowns


async def run(args: argparse.Namespace) -> None:
    from tests.support.nats_cluster import NatsCluster

    sites = _site_ids(args.sites)
    with tempfile.TemporaryDirectory(prefix="flexbridge-bench-fleet-") as tmp:
        cluster = NatsCluster(Path(tmp), sites)
        cluster.start()
        try:
            await _measure(args, cluster, sites)
        finally:
            cluster.stop()


async def _measure(args: argparse.Namespace, cluster: NatsCluster, sites: list[str]) -> None:
    bus = await NatsBus.connect_central(
        cluster.client_urls, cluster.central_password, publish_timeout_s=2.0
    )
    rss_peak = 0.0

    def sample_rss() -> None:
        nonlocal rss_peak
        rss_peak = max([rss_peak, *cluster.rss_mb()])

    setup_s = await _make_consumers(bus, sites)
    centre = Centre(bus)
    centre.start()
    fleet, stop, results = SiteFleet.start(
        cluster, sites, "jetstream", args.site_processes, timeout_s=120
    )
    try:
        sample_rss()
        # 1. the fan-out
        first = await centre.fan_out("order-1", sites, args.timeout)
        sample_rss()
        # 2. the fan-out with the FLEET_CMD leader killed a third of the way
        leader = cluster.stream_leader(CMD_STREAM)

        def kill_at(count: int) -> None:
            if count == len(sites) // 3:
                cluster.kill(leader)

        killed = await centre.fan_out("order-2", sites, args.timeout, on_published=kill_at)
        sample_rss()
        # 3. the node back while a third fan-out runs
        restarted_at = time.perf_counter()
        await asyncio.to_thread(cluster.restart, leader, 60.0, assets=False)
        third = asyncio.create_task(centre.fan_out("order-3", sites, args.timeout))
        healthy_at, stepdowns = await _until_healthy(
            cluster, bus, restarted_at, args.stepdown_after, timeout_s=args.timeout
        )
        healthy_s = healthy_at - restarted_at if healthy_at is not None else None
        await third
        sample_rss()
    finally:
        fleet.finish(stop, results)
        await centre.stop()
    await bus.close()

    # 4. the baseline: core NATS, no JetStream
    core_fleet, core_stop, core_results = SiteFleet.start(
        cluster, sites, "core", args.site_processes, timeout_s=120
    )
    try:
        core = await _core_fan_out(cluster, sites, args.timeout)
    finally:
        core_fleet.finish(core_stop, core_results)

    js_p99 = percentile(list(first.latencies_s.values()), 0.99) if first.latencies_s else None
    core_p99 = percentile(list(core.latencies_s.values()), 0.99) if core.latencies_s else None
    emit("fleet_sites", len(sites))
    emit("fleet_site_processes", args.site_processes)
    emit("fleet_site_connect_s", round(fleet.connect_s, 3))
    emit("fleet_site_process_rss_mb", round(fleet.rss_mb, 1))
    emit("fleet_consumer_setup_s", round(setup_s, 3))
    emit("fleet_order_fanout_p50_s", percentile(list(first.latencies_s.values()), 0.5))
    emit("fleet_order_fanout_p99_s", js_p99 if js_p99 is not None else "none")
    emit("fleet_order_fanout_all_acked_s", first.duration_s)
    emit("fleet_sites_per_aggregator", len(first.latencies_s))
    emit("fleet_node_rss_mb", round(rss_peak, 1))
    emit("fleet_node_kill_republished_commands", killed.republished)
    emit("fleet_redelivered_commands", fleet.duplicates)
    emit("fleet_order_fanout_node_kill_p99_s", percentile(list(killed.latencies_s.values()), 0.99))
    emit("fleet_lost_messages_node_kill", len(killed.missing))
    emit("fleet_restart_consumer_stepdowns", stepdowns)
    emit(
        "fleet_cluster_healthy_after_restart_s",
        round(healthy_s, 3) if healthy_s is not None else "timeout",
    )
    emit("fleet_core_nats_fanout_p99_s", core_p99 if core_p99 is not None else "none")
    emit("fleet_core_nats_lost_messages", len(core.missing))
    if js_p99 and core_p99:
        emit("fleet_fanout_vs_core_nats_ratio", ratio(1 / js_p99, 1 / core_p99))
    else:
        emit("fleet_fanout_vs_core_nats_ratio", "none")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sites", type=int, default=1_000)
    parser.add_argument("--site-processes", type=int, default=2)
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per fan-out, publishing included"
    )
    parser.add_argument(
        "--stepdown-after",
        type=float,
        default=15.0,
        help="seconds after a restart before stepping down consumers the node calls stale",
    )
    args = parser.parse_args(argv)
    _raise_nofile()
    _quiet_bus_log()
    asyncio.run(run(args))
