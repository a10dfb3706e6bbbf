"""`flexbridge demo --fleet`: a small fleet under one central aggregator, on loopback.

Three site agents in fleet mode (the agent as `build_agent` makes it from a `[fleet]`
configuration: OCPP to simulated stations, forecaster, producers, dispatch, SQLite) on two
congestion points, a 3-node NATS JetStream cluster and a PostgreSQL server in a temporary
directory (`agent.demo.infra`), the central aggregator in this process (`build_aggregator`
over `CentralNatsBus`, started as `flexbridge aggregator run` starts it) and the simulated
DSO of the normal demo (`uftp.dso`) trading with the aggregator.

Time is real: every party shares one clock running at wall-clock speed. The aggregator and the
sites work on 15-minute ISPs, so waiting for the ordered ISP to begin could take up to a
quarter of an hour; once every site has applied its command the clock skips ahead to it (as
the normal demo skips the night), and the chargers' limits are read there.

The story, one step per timeline label:
infra     nats-server cluster and PostgreSQL started;
central   the aggregator and the DSO up;
join      each site joins the portfolio (its command consumer first), its agent starts and
          its stations boot with an EV each;
prognosis the sites' forecasts reach the centre, one D-prognosis per congestion point;
request   the DSO asks for less load at the first congestion point;
offer     the aggregator's offer from the sites' pushed flexibility;
order     the DSO orders it; the order splits into one command per site;
commands  the sites apply their commands; at the ordered ISP their chargers follow them;
stop      everything stopped, the temporary directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
import tempfile
import time as wall
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from nacl.signing import SigningKey

from agent.demo.defaults import (
    DEMO_AGR_DOMAIN,
    DEMO_CONGESTION_POINT,
    DEMO_DSO_DOMAIN,
    DEMO_TIMEZONE,
    seed_history,
    simulated_dso,
)
from agent.demo.infra import LocalNats, LocalPostgres, check_installed, free_port
from agent.demo.report import Timeline, TimelineLog
from agent.runtime.clock import ScaledClock
from agent.trading.market import Market
from uftp import keys
from uftp.dso import Received, prognosis_power
from uftp.models import (
    AvailableRequested,
    DPrognosis,
    FlexOffer,
    FlexRequest,
    FlexRequestISP,
)

CP_A = DEMO_CONGESTION_POINT
CP_B = "ean.871685900012636544"
SITES = {"north": CP_A, "south": CP_A, "harbour": CP_B}
STATIONS_PER_SITE = 3
ISP = timedelta(minutes=15)
WAIT_S = 60.0
# The timeline's step labels, in story order (the module docstring).
STEPS = ("infra", "central", "join", "prognosis", "request", "offer", "order", "commands", "stop")


class FleetDemoError(RuntimeError):
    """The story did not unfold: an answer was missing or unexpected."""


@dataclass
class FleetResult:
    timeline: list[str] = field(default_factory=list)
    order_id: str = ""
    applied: dict[str, str] = field(default_factory=dict)  # site -> ack outcome
    real_seconds: float = 0.0


@dataclass
class SiteRun:
    site: str
    congestion_point: str
    agent: Any
    stations: Any  # SimulatedSite


def site_config(
    directory: Path, site: str, cp: str, servers: list[str], password: str, stations: list[Any]
) -> Any:
    """A fleet-mode site: its stations behind a 60 kW connection, no UFTP identity."""
    from agent.demo.simulation import DEFAULT_PASSWORD, charger_config
    from agent.runtime.config import Config

    directory.mkdir(parents=True, exist_ok=True)
    return Config.model_validate(
        {
            "site": {
                "id": site,
                "name": f"flexbridge demo site {site}",
                "timezone": DEMO_TIMEZONE,
                "connection_capacity_w": 60_000,
                "safe_limit_w": 30_000,
            },
            "ocpp": {
                "host": "127.0.0.1",
                "port": free_port(),
                "security_profile": 1,
                "unknown_chargers": "reject",
                "chargers": charger_config(stations, DEFAULT_PASSWORD),
            },
            "congestion_points": [{"entity_address": cp, "dso_domain": DEMO_DSO_DOMAIN}],
            "storage": {"state_directory": str(directory)},
            "clock": {"guard": False},  # the demo's clock skips ahead once
            "http": {"enabled": False},
            "fleet": {
                "servers": servers,
                "password": password,
                "heartbeat_s": 5,
                "market_timezone": DEMO_TIMEZONE,
                # Tomorrow's forecast only late in the day: the demo trades today.
                "forecast_time": "23:45",
            },
        }
    )


def central_config(
    state_dir: Path, dsn: str, nats: LocalNats, dso_key: SigningKey, dso_port: int
) -> Any:
    """The aggregator: one UFTP identity for both congestion points; no site listed (they
    join one by one, as `flexbridge aggregator add-site` adds them)."""
    from agent.central.config import CentralConfig

    key_file = state_dir / "agr-signing.key"
    keys.write_signing_key(key_file, keys.generate_signing_key())
    return CentralConfig.model_validate(
        {
            "uftp": {
                "domain": DEMO_AGR_DOMAIN,
                "signing_key_file": str(key_file),
                "host": "127.0.0.1",
                "port": free_port(),
                "market_timezone": DEMO_TIMEZONE,
                "peers": [
                    {
                        "domain": DEMO_DSO_DOMAIN,
                        "role": "DSO",
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": f"http://127.0.0.1:{dso_port}/shapeshifter/api/v3/message",
                    }
                ],
            },
            "database": {"dsn": dsn},
            "nats": {"servers": nats.client_urls, "password": nats.central_password},
            "congestion_points": [
                {"entity_address": cp, "dso_domain": DEMO_DSO_DOMAIN} for cp in (CP_A, CP_B)
            ],
            # Tomorrow's D-prognosis only late in the day: the demo is about today.
            "trading": {"prognosis_time": "23:45"},
            "http": {"enabled": False},
        }
    )


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = wall.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if wall.monotonic() > deadline:
            raise FleetDemoError(f"not within {timeout_s:.0f} s: {what}")
        await asyncio.sleep(0.25)


def _kw(watts: float) -> str:
    return f"{watts / 1000:.1f} kW"


def _cp(ean: str) -> str:
    return "CP-A" if ean == CP_A else "CP-B"


def flex_request(
    market: Market, day: date, first: int, count: int, now: datetime, expires: datetime
) -> FlexRequest:
    """Reduce the load at CP-A by 10-20 kW in ISPs first..first+count-1; the rest of the day
    available."""
    total = market.count(day)
    elements = []
    if first > 1:
        elements.append(
            FlexRequestISP(
                disposition=AvailableRequested.AVAILABLE,
                min_power=0,
                max_power=2_000_000,
                start=1,
                duration=first - 1,
            )
        )
    elements.append(
        FlexRequestISP(
            disposition=AvailableRequested.REQUESTED,
            min_power=-20_000,
            max_power=-10_000,
            start=first,
            duration=count,
        )
    )
    if first + count <= total:
        elements.append(
            FlexRequestISP(
                disposition=AvailableRequested.AVAILABLE,
                min_power=0,
                max_power=2_000_000,
                start=first + count,
                duration=total - first - count + 1,
            )
        )
    return FlexRequest(
        sender_domain=DEMO_DSO_DOMAIN,
        recipient_domain=DEMO_AGR_DOMAIN,
        time_stamp=now,
        isp_duration=ISP,
        time_zone=DEMO_TIMEZONE,
        period=day,
        congestion_point=CP_A,
        revision=1,
        # The aggregator's offer expires with the request at the latest, and the DSO refuses
        # an offer that outlives the ISPs it is about.
        expiration_date_time=expires,
        isps=tuple(elements),
    )


async def run_fleet_demo(state_dir: Path, *, out: TextIO = sys.stdout) -> FleetResult:
    """The story in the module docstring; stops everything it started, whatever happens."""
    began = wall.monotonic()
    clock = ScaledClock(datetime.now(UTC), 1.0)
    timeline = Timeline(DEMO_TIMEZONE, out)
    timeline.clock = clock
    result = FleetResult()
    # The parties' warnings join the timeline at their time (as in the normal demo).
    warnings = TimelineLog(timeline)
    logging.getLogger().addHandler(warnings)
    try:
        async with contextlib.AsyncExitStack() as exits:
            await _story(state_dir, clock, timeline, exits, result)
        timeline.step = "stop"
        timeline.say(
            "stopped: the site agents and their stations, the DSO, the aggregator, "
            "nats-server and PostgreSQL"
        )
    finally:
        logging.getLogger().removeHandler(warnings)
        result.timeline = timeline.lines
    result.real_seconds = wall.monotonic() - began
    return result


async def _story(
    state_dir: Path,
    clock: ScaledClock,
    timeline: Timeline,
    exits: contextlib.AsyncExitStack,
    result: FleetResult,
) -> None:
    from agent.app import build_agent
    from agent.central import db
    from agent.central.app import build_aggregator, join_site
    from agent.central.natsbus import CentralNatsBus
    from agent.demo.simulation import DEFAULT_PASSWORD, SessionGenerator, SimulatedSite
    from agent.demo.simulation import default_fleet as stations_of
    from agent.fleet.producers import floor_isp
    from agent.runtime.service import Service
    from forecaster.cache import warm_up

    say = timeline.say
    market = Market(DEMO_TIMEZONE, 15)
    today = market.today(clock.now())

    # --- infra
    timeline.step = "infra"
    check_installed()
    passwords = {site: secrets.token_urlsafe(12) for site in SITES}
    nats = LocalNats(state_dir / "nats", passwords)
    exits.callback(nats.stop)
    await asyncio.to_thread(nats.start)
    postgres = LocalPostgres(state_dir)
    exits.callback(postgres.stop)
    await asyncio.to_thread(postgres.start)
    dsn = await asyncio.to_thread(postgres.create_database, "flexbridge")
    say(
        f"nats-server: 3-node JetStream cluster on {', '.join(nats.client_urls)} (streams "
        f"replicated 3 times); PostgreSQL 15 on 127.0.0.1:{postgres.port}"
    )

    # --- central
    timeline.step = "central"
    dso_key = SigningKey.generate()
    dso_port = free_port()
    config = central_config(state_dir, dsn, nats, dso_key, dso_port)
    bus = CentralNatsBus(config.nats)
    aggregator = build_aggregator(config, bus, clock=clock.now, poll_s=0.5, bus_component=bus)
    service = Service(aggregator.components)
    await service.start()
    exits.push_async_callback(service.stop)
    dso = simulated_dso(
        DEMO_DSO_DOMAIN,
        dso_key,
        DEMO_AGR_DOMAIN,
        keys.load_signing_key(config.uftp.signing_key_file),
        config.uftp.port,
        dso_port,
        state_dir / "dso.sqlite",
        clock=clock.now,
    )
    await dso.start()
    exits.push_async_callback(dso.stop)
    say(
        f"aggregator up: UFTP {DEMO_AGR_DOMAIN} for 2 congestion points (CP-A {CP_A}, "
        f"CP-B {CP_B}), PostgreSQL state, NATS bus; DSO {DEMO_DSO_DOMAIN}"
    )

    # --- join
    timeline.step = "join"
    await asyncio.to_thread(warm_up)
    runs: list[SiteRun] = []
    for n, (site, cp) in enumerate(SITES.items()):
        await join_site(config, bus, site, cp)
        stations = stations_of(STATIONS_PER_SITE, prefix=f"{site.upper()}-", meter_interval_s=30)
        site_cfg = site_config(
            state_dir / "sites" / site, site, cp, nats.client_urls, passwords[site], stations
        )
        generator = SessionGenerator(stations, DEMO_TIMEZONE, seed=11 + n)
        history = await asyncio.to_thread(seed_history, site_cfg, generator, today, 28, cp)
        agent = build_agent(site_cfg, clock)
        agent.dispatcher.control_s = 5.0
        site_service = Service(agent.components)
        await site_service.start()
        exits.push_async_callback(site_service.stop)
        url = f"ws://127.0.0.1:{site_cfg.ocpp.port}/ocpp"
        sim = SimulatedSite(url, stations, clock, password=DEFAULT_PASSWORD)
        exits.push_async_callback(sim.stop)
        await sim.start()
        await asyncio.wait_for(sim.wait_ready(), WAIT_S)
        await _plug_in_evs(sim, clock.now(), n)
        runs.append(SiteRun(site, cp, agent, sim))
        say(
            f"site {site} joined {_cp(cp)}: agent in fleet mode ({history} sessions of "
            f"history), {sim.online} stations online, each with an EV charging"
        )
    for run in runs:
        assert run.agent.producers is not None  # fleet mode
        run.agent.producers.wake_flex()

    # --- prognosis
    timeline.step = "prognosis"

    async def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async with db.Session(dsn, "demo").transaction() as conn:
            cursor = await conn.execute(sql, params)
            return list(await cursor.fetchall())

    async def forecasts_in() -> bool:
        found = await rows("SELECT DISTINCT site FROM site_forecast")
        return len(found) == len(SITES)

    await eventually(forecasts_in, "every site's forecast at the centre")
    for site, count in await rows(
        "SELECT site, count(*) FROM site_forecast GROUP BY site ORDER BY site"
    ):
        say(f"forecast from {site} recorded at the centre ({count} message(s) over NATS)")
    # The trading loop sends D-prognoses every minute; the demo does not wait for its tick.
    session = db.Session(dsn, "demo-prognosis")
    try:
        async with session.transaction() as conn:
            await aggregator.trader.prognosis_step(conn)
    finally:
        await session.close()
    aggregator.uftp.wake_outbox()
    for cp in (CP_A, CP_B):

        def is_prognosis(o: object, cp: str = cp) -> bool:
            return (
                isinstance(o, Received)
                and isinstance(o.message, DPrognosis)
                and o.message.congestion_point == cp
                and o.message.period == today
            )

        received = await dso.wait_handled(is_prognosis, WAIT_S)
        if not isinstance(received, Received) or not isinstance(received.message, DPrognosis):
            raise FleetDemoError(f"expected a D-Prognosis, got {received!r}")
        prognosis = received.message
        by_isp = prognosis_power(prognosis)
        power = [by_isp.get(k, 0) for k in range(1, market.count(today) + 1)]
        members = [s for s, c in SITES.items() if c == cp]
        [(missing, substituted)] = await rows(
            "SELECT missing_sites, substituted_sites FROM prognosis WHERE message_id = %s",
            prognosis.message_id,
        )
        flagged = ""
        if missing or substituted:
            # Started mid-day: no site forecast the ISPs already past when it joined.
            flagged = (
                f"; flagged for the ISPs before the sites joined: missing {list(missing)}, "
                f"substituted {list(substituted)}"
            )
        say(
            f"D-Prognosis {_cp(cp)} revision {prognosis.revision}: aggregated from "
            f"{' + '.join(members)}, {sum(power) / 4000:.0f} kWh today, peak "
            f"{_kw(max(power))}{flagged}; DSO: "
            + ("accepted" if received.accepted else "rejected: " + "; ".join(received.rejections))
        )

    # --- request
    timeline.step = "request"

    async def envelopes_in() -> bool:
        found = await rows("SELECT DISTINCT site FROM site_flex WHERE congestion_point = %s", CP_A)
        return len(found) == 2

    await eventually(envelopes_in, "the CP-A sites' flexibility at the centre")
    now = clock.now()
    first_start = floor_isp(now) + ISP
    if (first_start - now).total_seconds() < 120:
        first_start += ISP
    if market.today(first_start + ISP) != today:
        raise FleetDemoError(
            "too close to the end of the market day for an order on two ISPs; run it again "
            "after midnight (market time)"
        )
    first = next(i.index for i in market.isps(today) if i.start == first_start)
    request = flex_request(market, today, first, 2, now, first_start)
    await dso.send(request)
    window = f"{first_start.astimezone(timeline.zone):%H:%M}-" + (
        f"{(first_start + 2 * ISP).astimezone(timeline.zone):%H:%M}"
    )
    say(
        f"DSO FlexRequest at CP-A: reduce the load by 10-20 kW in {window} "
        f"(ISPs {first}-{first + 1})"
    )

    # --- offer
    timeline.step = "offer"

    def is_offer(o: object) -> bool:
        return isinstance(o, Received) and isinstance(o.message, FlexOffer)

    try:
        answered = await dso.wait_handled(is_offer, WAIT_S)
    except TimeoutError:
        why = await rows("SELECT status, note FROM flex_request")
        raise FleetDemoError(f"no FlexOffer from the aggregator: {why}") from None
    if not isinstance(answered, Received) or not isinstance(answered.message, FlexOffer):
        raise FleetDemoError(f"expected a FlexOffer, got {answered!r}")
    offer = answered.message
    option = offer.offer_options[0]
    offered = ", ".join(
        f"{_kw(i.power)} in ISPs {i.start}-{i.start + i.duration - 1}" for i in option.isps
    )
    say(
        f"FlexOffer: {offered} for EUR {option.price}, from the flexibility north and south "
        f"pushed to the centre (no call to the sites); DSO: "
        + ("accepted" if answered.accepted else "rejected: " + "; ".join(answered.rejections))
    )

    # --- order
    timeline.step = "order"
    order = await dso.order_offer(offer, order_reference="DEMO-FLEET-ORD-1")
    result.order_id = order.message_id

    async def commands_made() -> list[tuple[Any, ...]]:
        return await rows(
            "SELECT site, seq, payload FROM command WHERE order_id = %s ORDER BY site",
            order.message_id,
        )

    commands = await eventually(commands_made, "the order's commands")
    say(
        f"DSO FlexOrder {order.order_reference} (EUR {order.price}); the aggregator accepted "
        f"it and split it into {len(commands)} commands"
    )
    caps: dict[str, dict[datetime, float]] = {}
    for site, seq, payload in commands:
        begin = datetime.fromisoformat(payload["start"])
        caps[site] = {
            begin + k * ISP: float(c) for k, c in enumerate(payload["cap_w"]) if c is not None
        }
        listed = ", ".join(
            f"{_kw(c)} at {t.astimezone(timeline.zone):%H:%M}" for t, c in caps[site].items()
        )
        until = datetime.fromisoformat(payload["valid_until"]).astimezone(timeline.zone)
        say(f"command to {site}: seq {seq}, caps {listed}; valid until {until:%H:%M}")

    # --- commands
    timeline.step = "commands"

    async def acked() -> list[tuple[Any, ...]] | None:
        found = await rows(
            "SELECT site, ack_outcome FROM command WHERE order_id = %s ORDER BY site",
            order.message_id,
        )
        return found if found and all(r[1] is not None for r in found) else None

    for site, outcome in await eventually(acked, "every command acked by its site"):
        result.applied[site] = str(outcome)
        say(f"{site} {outcome} its command in one SQLite transaction and acked it over NATS")
    for isp_start in (first_start, first_start + ISP):
        skip = (isp_start - clock.now()).total_seconds() + 30
        if skip > 0:
            clock.advance(skip)
            say(
                f"skipped {skip / 60:.0f} minutes to the ordered ISP at "
                f"{isp_start.astimezone(timeline.zone):%H:%M} (every party shares this clock)"
            )
        for run in runs:
            cap = caps.get(run.site, {}).get(isp_start)
            if cap is None:
                continue
            chargers: list[Any] = list(run.stations.stations.values())

            def within(chargers: list[Any] = chargers, cap: float = cap) -> bool:
                limit = sum(c.limit_w(0) for c in chargers)
                drawn = sum(c.power_w(e) for c in chargers for e in c.evses)
                return bool(limit <= cap + 1.0 and drawn <= limit + 1.0)

            await eventually(within, f"{run.site}'s chargers within its cap of {_kw(cap)}")
            limit = sum(c.limit_w(0) for c in chargers)
            say(
                f"{run.site}: its {len(chargers)} chargers limited to {_kw(limit)} together "
                f"(cap {_kw(cap)}); the EVs draw {_kw(run.stations.power_w())}"
            )
    timeline.step = "stop"


async def _plug_in_evs(sim: Any, now: datetime, n: int) -> None:
    """An EV at each station's first EVSE, staying the afternoon, wanting 40 kWh."""
    from agent.demo.simulation import PlannedSession

    for i, spec in enumerate(sim.fleet):
        sim.plug_in(
            PlannedSession(
                charger_id=spec.charger_id,
                evse_id=1,
                arrival=now,
                departure=now + timedelta(hours=5),
                energy_needed_wh=40_000.0,
                ev_max_power_w=11_000.0,
                ev_phases=3,
                id_token=f"FLEET{n}{i:02d}",
            )
        )
    await asyncio.sleep(0)


def fleet_state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="flexbridge-fleet-demo-"))
