"""Many fleet sites in one process, for the fleet scenarios and the fleet bench.

`python -m tests.support.fleet_host <sites.json>` hosts every site listed in the file in one
asyncio loop. Each site is the real site end of the fleet: a `SiteLink` over its own SQLite
file (the agent's `Database` with the agent's migrations) and its own NATS connection as its
own user (`site-<id>`, its own password, its own inbox prefix), made through the agent's
`FleetConnection`, so a site whose cluster is out of reach starts anyway and connects later.

What a site says is simulated, the link is not: a site's load is `baseline_w`, held to the
strictest cap of its commands in force (`agent.fleet.apply.binding_caps` over the commands
its link applied), integrated every `tick` into energy per ISP. The host's clock is the
scenario's shared one when FLEXBRIDGE_CLOCK_OFFSET_FILE names it
(`agent.runtime.clock.OffsetClock`): a skip of it is time the sites ran through at their
caps. Its messages are built with the protocol's models and the producers' pure builders
(`forecast_message`, `metering_series`) and committed to its outbox through `SiteLink.enqueue`.
The agent's `FleetProducers` need a whole agent (configuration, site model, a forecaster with
its worker process), which 50 sites in one process cannot afford; the few full agents of a
scenario run them.

The parent drives the process over stdin, one JSON object a line, and reads one JSON answer
a line on stdout (`{"ok": true, ...}` or `{"ok": false, "error": ...}`):

- `{"op": "forecast", "period": "2026-12-03"}`: every site queues its forecast of the day
  (the ISPs still to come) for its congestion point;
- `{"op": "flex"}`: every site queues its envelope from the current ISP to the end of tomorrow;
- `{"op": "heartbeat"}`, `{"op": "metering"}` (finished ISPs not reported yet: the energy
  where the site ran through the whole ISP, None elsewhere);
- `{"op": "offline", "sites": [...]}` / `{"op": "online", "sites": [...]}`: the sites'
  links stopped and their NATS connections closed (their load and their outbox go on) /
  connected again;
- `{"op": "drain", "timeout_s": 60}`: answers once every online site's outbox is published;
- `{"op": "status"}`: per site its counters, unpublished rows and applied commands;
- `{"op": "stop"}`: every site stopped, then the process exits.

Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.apply import binding_caps
from agent.fleet.bus import NatsBus
from agent.fleet.connection import ClosableBus, FleetConnection
from agent.fleet.link import SiteLink
from agent.fleet.producers import floor_isp, message_id, metering_series
from agent.runtime.clock import clock_from_environment
from agent.runtime.loops import Backoff
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from agent.trading.market import Market

log = logging.getLogger("fleet_host")

ISP = timedelta(seconds=900)


@dataclass
class SiteSpec:
    id: str
    congestion_point: str
    password: str
    baseline_w: float
    min_w: float
    max_w: float


@dataclass
class HostedSite:
    spec: SiteSpec
    db: Database
    link: SiteLink | None = None
    connection: FleetConnection | None = None
    caps: dict[datetime, float] = field(default_factory=dict)
    energy_wh: dict[int, float] = field(default_factory=dict)  # ISP start (epoch s) -> Wh
    running_since: datetime | None = None
    metered_until: datetime | None = None
    changes: int = 0

    def power_w(self, now: datetime) -> float:
        cap = self.caps.get(floor_isp(now))
        return self.spec.baseline_w if cap is None else min(self.spec.baseline_w, cap)


class Host:
    def __init__(self, servers: list[str], directory: Path, specs: list[SiteSpec], tz: str):
        self.servers = servers
        self.directory = directory
        # The scenario's shared timeline (FLEXBRIDGE_CLOCK_OFFSET_FILE), else the system clock.
        self.clock = clock_from_environment()
        self.market = Market(tz, 15)
        self.sites = {
            s.id: HostedSite(s, Database(directory / f"{s.id}.sqlite", SCHEMA)) for s in specs
        }
        self._ticker: asyncio.Task[None] | None = None
        self._accounted: datetime | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for site in self.sites.values():
            await site.db.start()
            await self._refresh_caps(site)
        now = self.clock.now()
        for site in self.sites.values():
            site.running_since = now
            site.metered_until = floor_isp(now)
        await asyncio.gather(*(self._connect(site) for site in self.sites.values()))
        self._ticker = asyncio.create_task(self._tick(), name="load")

    async def _connect(self, site: HostedSite) -> None:
        spec = site.spec

        async def connect() -> ClosableBus:
            return await NatsBus.connect_site(
                self.servers, spec.id, spec.password, connect_timeout_s=5.0
            )

        site.connection = FleetConnection(connect, backoff=Backoff(first_s=0.5, max_s=5.0))
        site.link = SiteLink(
            site.db,
            site.connection,
            spec.id,
            self.clock,
            lambda: self._changed(site),
            fetch_timeout_s=2.0,
            backoff=Backoff(first_s=0.2, max_s=3.0),
        )
        await site.connection.start()
        await site.link.start()

    async def _disconnect(self, site: HostedSite) -> None:
        if site.link is not None:
            await site.link.stop()
        if site.connection is not None:
            await site.connection.stop()
        site.link = site.connection = None

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for site in self.sites.values():
            await self._disconnect(site)
            await site.db.stop()

    # --- the simulated load ------------------------------------------------------------------

    def _changed(self, site: HostedSite) -> None:
        site.changes += 1
        asyncio.get_running_loop().create_task(self._refresh_caps(site))

    async def _refresh_caps(self, site: HostedSite) -> None:
        commands = await site.db.read(fleet_store.active_commands)
        site.caps = binding_caps(commands, self.clock.now())

    async def _tick(self, step_s: float = 1.0) -> None:
        self._accounted = self.clock.now()
        while True:
            await asyncio.sleep(step_s)
            self._account(self.clock.now())

    def _account(self, now: datetime) -> None:
        """The load in force since the last accounting, split at ISP boundaries. After a skip
        of the shared clock that is every ISP skipped, each at the cap the site held there
        (the sites ran through them, as the aggregator and the DSO see it)."""
        last = self._accounted
        if last is None or now <= last:
            return
        for site in self.sites.values():
            moment = last
            while moment < now:
                isp = floor_isp(moment)
                until = min(now, isp + ISP)
                hours = (until - moment).total_seconds() / 3600
                key = int(isp.timestamp())
                drawn = site.power_w(moment) * hours
                site.energy_wh[key] = site.energy_wh.get(key, 0.0) + drawn
                moment = until
        self._accounted = now

    # --- messages ----------------------------------------------------------------------------

    async def _enqueue(self, make: Any) -> int:
        count = 0
        for site in self.sites.values():
            messages = make(site)
            if messages:
                await self._commit(site, messages)
                count += len(messages)
        return count

    async def _commit(self, site: HostedSite, messages: list[fleet_store.UpstreamMessage]) -> None:
        if site.link is not None:
            await site.link.enqueue(*messages)
            return
        # Offline: the rows wait in the outbox; the link publishes them once it runs again.
        now = self.clock.now()

        def write(conn: Any) -> None:
            for message in messages:
                fleet_store.enqueue(conn, message, now)

        await site.db.transaction(write)

    def forecast(self, site: HostedSite, period: date) -> list[fleet_store.UpstreamMessage]:
        now = self.clock.now()
        current = floor_isp(now)
        starts = [i.start for i in self.market.isps(period) if i.start >= current]
        if not starts:
            return []
        b = site.spec.baseline_w
        return [
            protocol.Forecast(
                id=message_id(site.spec.id, "forecast"),
                site=site.spec.id,
                sent_at=now,
                start=starts[0],
                congestion_point=site.spec.congestion_point,
                made_at=now,
                p10_w=[0.8 * b] * len(starts),
                p50_w=[b] * len(starts),
                p90_w=[1.2 * b] * len(starts),
            )
        ]

    def flex(self, site: HostedSite) -> list[fleet_store.UpstreamMessage]:
        now = self.clock.now()
        start = floor_isp(now)
        end = self.market.bounds(self.market.today(now) + timedelta(days=1))[1]
        count = min(int((end - start) / ISP), protocol.MAX_ISPS)
        spec = site.spec
        return [
            protocol.Flex(
                id=message_id(spec.id, "flex"),
                site=spec.id,
                sent_at=now,
                start=start,
                congestion_point=spec.congestion_point,
                made_at=now,
                valid_until=now + timedelta(hours=12),
                baseline_w=[spec.baseline_w] * count,
                min_w=[spec.min_w] * count,
                max_w=[spec.max_w] * count,
            )
        ]

    def heartbeat(self, site: HostedSite) -> list[fleet_store.UpstreamMessage]:
        now = self.clock.now()
        return [
            protocol.Heartbeat(
                id=message_id(site.spec.id, "heartbeat"),
                site=site.spec.id,
                sent_at=now,
                chargers_connected=2,
                power_w=site.power_w(now),
                safe_limit_w=site.spec.min_w,
            )
        ]

    def metering(self, site: HostedSite) -> list[fleet_store.UpstreamMessage]:
        now = self.clock.now()
        self._account(now)  # a skip just made may not have been ticked through yet
        end = floor_isp(now)
        first = site.metered_until
        if first is None or site.running_since is None or end <= first:
            return []
        count = int((end - first) / ISP)
        series = metering_series(first, count, site.energy_wh, [(site.running_since, now)])
        # The tick adds energy only while the site runs: an ISP it ran only part of is unknown.
        series = [None if first + k * ISP < site.running_since else v for k, v in enumerate(series)]
        site.metered_until = end
        # After a skip, more ISPs than one message carries: as many messages as it takes.
        return [
            protocol.Metering(
                id=message_id(site.spec.id, "metering"),
                site=site.spec.id,
                sent_at=now,
                start=first + k * ISP,
                congestion_point=site.spec.congestion_point,
                energy_wh=series[k : k + protocol.MAX_ISPS],
            )
            for k in range(0, count, protocol.MAX_ISPS)
        ]

    # --- queries -----------------------------------------------------------------------------

    async def unpublished(self, site: HostedSite) -> int:
        rows = await site.db.read(lambda c: fleet_store.pending(c, 1_000_000))
        return len(rows)

    async def drain(self, timeout_s: float) -> dict[str, int]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            left = {
                s.spec.id: n
                for s in self.sites.values()
                if s.link is not None and (n := await self.unpublished(s))
            }
            if not left or asyncio.get_running_loop().time() > deadline:
                return left
            await asyncio.sleep(0.2)

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for site in self.sites.values():
            commands = await site.db.read(fleet_store.active_commands)
            out[site.spec.id] = {
                "online": site.link is not None,
                "connected": site.connection is not None and site.connection.connected,
                "unpublished": await self.unpublished(site),
                "published": 0 if site.link is None else site.link.published,
                "received": {} if site.link is None else dict(site.link.received),
                "repeats": 0 if site.link is None else site.link.repeats,
                "commands": {c.order_id: c.seq for c in commands},
                "caps": {k.isoformat(): v for k, v in sorted(site.caps.items())},
            }
        return out

    # --- the control channel -----------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "forecast":
            period = date.fromisoformat(request["period"])
            return {"queued": await self._enqueue(lambda s: self.forecast(s, period))}
        if op == "flex":
            return {"queued": await self._enqueue(self.flex)}
        if op == "heartbeat":
            return {"queued": await self._enqueue(self.heartbeat)}
        if op == "metering":
            return {"queued": await self._enqueue(self.metering)}
        if op == "offline":
            for name in request["sites"]:
                await self._disconnect(self.sites[name])
            return {}
        if op == "online":
            await asyncio.gather(*(self._connect(self.sites[n]) for n in request["sites"]))
            return {}
        if op == "drain":
            return {"left": await self.drain(float(request.get("timeout_s", 60)))}
        if op == "status":
            return {"sites": await self.status()}
        raise ValueError(f"unknown op {op!r}")


async def serve(host: Host) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await host.start()
    print(json.dumps({"ok": True, "ready": len(host.sites)}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        if request.get("op") == "stop":
            break
        try:
            answer = {"ok": True, **await host.handle(request)}
        except Exception as exc:  # the parent reads the reason; the host stays up
            log.exception("op %s failed", request.get("op"))
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    await host.stop()
    print(json.dumps({"ok": True, "stopped": True}), flush=True)


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[1]).read_text())
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {Path(argv[1]).stem} %(name)s %(levelname)s %(message)s",
    )
    specs = [SiteSpec(**s) for s in config["sites"]]
    host = Host(config["servers"], Path(config["directory"]), specs, config["time_zone"])
    asyncio.run(serve(host))


if __name__ == "__main__":
    main(sys.argv)
