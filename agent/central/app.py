"""The aggregator's composition root: configuration in, service components out.

In start order: the database (migrated under an advisory lock, the configured portfolio
ensured), the sites' durable command consumers (created ahead of time, never at first use),
the UFTP participant (endpoint, handler, outbox sender), the fleet bus consumer and the
command publisher, the trading loops and the operator view. Several aggregator processes may
run this on one database and one NATS cluster at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from agent.central import db
from agent.central.config import CentralConfig, CentralTradingConfig
from agent.central.fleet_io import CommandPublisher, UpstreamConsumer
from agent.central.trading import CentralTrader, OrderAccepted
from agent.central.uftp_shell import CentralUftp
from agent.fleet.ports import BusPort
from agent.runtime import failpoints
from agent.runtime.service import Component, StartError
from agent.runtime.systemd import NamedProbe, SystemdWatchdog
from agent.runtime.uftp_settings import participant_settings
from agent.trading.market import Market
from uftp.loops import SupervisedLoop
from uftp.models import utc_now

log = logging.getLogger(__name__)

# The aggregator dies here in crash tests: the order, its commands and its response are
# committed, nothing is published yet.
AFTER_ORDER_COMMIT = "central.after-order-commit"
# Sites' command consumers made at once at start. Creating one is a JetStream API request
# that the meta leader answers after replicating it, about 0.4 s on a 3-node cluster: one at
# a time, 200 new sites kept the aggregator from serving for 87 s, 16 at a time for 7 s
# (`python -m bench aggregator_start`). The meta leader handles API requests one by one
# anyway, so more in flight gains little and risks its API timeouts (bench/fleet.py makes
# its consumers 16 at a time too).
CONSUMERS_IN_FLIGHT = 16
# How many failed sites the start error names (each is logged with its error regardless).
FAILED_SITES_NAMED = 10


class FleetBus(BusPort, Protocol):
    """The bus as the aggregator needs it: BusPort plus the sites' durable consumers."""

    async def ensure_site_consumer(self, site: str) -> None: ...


# --- the portfolio --------------------------------------------------------------------------------


async def ensure_portfolio(conn: db.Connection, config: CentralConfig) -> None:
    """The configured congestion points and sites, added or updated (never removed)."""
    async with conn.transaction():
        for cp in config.congestion_points:
            await conn.execute(
                "INSERT INTO congestion_point (ean, dso_domain, mutex_offers_supported) "
                "VALUES (%s, %s, %s) ON CONFLICT (ean) DO UPDATE SET "
                "dso_domain = excluded.dso_domain, "
                "mutex_offers_supported = excluded.mutex_offers_supported",
                (cp.entity_address, cp.dso_domain, cp.mutex_offers_supported),
            )
        for site in config.sites:
            await add_site(conn, site.id, site.congestion_point, site.credentials_ref)


class PortfolioError(ValueError):
    """A site cannot join as asked (its congestion point is unknown, it belongs elsewhere)."""


async def add_site(
    conn: db.Connection, site: str, congestion_point: str, credentials_ref: str | None = None
) -> bool:
    """Add a site to the portfolio (True), or confirm it is there already (False); a site
    never moves to another congestion point silently."""
    cursor = await conn.execute(
        "SELECT 1 FROM congestion_point WHERE ean = %s", (congestion_point,)
    )
    if await cursor.fetchone() is None:
        raise PortfolioError(f"congestion point {congestion_point} is not in the portfolio")
    cursor = await conn.execute(
        "INSERT INTO site (id, congestion_point, credentials_ref) VALUES (%s, %s, %s) "
        "ON CONFLICT (id) DO NOTHING RETURNING id",
        (site, congestion_point, credentials_ref),
    )
    if await cursor.fetchone() is not None:
        return True
    cursor = await conn.execute("SELECT congestion_point FROM site WHERE id = %s", (site,))
    row = await cursor.fetchone()
    if row is not None and row[0] != congestion_point:
        raise PortfolioError(f"site {site} is already at congestion point {row[0]}")
    return False


async def sites(conn: db.Connection) -> list[str]:
    cursor = await conn.execute("SELECT id FROM site ORDER BY id")
    return [str(r[0]) for r in await cursor.fetchall()]


# --- the operator view ----------------------------------------------------------------------------


async def fleet_view(
    conn: db.Connection, now: datetime, trading: CentralTradingConfig
) -> dict[str, Any]:
    """Every site with its liveness, forecast age and commands, as GET /api/fleet serves it."""
    cursor = await conn.execute(
        "SELECT s.id, s.congestion_point, st.last_seen_at, st.last_heartbeat_at, "
        "st.chargers_connected, st.power_w, "
        "(SELECT max(made_at) FROM site_forecast f WHERE f.site = s.id), "
        "(SELECT count(*) FROM command c WHERE c.site = s.id AND c.ack_outcome IS NULL "
        " AND c.valid_until > %s), "
        "(SELECT count(*) FROM command c WHERE c.site = s.id AND c.ack_outcome IS NOT NULL) "
        "FROM site s LEFT JOIN site_status st ON st.site = s.id ORDER BY s.id",
        (now,),
    )
    listed = []
    online = 0
    for row in await cursor.fetchall():
        heartbeat = row[3]
        is_online = (
            heartbeat is not None and (now - heartbeat).total_seconds() <= trading.offline_after_s
        )
        online += is_online
        listed.append(
            {
                "site": row[0],
                "congestion_point": row[1],
                "online": is_online,
                "last_seen_at": None if row[2] is None else row[2].isoformat(),
                "last_heartbeat_at": None if heartbeat is None else heartbeat.isoformat(),
                "chargers_connected": row[4],
                "power_w": row[5],
                "forecast_age_s": None if row[6] is None else (now - row[6]).total_seconds(),
                "commands_pending": int(row[7]),
                "commands_acked": int(row[8]),
            }
        )
    return {
        "generated_at": now.isoformat(),
        "sites_total": len(listed),
        "sites_online": online,
        "sites_offline": len(listed) - online,
        "sites": listed,
    }


class FleetView:
    """GET /api/fleet: read-only JSON for operators (bind it to loopback or a trusted net)."""

    name = "fleet-view"

    def __init__(
        self,
        dsn: str,
        host: str,
        port: int,
        trading: CentralTradingConfig,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db.Session(dsn, "fleet-view")
        self._host = host
        self._port = port
        self._trading = trading
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/fleet", self._fleet)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.bound_port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._db.close()

    async def _fleet(self, _request: web.Request) -> web.Response:
        async with self._db.transaction() as conn:
            body = await fleet_view(conn, self._clock(), self._trading)
        return web.json_response(body)


# --- composition ----------------------------------------------------------------------------------


async def ensure_site_consumers(
    bus: FleetBus, sites: Sequence[str], in_flight: int = CONSUMERS_IN_FLIGHT
) -> None:
    """Every site's command consumer, `in_flight` at a time; returns once all exist (so
    nothing publishes a command for a site without one). Every site is tried even when some
    fail: the StartError then names the failed sites, and each is logged with its error, so
    one bad site does not hide another."""
    gate = asyncio.Semaphore(in_flight)

    async def ensure(site: str) -> Exception | None:
        async with gate:
            try:
                await bus.ensure_site_consumer(site)
            except Exception as exc:
                log.error(
                    "could not make a site's command consumer",
                    extra={"site": site, "error": f"{type(exc).__name__}: {exc}"},
                )
                return exc
            return None

    outcomes = await asyncio.gather(*(ensure(site) for site in sites))
    failed = [(site, exc) for site, exc in zip(sites, outcomes, strict=True) if exc is not None]
    if not failed:
        return
    named = "; ".join(f"{site}: {exc}" for site, exc in failed[:FAILED_SITES_NAMED])
    more = len(failed) - FAILED_SITES_NAMED
    raise StartError(
        f"the command consumers of {len(failed)} of {len(sites)} sites could not be made "
        f"({named}{f'; and {more} more in the log' if more > 0 else ''})"
    )


class Store:
    """Migrates the schema and ensures the configured portfolio and the sites' consumers."""

    name = "database"

    def __init__(
        self, config: CentralConfig, bus: FleetBus, consumers_in_flight: int = CONSUMERS_IN_FLIGHT
    ) -> None:
        self._config = config
        self._bus = bus
        self._in_flight = consumers_in_flight

    async def start(self) -> None:
        conn = await db.connect(self._config.database.dsn.get_secret_value())
        try:
            await db.migrate(conn)
            await ensure_portfolio(conn, self._config)
            every = await sites(conn)
        finally:
            await conn.close()
        await ensure_site_consumers(self._bus, every, self._in_flight)
        log.info("portfolio ready", extra={"sites": len(every)})

    async def stop(self) -> None:
        return None


class TradingLoops:
    """The trader's periodic steps, each in its own transaction on its own connection."""

    name = "trading-loops"

    def __init__(self, trader: CentralTrader, dsn: str, on_commands: Callable[[], None]) -> None:
        self._trader = trader
        self._on_commands = on_commands
        self._prognosis_db = db.Session(dsn, "prognosis")
        self._reassign_db = db.Session(dsn, "reassign")
        self._revocation_db = db.Session(dsn, "revocation")
        self._metering_loop = SupervisedLoop(
            "metering", self._metering, interval_s=300.0, logger=log
        )
        self._loops = [
            SupervisedLoop("prognosis", self._prognosis, interval_s=60.0, logger=log),
            SupervisedLoop("reassign", self._reassign, interval_s=15.0, logger=log),
            SupervisedLoop(
                "revocation",
                self._revocation,
                interval_s=float(trader.trading.revocation_interval_s),
                logger=log,
            ),
            self._metering_loop,
        ]

    @property
    def loops(self) -> tuple[SupervisedLoop, ...]:
        return tuple(self._loops)

    async def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def stop(self) -> None:
        for loop in self._loops:
            await loop.stop()
        await self._prognosis_db.close()
        await self._reassign_db.close()
        await self._revocation_db.close()

    async def _prognosis(self) -> float | None:
        async with self._prognosis_db.transaction() as conn:
            sent = await self._trader.prognosis_step(conn)
        if sent:
            self._trader.uftp.wake_outbox()
        return None

    def wake_metering(self) -> None:
        """A site's metering was recorded: yesterday may be complete now."""
        self._metering_loop.wake()

    async def _metering(self) -> float | None:
        async with self._prognosis_db.transaction() as conn:
            sent = await self._trader.metering_step(conn)
        if sent:
            self._trader.uftp.wake_outbox()
        return None

    async def _revocation(self) -> float | None:
        async with self._revocation_db.transaction() as conn:
            revoked = await self._trader.revocation_step(conn)
        if revoked:
            self._trader.uftp.wake_outbox()
        return None

    async def _reassign(self) -> float | None:
        async with self._reassign_db.transaction() as conn:
            queued = await self._trader.reassign_step(conn)
        if queued:
            self._on_commands()
        return None


@dataclass
class Aggregator:
    config: CentralConfig
    uftp: CentralUftp
    trader: CentralTrader
    upstream: UpstreamConsumer
    publisher: CommandPublisher
    view: FleetView | None
    components: list[Component] = field(default_factory=list)


def build_aggregator(
    config: CentralConfig,
    bus: FleetBus,
    *,
    clock: Callable[[], datetime] = utc_now,
    poll_s: float = 1.0,
    bus_component: Component | None = None,
) -> Aggregator:
    """The aggregator's components in start order; `bus_component` (the bus itself, when it
    connects at start) goes first, since the portfolio's consumers are made on it."""
    dsn = config.database.dsn.get_secret_value()
    settings = participant_settings(config.uftp, config.congestion_points)
    market = Market(settings.market.time_zone, settings.market.isp_minutes)
    publisher = CommandPublisher(bus, dsn, clock=clock, poll_s=poll_s)

    def handled(outcome: object) -> None:
        if isinstance(outcome, OrderAccepted):
            failpoints.hit(AFTER_ORDER_COMMIT)
            publisher.wake()

    holder: list[CentralTrader] = []

    async def handle(conn: db.Connection, inbound: Any) -> object:
        return await holder[0].handle(conn, inbound)

    uftp = CentralUftp(
        settings, dsn, handler=handle, clock=clock, poll_s=poll_s, on_handled=handled
    )
    trader = CentralTrader(
        uftp, market, config.trading, {m.congestion_point: m.ean for m in config.metering}
    )
    holder.append(trader)
    trading_loops = TradingLoops(trader, dsn, publisher.wake)

    def recorded(kind: str) -> None:
        # The Metering of yesterday goes out when the last site's metering of it arrives,
        # not up to one loop interval later.
        if kind == "metering":
            trading_loops.wake_metering()

    upstream = UpstreamConsumer(bus, dsn, clock=clock, on_recorded=recorded)
    view = None
    if config.http.enabled:
        view = FleetView(dsn, config.http.host, config.http.port, config.trading, clock)
    components: list[Component] = [
        *([] if bus_component is None else [bus_component]),
        Store(config, bus),
        uftp,
        upstream,
        publisher,
        trading_loops,
    ]
    if view is not None:
        components.append(view)
    loops = [*uftp.loops, *upstream.loops, *publisher.loops, *trading_loops.loops]
    components.append(aggregator_watchdog(lambda: uftp.endpoint.bound_port, loops))
    return Aggregator(config, uftp, trader, upstream, publisher, view, components)


def aggregator_watchdog(
    bound_port: Callable[[], int | None], loops: Sequence[SupervisedLoop]
) -> SystemdWatchdog:
    """READY once everything before it serves; pings only while the UFTP endpoint is bound and
    no background loop has died. A dead loop is work that stopped for good and a restart
    cures it (the other process, if any, carries on meanwhile); an unreachable PostgreSQL or
    NATS is not: the loops retry those by themselves, so they withhold no ping."""

    async def uftp_ok() -> str | None:
        return None if bound_port() is not None else "UFTP endpoint down"

    async def loops_ok() -> str | None:
        dead = [loop.name for loop in loops if loop.died]
        return f"stopped for good: {', '.join(dead)}" if dead else None

    return SystemdWatchdog([NamedProbe("uftp", uftp_ok), NamedProbe("loops", loops_ok)])


async def join_site(
    config: CentralConfig,
    bus: FleetBus,
    site: str,
    congestion_point: str,
    credentials_ref: str | None = None,
) -> bool:
    """`flexbridge aggregator add-site`: the site's command consumer first, then the site in
    the portfolio (so no command is ever made for a site without a consumer); True when the
    site is new, False when it was there already. Raises PortfolioError, DatabaseError,
    BusUnavailable."""
    conn = await db.connect(config.database.dsn.get_secret_value())
    try:
        await db.migrate(conn)
        await ensure_portfolio(conn, config)
        cursor = await conn.execute(
            "SELECT 1 FROM congestion_point WHERE ean = %s", (congestion_point,)
        )
        if await cursor.fetchone() is None:
            raise PortfolioError(f"congestion point {congestion_point} is not in the portfolio")
        await bus.ensure_site_consumer(site)
        async with conn.transaction():
            return await add_site(conn, site, congestion_point, credentials_ref)
    finally:
        await conn.close()


def secrets(config: CentralConfig) -> list[str]:
    """What the log formatter masks wherever it appears."""
    return [config.database.dsn.get_secret_value(), config.nats.password.get_secret_value()] + [
        p.oauth.client_secret.get_secret_value() for p in config.uftp.peers if p.oauth
    ]
