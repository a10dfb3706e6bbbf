"""`flexbridge demo`: a day of flexibility trading in about a minute, on embedded defaults.

Everything is real except time and the other parties: the agent runs as in production (SQLite
store, OCPP listener, UFTP endpoint with signed XML, forecaster, trader, dispatcher) on loopback
sockets, against 20 simulated charging stations (both OCPP versions, EVs drawn from the Caltech
sessions) and a simulated DSO built on `uftp`'s DSO role. A `ScaledClock` runs the morning at
`speed` times real time; the quiet afternoon and night are skipped to settle the day.

The story:
1. 28 days of the site's history are in the store (the same session generator, uncontrolled);
   the agent sends today's D-prognosis.
2. The DSO sees its congestion limit exceeded in the morning peak and sends a FlexRequest.
3. The agent sizes a FlexOffer from the EVs' flexibility; the DSO orders it.
4. The agent sends the D-prognosis revision including the order and, when the ordered ISPs come,
   caps the site through the chargers' dynamic profiles; the EVs catch up afterwards.
5. The next night the DSO settles the day from its own metering; the agent checks every item
   against its own measurements.
It prints a short timeline and writes an HTML report with the chart of prognosis, measured load
and ordered flexibility per ISP.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO

from nacl.signing import SigningKey

from agent.runtime.clock import ScaledClock
from agent.runtime.config import Config
from agent.runtime.statedir import StateDirectory
from agent.storage import store, trades
from agent.storage.db import apply_migrations, connect
from agent.storage.store import SCHEMA
from agent.trading.market import Market
from uftp import keys

log = logging.getLogger(__name__)

DEMO_AGR_DOMAIN = "agr.flexbridge-demo.org"
DEMO_DSO_DOMAIN = "dso.flexbridge-demo.org"
DEMO_CONGESTION_POINT = "ean.871685900012636543"
DEMO_TIMEZONE = "Europe/Amsterdam"
DEMO_CHARGERS = 20
HISTORY_DAYS = 28
CAPACITY_W = 150_000
SAFE_LIMIT_W = 100_000


def _fleet(meter_interval_s: float = 120.0) -> list[Any]:
    from agent.demo.simulation import default_fleet

    return default_fleet(DEMO_CHARGERS, meter_interval_s=meter_interval_s)


def demo_config(
    state_dir: Path,
    ocpp_port: int = 0,
    uftp_port: int = 0,
    dso_port: int = 0,
    dso_key: SigningKey | None = None,
    http_port: int = 0,
) -> Config:
    """The demo site: 20 stations behind a 150 kW connection, one (simulated) DSO peer."""
    from agent.demo.simulation import DEFAULT_PASSWORD, charger_config

    state_dir.mkdir(parents=True, exist_ok=True)
    agr_key_file = state_dir / "agr-signing.key"
    if not agr_key_file.exists():
        keys.write_signing_key(agr_key_file, keys.generate_signing_key())
    dso_key = dso_key or keys.generate_signing_key()
    return Config.model_validate(
        {
            "site": {
                "id": "demo",
                "name": "flexbridge demo site",
                "timezone": DEMO_TIMEZONE,
                "connection_capacity_w": CAPACITY_W,
                "safe_limit_w": SAFE_LIMIT_W,
            },
            "ocpp": {
                "host": "127.0.0.1",
                "port": ocpp_port or 9000,
                "security_profile": 1,
                "unknown_chargers": "reject",
                # Hours of simulated time pass in seconds; refreshes keep up on the same clock.
                "dynamic_profile_validity_s": 900,
                "chargers": charger_config(_fleet(), DEFAULT_PASSWORD),
            },
            "uftp": {
                "domain": DEMO_AGR_DOMAIN,
                "signing_key_file": str(agr_key_file),
                "host": "127.0.0.1",
                "port": uftp_port or 8443,
                "market_timezone": DEMO_TIMEZONE,
                "peers": [
                    {
                        "domain": DEMO_DSO_DOMAIN,
                        "role": "DSO",
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": f"http://127.0.0.1:{dso_port or 8444}"
                        "/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [
                {"entity_address": DEMO_CONGESTION_POINT, "dso_domain": DEMO_DSO_DOMAIN}
            ],
            "storage": {"state_directory": str(state_dir)},
            # Simulated time runs fast and skips the night: no wall clock to guard.
            "clock": {"guard": False},
            "trading": {"offer_validity_min": 90, "offer_lead_time_min": 15},
            "http": {"host": "127.0.0.1", "port": http_port or 8080},
        }
    )


def simulated_dso(
    domain: str,
    key: SigningKey,
    agr_domain: str,
    agr_key: SigningKey,
    agr_port: int,
    port: int,
    database: Path,
    *,
    time_zone: str = DEMO_TIMEZONE,
    clock: Callable[[], datetime] | None = None,
) -> Any:
    """`uftp`'s simulated DSO, peered with one AGR on loopback (the demo, benchmarks)."""
    from uftp.dso import DsoParticipant
    from uftp.models import Role
    from uftp.settings import MarketSettings, ParticipantSettings, PeerSettings

    settings = ParticipantSettings(
        domain=domain,
        role=Role.DSO,
        signing_key=key,
        peers=(
            PeerSettings(
                agr_domain,
                Role.AGR,
                (keys.public_key_b64(agr_key),),
                f"http://127.0.0.1:{agr_port}/shapeshifter/api/v3/message",
            ),
        ),
        market=MarketSettings(time_zone, 15),
        port=port,
    )
    if clock is None:
        return DsoParticipant(settings, database)
    return DsoParticipant(settings, database, clock=clock)


def demo_state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="flexbridge-demo-"))


def numba_cache_dir() -> Path:
    """Kernels compiled once per machine for the demo, not once per (temporary) run."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flexbridge" / "numba-cache"


# --- history -------------------------------------------------------------------------------------


def seed_history(
    config: Config,
    generator: Any,
    today: date,
    days: int = HISTORY_DAYS,
    congestion_point: str = DEMO_CONGESTION_POINT,
) -> int:
    """Write `days` of uncontrolled charging before `today` into the store: finished sessions
    (for calibration and offer scenarios), energy per ISP per charger and the uptime that says
    those ISPs were measured. Returns the number of sessions."""
    from agent.demo.simulation import drawn_power_w

    first = today - timedelta(days=days)
    plan = generator.plan(first, days)
    history = generator.power_history(first, days, config.uftp.isp_duration_min)
    isp_s = config.uftp.isp_duration_min * 60
    start = history.start
    end = start + timedelta(seconds=isp_s * history.values.shape[1])
    cp = congestion_point
    specs = {spec.charger_id: spec for spec in generator.fleet}
    conn = connect(config.storage.database_path)
    try:
        apply_migrations(conn, "agent_schema", SCHEMA)
        from uftp import store as uftp_store

        uftp_store.migrate(conn)
        conn.execute("BEGIN")
        store.record_alive(conn, start, end)
        entries = []
        origin = int(start.timestamp())
        for row, spec in enumerate(generator.fleet):
            for t, power in enumerate(history.values[row]):
                if power > 0:
                    entries.append((spec.charger_id, origin + t * isp_s, cp, power * isp_s / 3600))
        store.add_isp_energy(conn, entries)
        count = 0
        for s in plan.sessions:
            if s.departure > end:
                continue
            delivered = min(
                s.energy_needed_wh,
                drawn_power_w(specs[s.charger_id], s)
                * (s.departure - s.arrival).total_seconds()
                / 3600,
            )
            store.upsert_session(
                conn,
                store.SessionRow(
                    session_id=f"{s.charger_id}/hist-{s.id_token}-{int(s.arrival.timestamp())}",
                    charger_id=s.charger_id,
                    evse_id=s.evse_id,
                    congestion_point=cp,
                    started_at=s.arrival,
                    ended_at=s.departure,
                    energy_wh=delivered,
                    requested_energy_wh=s.requested_energy_wh,
                    departure_at=s.stated_departure,
                    soc_percent=None,
                    id_token_hash=store.token_hash(s.id_token),
                    stop_reason="EVDisconnected",
                ),
                s.departure,
            )
            count += 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    return count


# --- the story ---------------------------------------------------------------------------------


@dataclass
class DemoResult:
    day: date
    timeline: list[str] = field(default_factory=list)
    report: Path | None = None
    orders: int = 0
    offers: int = 0
    settlement_statuses: list[str] = field(default_factory=list)
    delivered_w: dict[int, float] = field(default_factory=dict)
    ordered_w: dict[int, float] = field(default_factory=dict)
    real_seconds: float = 0.0


class Timeline:
    def __init__(self, clock: ScaledClock, zone: str, out: TextIO) -> None:
        from zoneinfo import ZoneInfo

        self.clock = clock
        self.zone = ZoneInfo(zone)
        self.out = out
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        local = self.clock.now().astimezone(self.zone)
        line = f"{local:%a %H:%M}  {text}"
        self.lines.append(line)
        print(line, file=self.out, flush=True)


class TimelineLog(logging.Handler):
    """The agent's warnings and errors as timeline lines on simulated time, so the story and
    what went wrong in it read in one order (wall-clock log lines would not fit in)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.out = out
        self.timeline: Timeline | None = None

    def emit(self, record: logging.LogRecord) -> None:
        from agent.runtime.logs import record_fields

        try:
            fields = record_fields(record)
            detail = ", ".join(f"{k}={v}" for k, v in fields.items())
            text = f"{record.levelname.lower()} from {record.name}: {record.getMessage()}"
            if detail:
                text += f" ({detail})"
            if self.timeline is not None:
                self.timeline.say(text)
            else:
                print(f"           {text}", file=self.out, flush=True)
        except Exception:
            self.handleError(record)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kw(watts: float) -> str:
    return f"{watts / 1000:.1f} kW"


def _congestion(
    power_w: list[int], market: Market, day: date, earliest: datetime
) -> tuple[range, int, int]:
    """The DSO's view: ISPs of the morning peak above its limit (80 % of the peak)."""
    isps = market.isps(day)
    window = [
        i
        for i in isps
        if time(8) <= i.start.astimezone(_zone()).time() < time(12) and i.start >= earliest
    ]
    if not window:
        window = [i for i in isps if i.start >= earliest][:8]
    peak = max(power_w[i.index - 1] for i in window)
    limit = int(peak * 0.8 // 1000 * 1000)
    over = [i.index for i in window if power_w[i.index - 1] > limit]
    if not over:
        best = max(window, key=lambda i: power_w[i.index - 1]).index
        over = [best, best + 1]
    first, last = min(over), max(over)
    return range(first, last + 1), peak, limit


def _zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(DEMO_TIMEZONE)


def _local(instant: datetime) -> str:
    return f"{instant.astimezone(_zone()):%H:%M}"


async def run_demo(
    state_dir: Path,
    *,
    speed: float = 360.0,
    seed: int = 7,
    occupancy: float = 2.5,
    out: TextIO = sys.stdout,
    keep_running: bool = False,
    on_ready: Callable[[Any], None] | None = None,
    report: Path | None = None,
    log_to_timeline: bool = False,
) -> DemoResult:
    """Run the story; returns what happened and writes the HTML report to `report`
    (default: `report.html` in `state_dir`). With `log_to_timeline` the agent's warnings
    appear in the timeline on simulated time instead of on stderr."""
    import time as wall

    began = wall.monotonic()
    warnings = TimelineLog(out) if log_to_timeline else None
    if warnings is not None:
        logging.getLogger().addHandler(warnings)
    try:
        return await _story(
            state_dir, speed, seed, occupancy, out, keep_running, on_ready, report, warnings, began
        )
    finally:
        if warnings is not None:
            logging.getLogger().removeHandler(warnings)


async def _story(
    state_dir: Path,
    speed: float,
    seed: int,
    occupancy: float,
    out: TextIO,
    keep_running: bool,
    on_ready: Callable[[Any], None] | None,
    report: Path | None,
    warnings: TimelineLog | None,
    began: float,
) -> DemoResult:
    import time as wall

    from agent.app import build_agent
    from agent.demo.simulation import DEFAULT_PASSWORD, SessionGenerator, SimulatedSite
    from forecaster.cache import warm_up
    from uftp import calendar
    from uftp import store as uftp_store
    from uftp.dso import Received
    from uftp.models import (
        AvailableRequested,
        ContractSettlement,
        ContractSettlementISP,
        ContractSettlementPeriod,
        DPrognosis,
        FlexOffer,
        FlexOrderSettlement,
        FlexOrderSettlementISP,
        FlexRequest,
        FlexRequestISP,
        FlexSettlement,
    )

    market = Market(DEMO_TIMEZONE, 15)
    today = market.today(datetime.now(UTC))
    result = DemoResult(today)

    def real(simulated_s: float) -> float:
        return simulated_s / speed + 20.0

    # Before the history goes into its database: not while another agent runs on it.
    StateDirectory(state_dir).probe()
    ocpp_port, agr_port, dso_port, http_port = (_free_port() for _ in range(4))
    dso_key = SigningKey.generate()
    config = demo_config(state_dir, ocpp_port, agr_port, dso_port, dso_key, http_port)
    fleet = _fleet()
    generator = SessionGenerator(fleet, DEMO_TIMEZONE, seed=seed, occupancy=occupancy)
    seeded = seed_history(config, generator, today)
    # Compile (or load) the forecaster's kernels before simulated time starts to run.
    await asyncio.to_thread(warm_up)
    clock = ScaledClock(datetime.combine(today, time(6, 0), _zone()), speed)
    say = Timeline(clock, DEMO_TIMEZONE, out)
    if warnings is not None:
        warnings.timeline = say
    dso = simulated_dso(
        DEMO_DSO_DOMAIN,
        dso_key,
        DEMO_AGR_DOMAIN,
        keys.load_signing_key(config.uftp.signing_key_file),
        agr_port,
        dso_port,
        state_dir / "dso.sqlite",
        clock=clock.now,
    )
    agent = build_agent(config, clock)
    # Rounds on simulated time: at `speed` x, a 60 s control period would be several per
    # real second; a site of 20 chargers is well served every 5 simulated minutes.
    agent.dispatcher.control_s = 300.0
    agent.trader.housekeeping_s = 900.0
    started: list[Any] = []
    site: SimulatedSite | None = None
    tasks: list[asyncio.Task[Any]] = []
    meter: dict[datetime, float] = {}
    try:
        await dso.start()
        for component in agent.components:
            await component.start()
            started.append(component)
        say.say(
            f"agent up: {len(fleet)} stations configured, {HISTORY_DAYS} days of history "
            f"({seeded} sessions), DSO {DEMO_DSO_DOMAIN}, time x{speed:g}"
        )
        if agent.web is not None:
            until = "after the story, until Ctrl-C" if keep_running else "until the demo ends"
            say.say(f"status page: http://127.0.0.1:{http_port}/ (served {until})")
        site = SimulatedSite(
            f"ws://127.0.0.1:{ocpp_port}/ocpp", fleet, clock, password=DEFAULT_PASSWORD
        )
        await site.start()
        await asyncio.wait_for(site.wait_ready(), 60)
        versions = sum(1 for f in fleet if f.protocol.value == "ocpp1.6")
        say.say(
            f"{site.online} stations online ({versions} OCPP 1.6, {len(fleet) - versions} "
            f"OCPP 2.0.1), each on its safe limit of {_kw(SAFE_LIMIT_W / len(fleet))}"
        )
        if on_ready is not None:
            on_ready(agent)
        plan = generator.plan(today)
        tasks.append(asyncio.create_task(site.play(plan)))

        async def read_meters() -> None:
            assert site is not None
            isp = timedelta(minutes=15)
            epoch = int(clock.now().timestamp())
            boundary = datetime.fromtimestamp(epoch - epoch % 900, UTC) + isp
            previous = site.energy_wh()
            while True:
                await clock.sleep_until(boundary)
                now_wh = site.energy_wh()
                meter[boundary - isp] = now_wh - previous
                previous = now_wh
                boundary += isp

        tasks.append(asyncio.create_task(read_meters()))

        # 1. The day-ahead prognosis (today's, sent as soon as the agent runs).
        def is_prognosis(o: object, revision: int = 1) -> bool:
            return (
                isinstance(o, Received)
                and isinstance(o.message, DPrognosis)
                and o.message.period == today
                and o.message.revision >= revision
            )

        first = await dso.wait_handled(is_prognosis, real(3600))
        prognosis = _expect(first, DPrognosis)
        power = [0] * market.count(today)
        for element in prognosis.isps:
            for k in range(element.start, element.start + element.duration):
                power[k - 1] = element.power
        peak_index = max(range(len(power)), key=power.__getitem__) + 1
        say.say(
            f"D-Prognosis revision {prognosis.revision}: {len(power)} ISPs, "
            f"{sum(power) / 4000:.0f} kWh, peak {_kw(power[peak_index - 1])} at "
            f"{_local(market.start_of(today, peak_index))}; DSO: " + _verdict(first)
        )

        # 2. The DSO's congestion: the morning peak over its limit.
        await clock.sleep_until(datetime.combine(today, time(6, 30), _zone()))
        earliest = clock.now() + timedelta(hours=2)
        requested, peak, limit = _congestion(power, market, today, earliest)
        # What the DSO needs: the excess over its limit at least, twice that at most.
        excess = max(3_000, (peak - limit) // 100 * 100)
        count = market.count(today)
        # Elsewhere the DSO can take more load only up to its limit: the EVs must catch up
        # without making a new peak right after the congestion.
        room = {
            i: max(0, (limit - power[i - 1]) // 1000 * 1000)
            for i in range(1, count + 1)
            if i not in requested
        }
        elements = [
            FlexRequestISP(
                disposition=AvailableRequested.AVAILABLE,
                min_power=0,
                max_power=run.value,
                start=run.start,
                duration=run.duration,
            )
            for run in calendar.compress_runs(room)
        ]
        elements.append(
            FlexRequestISP(
                disposition=AvailableRequested.REQUESTED,
                min_power=-2 * excess,
                max_power=-excess,
                start=requested.start,
                duration=len(requested),
            )
        )
        elements.sort(key=lambda e: e.start)
        request = FlexRequest(
            sender_domain=DEMO_DSO_DOMAIN,
            recipient_domain=DEMO_AGR_DOMAIN,
            time_stamp=clock.now(),
            isp_duration=timedelta(minutes=15),
            time_zone=DEMO_TIMEZONE,
            period=today,
            congestion_point=DEMO_CONGESTION_POINT,
            revision=1,
            expiration_date_time=clock.now() + timedelta(hours=1),
            isps=tuple(elements),
        )
        await dso.send(request)
        window = (
            f"{_local(market.start_of(today, requested.start))}-"
            f"{_local(market.start_of(today, requested.stop - 1) + timedelta(minutes=15))}"
        )
        say.say(
            f"DSO FlexRequest: prognosis peak {_kw(peak)} over its limit of {_kw(limit)}; "
            f"reduce the load by at least {_kw(excess)} (at most {_kw(2 * excess)}) in {window} "
            f"(ISPs {requested.start}-{requested.stop - 1})"
        )

        # 3. The offer.
        def is_offer(o: object) -> bool:
            return isinstance(o, Received) and isinstance(o.message, FlexOffer)

        try:
            answered = await dso.wait_handled(is_offer, real(1800))
        except TimeoutError:
            stored = await agent.db.read(lambda c: trades.find_request(c, request.message_id))
            reason = stored.reason if stored else "no answer"
            say.say(f"no FlexOffer: {reason}")
            raise
        offer = _expect(answered, FlexOffer)
        result.offers = 1
        option = offer.offer_options[0]
        offered = ", ".join(
            f"{_kw(i.power)} in ISPs {i.start}-{i.start + i.duration - 1}" for i in option.isps
        )
        say.say(
            f"FlexOffer: {offered} for EUR {option.price} (option {option.option_reference}, "
            f"MinActivationFactor {option.min_activation_factor}, expires "
            f"{_local(offer.expiration_date_time)}); DSO: " + _verdict(answered)
        )

        # 4. The order, and the revision that includes it.
        await clock.sleep_until(max(clock.now(), datetime.combine(today, time(7, 0), _zone())))
        order = await dso.order_offer(offer, order_reference="DEMO-ORD-1")
        result.orders = 1
        revision = await dso.wait_handled(lambda o: is_prognosis(o, 2), real(1800))
        say.say(
            f"DSO FlexOrder {order.order_reference} (EUR {order.price}); agent accepted it and "
            f"sent D-Prognosis revision {_expect(revision, DPrognosis).revision} with the "
            "order included"
        )

        # 5. Delivery.
        ordered_start = market.start_of(today, requested.start)
        ordered_end = market.start_of(today, requested.stop - 1) + timedelta(minutes=15)
        await clock.sleep_until(ordered_start + timedelta(minutes=7))
        last = agent.dispatcher.last_round
        cap = last.cap_w[0] if last else float("nan")
        charging = sum(1 for s in agent.site.active_sessions() if s.power_w > 0)
        say.say(
            f"dispatch: site capped at {_kw(cap)} by {len(agent.site.chargers)} dynamic "
            f"profiles; {charging} EVs charging, the site draws {_kw(site.power_w())}"
        )
        await clock.sleep_until(ordered_end + timedelta(minutes=20))
        await agent.site.flush()
        accepted = await agent.db.read(lambda c: trades.accepted_orders(c, period=today))
        delivered = await agent.dispatcher.delivery(accepted[0])
        for index, base, change, measured in delivered:
            result.delivered_w[index] = measured - base
            result.ordered_w[index] = change
        mean_delivered = sum(result.delivered_w.values()) / len(result.delivered_w)
        mean_ordered = sum(result.ordered_w.values()) / len(result.ordered_w)
        say.say(
            f"delivered: on average {_kw(mean_delivered)} against the prognosis over "
            f"{len(delivered)} ISPs, {_kw(mean_ordered)} ordered"
        )

        # 6. Midday: the EVs' morning is over; skip to the next night to settle.
        await clock.sleep_until(datetime.combine(today, time(12, 0), _zone()))
        for task in tasks:
            task.cancel()
        await site.stop()
        site = None
        await agent.site.flush()
        say.say(
            "the EVs' morning is over: skipping the afternoon and night to 00:30, when the DSO "
            "settles the day from its meter"
        )
        clock.advance(
            (
                datetime.combine(today + timedelta(days=1), time(0, 30), _zone()) - clock.now()
            ).total_seconds()
        )
        # Nothing was measured in the skipped hours: the agent's record of being up (which
        # says "no energy = no load") starts again here, as after a restart.
        agent.site.started_at = clock.now()
        received_prognoses = await dso.database.read(
            lambda c: uftp_store.inbound_messages(c, message_type=DPrognosis.xml_name)
        )
        base_message = next(
            (
                r.message()
                for r in received_prognoses
                if r.message_id == offer.d_prognosis_message_id
            ),
            None,
        )
        baseline = power if base_message is None else [0] * count
        if isinstance(base_message, DPrognosis):
            for element in base_message.isps:
                for k in range(element.start, element.start + element.duration):
                    baseline[k - 1] = element.power
        starts = {i.index: i.start for i in market.isps(today)}
        items = []
        for isp in order.isps:
            for k in range(isp.start, isp.start + isp.duration):
                actual = round(meter.get(starts[k], 0.0) * 4)
                delivered_flex = actual - baseline[k - 1]
                items.append(
                    FlexOrderSettlementISP(
                        start=k,
                        baseline_power=baseline[k - 1],
                        ordered_flex_power=isp.power,
                        actual_power=actual,
                        delivered_flex_power=delivered_flex,
                        power_deficiency=max(0, delivered_flex - isp.power),
                    )
                )
        settlement = FlexSettlement(
            sender_domain=DEMO_DSO_DOMAIN,
            recipient_domain=DEMO_AGR_DOMAIN,
            time_stamp=clock.now(),
            period_start=today,
            period_end=today,
            currency=order.currency,
            flex_order_settlements=(
                FlexOrderSettlement(
                    order_reference=order.order_reference,
                    period=today,
                    congestion_point=DEMO_CONGESTION_POINT,
                    d_prognosis_message_id=offer.d_prognosis_message_id,
                    price=order.price,
                    net_settlement=order.price,
                    isps=tuple(items),
                ),
            ),
            contract_settlements=(
                ContractSettlement(
                    contract_id="DEMO",
                    periods=(
                        ContractSettlementPeriod(
                            period=today,
                            isps=(ContractSettlementISP(start=1, reserved_power=0),),
                        ),
                    ),
                ),
            ),
        )
        await dso.send(settlement)
        answer = await _settlement_answer(dso, settlement.message_id, real(600))
        statuses = [
            f"{s.order_reference}: {s.disposition}"
            + (f" ({s.dispute_reason})" if s.dispute_reason else "")
            for s in answer.flex_order_settlement_statuses
        ]
        result.settlement_statuses = statuses
        say.say(f"FlexSettlement answered {answer.result}: " + "; ".join(statuses))
        result.report = await write_report(
            agent, today, report or state_dir / "report.html", say.lines
        )
        say.say(f"report (the day's chart and this timeline): {result.report}")
        result.timeline = say.lines
        result.real_seconds = wall.monotonic() - began
        if keep_running:
            print("the agent keeps running; press Ctrl-C to stop", file=out, flush=True)
            await asyncio.Event().wait()
        return result
    finally:
        for task in tasks:
            task.cancel()
        if site is not None:
            with contextlib.suppress(Exception):
                await site.stop()
        for component in reversed(started):
            with contextlib.suppress(Exception):
                await component.stop()
        with contextlib.suppress(Exception):
            await dso.stop()


class DemoError(RuntimeError):
    """The story did not unfold: a step's answer was missing or unexpected."""


def _expect(outcome: object, kind: type[Any]) -> Any:
    from uftp.dso import Received

    if not isinstance(outcome, Received) or not isinstance(outcome.message, kind):
        raise DemoError(f"expected a {kind.__name__}, got {outcome!r}")
    return outcome.message


def _verdict(outcome: object) -> str:
    from uftp.dso import Received

    if not isinstance(outcome, Received):
        return "no answer"
    return "accepted" if outcome.accepted else "rejected: " + "; ".join(outcome.rejections)


async def _settlement_answer(dso: Any, settlement_id: str, wait_s: float) -> Any:
    from uftp import store as uftp_store
    from uftp.models import FlexSettlementResponse

    deadline = asyncio.get_running_loop().time() + wait_s
    while asyncio.get_running_loop().time() < deadline:
        rows = await dso.database.read(
            lambda c: uftp_store.inbound_messages(
                c, message_type=FlexSettlementResponse.xml_name, reference_id=settlement_id
            )
        )
        if rows:
            message = rows[0].message()
            assert isinstance(message, FlexSettlementResponse)
            return message
        await asyncio.sleep(0.1)
    raise TimeoutError("no FlexSettlementResponse")


# --- the report --------------------------------------------------------------------------------


async def write_report(agent: Any, day: date, path: Path, timeline: list[str]) -> Path:
    """An HTML page with the day's chart (as on the status page) and the timeline; no
    scripts, works offline."""
    from agent.interfaces.status import day_chart
    from agent.interfaces.web.page import chart_svg

    chart = chart_svg(await day_chart(agent, DEMO_CONGESTION_POINT, day, agent.clock.now()), None)
    lines = "\n".join(f"<li>{html.escape(line)}</li>" for line in timeline)
    await asyncio.to_thread(
        path.write_text,
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>flexbridge demo report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
        "li{font-family:monospace;margin:.2em 0}</style></head><body>"
        f"<h1>flexbridge demo, {day.isoformat()}</h1>{chart}<h2>Timeline</h2><ol>{lines}</ol>"
        "<p>Simulated site and DSO; real agent, real sockets. Sessions drawn from ACN-Data "
        "(Caltech, CC BY 4.0).</p></body></html>",
        "utf-8",
    )
    return path
