"""Composition root: turns a validated Config into the service's components, in start order.

This is the one place that knows every library. Each library gets its own settings object
built from the configuration (the libraries never import `agent`), and the same `Clock`, so a
demo running on simulated time is consistent from OCPP profile timestamps to UFTP expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from agent.control.dispatch import Dispatcher
from agent.fleet.bus import NatsBus
from agent.fleet.connection import FleetConnection
from agent.fleet.link import SiteLink
from agent.fleet.natsconf import site_inbox_prefix
from agent.fleet.ports import BusPort
from agent.fleet.producers import FleetProducers
from agent.interfaces.metrics import AgentMetrics
from agent.interfaces.telemetry.mqtt import MqttSettings, MqttTelemetry
from agent.interfaces.telemetry.publisher import TelemetryPublisher
from agent.interfaces.telemetry.topics import Topics
from agent.interfaces.web.server import StatusServer
from agent.runtime.clock import HIGH_WATER_KEY, Clock, ClockCheck, ClockGuard, SystemClock
from agent.runtime.config import Config
from agent.runtime.faults import CLOCK, LOOP, STORAGE, Faults
from agent.runtime.loops import DeathHook
from agent.runtime.service import Component
from agent.runtime.statedir import StateDirectory
from agent.runtime.systemd import NamedProbe, SystemdWatchdog
from agent.runtime.uftp_settings import participant_settings
from agent.site import forecasting
from agent.site.forecasting import SiteForecaster
from agent.site.model import Site
from agent.site.registry import StoreRegistry
from agent.storage import store
from agent.storage.db import Database, describe_storage_error
from agent.storage.store import SCHEMA
from agent.trading.prognosis import PrognosisService
from agent.trading.trader import Trader
from ocpp_bridge import (
    BridgeSettings,
    CentralSystem,
    Event,
    SecurityProfile,
    SessionEnded,
    SessionStarted,
    UnknownChargerPolicy,
)
from ocpp_bridge import TlsSettings as OcppTls
from ocpp_bridge.local_controller import LocalController
from uftp import store as uftp_store
from uftp.participant import AgrParticipant


def bridge_settings(config: Config) -> BridgeSettings:
    ocpp = config.ocpp
    tls = None
    if ocpp.tls is not None:
        tls = OcppTls(ocpp.tls.cert_file, ocpp.tls.key_file, ocpp.tls.ca_file)
    return BridgeSettings(
        host=ocpp.host,
        port=ocpp.port,
        security_profile=SecurityProfile(ocpp.security_profile),
        allow_security_profile_0=ocpp.allow_security_profile_0,
        tls=tls,
        unknown_chargers=UnknownChargerPolicy(ocpp.unknown_chargers),
        ping_interval_s=ocpp.ping_interval_s,
        heartbeat_interval_s=ocpp.heartbeat_interval_s,
        response_timeout_s=ocpp.response_timeout_s,
        dynamic_validity_s=float(ocpp.dynamic_profile_validity_s),
        session_silence_s=ocpp.session_silence_s,
    )


log = logging.getLogger(__name__)


def commit_sessions_at_once(site: Site) -> Callable[[Event], None]:
    """A site listener that writes a session's start or end at once instead of at the next
    periodic flush: meter energy may wait (bench/wear.py), a session boundary should not."""
    tasks: set[asyncio.Task[None]] = set()

    async def flush() -> None:
        try:
            await site.flush()
        except Exception as exc:  # kept in memory; the periodic flush tries again
            log.warning("could not write a session change at once: %s", exc)

    def listener(event: Event) -> None:
        if not isinstance(event, SessionStarted | SessionEnded):
            return
        try:
            task = asyncio.get_running_loop().create_task(flush())
        except RuntimeError:  # no loop: nothing is running to flush
            return
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return listener


@dataclass
class Agent:
    """The wired agent; the components in start order plus handles tests and the demo use."""

    config: Config
    clock: Clock
    db: Database
    site: Site
    # Stand-alone mode: the site's own UFTP participant, prognoses and trader; a fleet site
    # has none of them (its centre trades) but its link to the centre and what it publishes.
    participant: AgrParticipant | None
    bridge: CentralSystem
    forecaster: SiteForecaster
    prognosis: PrognosisService | None
    trader: Trader | None
    dispatcher: Dispatcher
    components: list[Component] = field(default_factory=list)
    link: SiteLink | None = None
    producers: FleetProducers | None = None
    metrics: AgentMetrics | None = None
    mqtt: MqttTelemetry | None = None
    telemetry: TelemetryPublisher | None = None
    web: StatusServer | None = None
    faults: Faults = field(default_factory=Faults)
    clock_guard: ClockGuard | None = None


StatusServerHealth = Callable[[], Awaitable[list[str]]]


def mqtt_settings(config: Config) -> MqttSettings:
    m = config.mqtt
    return MqttSettings(
        host=m.host,
        port=m.port,
        client_id=m.client_id or f"flexbridge-{config.site.id}",
        username=m.username,
        password=None if m.password is None else m.password.get_secret_value(),
        tls=m.tls,
        ca_file=m.ca_file,
        keepalive_s=m.keepalive_s,
    )


def operations_components(agent: Agent, health: StatusServerHealth) -> list[Component]:
    """MQTT telemetry and the HTTP status page, as configured (docs/operations.md)."""
    config = agent.config
    components: list[Component] = []
    if config.mqtt.enabled:
        topics = Topics(config.mqtt.topic_prefix, config.site.id)
        agent.mqtt = MqttTelemetry(mqtt_settings(config), topics.status)
        agent.telemetry = TelemetryPublisher(
            agent,
            agent.mqtt,
            topics,
            config.mqtt.discovery_prefix,
            min_interval_s=config.mqtt.min_interval_s,
            refresh_s=float(config.mqtt.refresh_interval_s),
        )
        components += [agent.mqtt, agent.telemetry]
    agent.metrics = AgentMetrics(agent, agent.mqtt)
    agent.metrics.attach()
    if config.http.enabled:
        token = config.http.token
        agent.web = StatusServer(
            agent,
            agent.metrics,
            health,
            host=config.http.host,
            port=config.http.port,
            token=None if token is None else token.get_secret_value(),
        )
        components.append(agent.web)
    return components


def clock_guard(
    config: Config, clock: Clock, db: Database, faults: Faults, agent: Agent
) -> ClockGuard | None:
    """The clock guard as configured, its high-water mark kept in the store's meta table."""
    if not config.clock.guard:
        return None

    async def load() -> datetime | None:
        raw = await db.read(lambda c: store.get_meta(c, HIGH_WATER_KEY))
        return None if raw is None else datetime.fromisoformat(raw)

    async def save(mark: datetime) -> None:
        await db.transaction(lambda c: store.set_meta(c, HIGH_WATER_KEY, mark.isoformat()))

    def changed(reason: str | None) -> None:
        if reason is None:
            faults.clear(CLOCK)
            if agent.prognosis is not None:
                agent.prognosis.wake()
        else:
            faults.raise_fault(CLOCK, reason)
        agent.dispatcher.wake()  # a round now, or the withdrawal of the dynamic schedules

    check = ClockCheck(
        max_step_s=float(config.clock.max_step_s),
        settle_s=float(config.clock.settle_s),
        rate=float(getattr(clock, "speed", 1.0)),
    )
    return ClockGuard(clock, check, load=load, save=save, on_change=changed)


def build_agent(config: Config, clock: Clock | None = None, *, bus: BusPort | None = None) -> Agent:
    """The agent for `config`: stand-alone (its own UFTP participant, prognoses and trader) or,
    with `[fleet]`, a site of a fleet (its link to the centre and what it publishes there,
    over `bus`; NATS JetStream unless a test passes its own)."""
    clock = clock or SystemClock()

    def now() -> datetime:
        return clock.now()

    faults = Faults(now)
    db = Database(
        config.storage.database_path,
        SCHEMA,
        extra_migrations=[uftp_store.schema(), forecasting.schema()],
    )

    def storage(error: BaseException | None) -> None:
        if error is None:
            faults.clear(STORAGE)
        else:
            faults.raise_fault(STORAGE, describe_storage_error(error))

    db.on_storage = storage
    site = Site(config, db, clock, flush_interval_s=float(config.storage.flush_interval_s))
    site.subscribe(commit_sessions_at_once(site))
    registry = StoreRegistry(config, db, clock)
    if config.upstream is None:
        bridge = CentralSystem(
            bridge_settings(config), registry, on_event=site.handle, clock=now, sleep=clock.sleep
        )
    else:  # local-controller mode: chargers relayed to the operator's CSMS
        bridge = LocalController(
            replace(bridge_settings(config), profile_layout=config.upstream.profiles.layout()),
            registry,
            upstream=config.upstream.settings(config.storage.state_directory / "upstream"),
            on_event=site.handle,
            clock=now,
            sleep=clock.sleep,
        )
    # Sessions open when the agent stopped go back to the bridge before it listens.
    site.resume_into = bridge.resume_sessions
    forecaster = SiteForecaster(config, db, clock)
    dispatcher = Dispatcher(config, db, site, bridge, forecaster, clock)

    async def database_ok() -> str | None:
        await db.read(lambda c: c.execute("SELECT 1").fetchone())
        return None

    async def ocpp_ok() -> str | None:
        return None if bridge.port is not None else "OCPP listener is not serving"

    probes = [NamedProbe("database", database_ok), NamedProbe("ocpp", ocpp_ok)]
    agent = Agent(config, clock, db, site, None, bridge, forecaster, None, None, dispatcher)
    agent.faults = faults
    # What the market side adds: stand-alone, before the bridge (as ever); in a fleet, the
    # link to the centre before the bridge and the producers after it.
    market: list[Component] = []
    publishers: list[Component] = []
    if config.fleet is None:
        # The agent's database is the file's one writer: uftp's inbox and outbox go through it.
        participant = AgrParticipant(
            participant_settings(config.uftp, config.congestion_points), db, clock=now
        )
        prognosis = PrognosisService(config, db, participant, forecaster, site, clock)
        trader = Trader(
            config, db, participant, forecaster, prognosis, site, clock, on_order=dispatcher.wake
        )
        agent.participant, agent.prognosis, agent.trader = participant, prognosis, trader

        async def uftp_ok() -> str | None:
            return None if participant.endpoint.bound_port is not None else "UFTP endpoint down"

        probes.append(NamedProbe("uftp", uftp_ok))
        market = [participant]
        publishers = [prognosis, trader]
    else:
        if bus is None:
            connection = fleet_connection(config)
            market.append(connection)
            bus = connection
        # A command applied (or a newer one replacing it) changes the caps: a round at once.
        link = SiteLink(db, bus, config.fleet.fleet_site_id(config.site.id), clock, dispatcher.wake)
        producers = FleetProducers(config, db, site, forecaster, link, clock)
        agent.link, agent.producers = link, producers
        market.append(link)
        publishers = [producers]

    async def loops_ok() -> str | None:
        # A loop that stopped for good is work that stopped (dispatch, the flush, delivery):
        # a restart cures it, so the pings stop and systemd restarts the agent.
        fault = faults.active.get(LOOP)
        return None if fault is None else fault.reason

    probes.append(NamedProbe(LOOP, loops_ok))
    watchdog = SystemdWatchdog(probes)

    def loop_died(name: str, error: BaseException | None) -> None:
        faults.raise_fault(LOOP, f"{name} stopped: {error!r}")

    owners: list[_LoopOwner] = [site, dispatcher]
    if agent.participant is not None:
        owners.append(agent.participant.outbox)
    owners += [c for c in (agent.prognosis, agent.trader, agent.link, agent.producers) if c]
    for owner in owners:
        owner.on_loop_death = loop_died

    guard = clock_guard(config, clock, db, faults, agent)
    agent.clock_guard = guard
    if guard is not None:
        holders: list[_Holder] = [dispatcher]
        holders += [h for h in (agent.participant, agent.trader, agent.prognosis) if h]
        if agent.link is not None:
            holders.append(agent.link)
        for holder in holders:
            holder.hold = guard.hold

    async def health() -> list[str]:
        # The storage and clock faults show on /health but withhold no watchdog ping: a
        # restart cures neither. The loop fault is also a probe (above): a restart cures it.
        problems = await watchdog.check()
        return [*problems, *(p for p in faults.problems() if p not in problems)]

    agent.components = [
        StateDirectory(config.storage.state_directory),
        db,
        # Before everything time-bound: a wrong clock holds them from their first step.
        *([guard] if guard is not None else []),
        site,
        *market,
        bridge,
        *publishers,
        dispatcher,
        *operations_components(agent, health),
        # Last: READY=1 tells systemd that everything before it is serving.
        watchdog,
    ]
    return agent


def fleet_connection(config: Config) -> FleetConnection:
    """The site's NATS connection as its `[fleet]` section says, made in the background."""
    fleet = config.fleet
    if fleet is None or fleet.password is None:
        raise ValueError("fleet_connection needs a [fleet] section with its password")
    site_id = fleet.fleet_site_id(config.site.id)
    password = fleet.password.get_secret_value()

    async def connect() -> NatsBus:
        return await NatsBus.connect(
            fleet.servers,
            user=fleet.bus_user(config.site.id),
            password=password,
            name=f"flexbridge-site-{site_id}",
            inbox_prefix=site_inbox_prefix(site_id),
        )

    return FleetConnection(connect)


class _LoopOwner(Protocol):
    on_loop_death: DeathHook | None


class _Holder(Protocol):
    hold: Callable[[], str | None]


def build_components(config: Config) -> list[Component]:
    return build_agent(config).components
