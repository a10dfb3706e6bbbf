"""`flexbridge demo`: a day of flexibility trading in about a minute, on embedded defaults.

Everything is real except time and the other parties: the agent runs as in production (the
normal `Service` over the components `build_agent` wires: SQLite store, OCPP listener, UFTP
endpoint with signed XML, forecaster, trader, dispatcher) on loopback sockets, against 20
simulated charging stations (both OCPP versions, EVs drawn from the Caltech sessions) and a
simulated DSO built on `uftp`'s DSO role. A `ScaledClock` runs the morning at `speed` times real
time; the quiet afternoon and night are skipped to settle the day.

The story is `STEPS`, one small function each; its name labels the step's timeline lines:
history    28 days of the site's history go into the store (the same session generator,
           uncontrolled), the forecaster's kernels are loaded;
agent      the agent starts as `flexbridge run` starts it, and the DSO on its own endpoint;
stations   the stations boot on their safe limits and the day's EVs start to arrive;
prognosis  the agent sends today's D-prognosis;
request    the DSO sees its congestion limit exceeded in the morning peak: a FlexRequest;
offer      the agent sizes a FlexOffer from the EVs' flexibility;
order      the DSO orders it; the agent sends the D-prognosis revision including the order;
delivery   in the ordered ISPs the chargers' dynamic profiles cap the site, the EVs catch up
           afterwards;
night      the EVs' morning is over: the afternoon and night are skipped;
settlement the DSO settles the day from its own metering (`uftp.dso`), the agent checks every
           item against its own measurements;
report     an HTML report with the chart of prognosis, measured load and ordered flexibility
           per ISP, and the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time as wall
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar
from zoneinfo import ZoneInfo

from nacl.signing import SigningKey

from agent.app import Agent, build_agent
from agent.demo import grid
from agent.demo.defaults import (
    DEMO_AGR_DOMAIN,
    DEMO_DSO_DOMAIN,
    DEMO_TIMEZONE,
    HISTORY_DAYS,
    SAFE_LIMIT_W,
    demo_config,
    fleet,
    seed_history,
    simulated_dso,
)
from agent.demo.report import Timeline, TimelineLog, write_report
from agent.demo.simulation import DEFAULT_PASSWORD, SessionGenerator, SimulatedSite
from agent.runtime.clock import ScaledClock
from agent.runtime.config import Config
from agent.runtime.service import Service
from agent.runtime.statedir import StateDirectory
from agent.storage import trades
from agent.trading.market import Market
from uftp import keys
from uftp.dso import DsoParticipant, OrderOutcome, Received, SettlementError, prognosis_power
from uftp.models import DPrognosis, FlexOffer, FlexOrder, PayloadMessage

log = logging.getLogger(__name__)

ZONE = ZoneInfo(DEMO_TIMEZONE)
M = TypeVar("M", bound=PayloadMessage)


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


class DemoError(RuntimeError):
    """The story did not unfold: a step's answer was missing or unexpected."""


@dataclass
class Story:
    """What the steps share: the parties, the clock and what each step found out. A step sets
    the fields the later ones read; `exits` stops whatever a step started, in reverse."""

    state_dir: Path
    speed: float
    seed: int
    occupancy: float
    keep_running: bool
    on_ready: Callable[[Any], None] | None
    report_path: Path
    timeline: Timeline
    exits: contextlib.AsyncExitStack
    market: Market = field(default_factory=lambda: Market(DEMO_TIMEZONE, 15))
    today: date = field(init=False)
    result: DemoResult = field(init=False)
    # history
    ports: dict[str, int] = field(default_factory=dict)
    dso_key: SigningKey = field(default_factory=SigningKey.generate)
    config: Config = field(init=False)
    stations: list[Any] = field(default_factory=fleet)
    generator: SessionGenerator = field(init=False)
    seeded: int = 0
    clock: ScaledClock = field(init=False)
    # agent
    dso: DsoParticipant = field(init=False)
    agent: Agent = field(init=False)
    # stations
    site: SimulatedSite | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    meter_wh: dict[datetime, float] = field(default_factory=dict)
    # prognosis, request, offer, order
    power: list[int] = field(default_factory=list)
    requested: range = range(0)
    request_id: str = ""
    offer: FlexOffer = field(init=False)
    order: FlexOrder = field(init=False)

    def __post_init__(self) -> None:
        self.today = self.market.today(datetime.now(UTC))
        self.result = DemoResult(self.today)

    def say(self, text: str) -> None:
        self.timeline.say(text)

    def real(self, simulated_s: float) -> float:
        """How long to wait in real time for something due `simulated_s` from now."""
        return simulated_s / self.speed + 20.0

    def at(self, local: time, day: date | None = None) -> datetime:
        return datetime.combine(day or self.today, local, ZONE)


# --- the steps ------------------------------------------------------------------------------


async def prepare_state_and_history(story: Story) -> None:
    from forecaster.cache import warm_up

    # Before the history goes into its database: not while another agent runs on it.
    StateDirectory(story.state_dir).probe()
    story.ports = {name: _free_port() for name in ("ocpp", "uftp", "dso", "http")}
    story.config = demo_config(
        story.state_dir,
        story.ports["ocpp"],
        story.ports["uftp"],
        story.ports["dso"],
        story.dso_key,
        story.ports["http"],
    )
    story.generator = SessionGenerator(
        story.stations, DEMO_TIMEZONE, seed=story.seed, occupancy=story.occupancy
    )
    story.seeded = seed_history(story.config, story.generator, story.today)
    # Compile (or load) the forecaster's kernels before simulated time starts to run.
    await asyncio.to_thread(warm_up)
    story.clock = ScaledClock(story.at(time(6, 0)), story.speed)
    story.timeline.clock = story.clock


async def start_agent(story: Story) -> None:
    """The agent as `flexbridge run` starts it (the normal `Service` over `build_agent`'s
    components), on simulated time, and the DSO on its own endpoint."""
    config, clock = story.config, story.clock
    story.dso = simulated_dso(
        DEMO_DSO_DOMAIN,
        story.dso_key,
        DEMO_AGR_DOMAIN,
        keys.load_signing_key(config.uftp.signing_key_file),
        story.ports["uftp"],
        story.ports["dso"],
        story.state_dir / "dso.sqlite",
        clock=clock.now,
    )
    await story.dso.start()
    story.exits.push_async_callback(_stop_dso, story.dso)
    agent = story.agent = build_agent(config, clock)
    # Rounds on simulated time: at `speed` x, a 60 s control period would be several per
    # real second; a site of 20 chargers is well served every 5 simulated minutes.
    agent.dispatcher.control_s = 300.0
    assert agent.trader is not None  # the demo site is stand-alone
    agent.trader.housekeeping_s = 900.0
    service = Service(agent.components)
    await service.start()
    story.exits.push_async_callback(service.stop)
    story.say(
        f"agent up: {len(story.stations)} stations configured, {HISTORY_DAYS} days of history "
        f"({story.seeded} sessions), DSO {DEMO_DSO_DOMAIN}, time x{story.speed:g}"
    )
    if agent.web is not None:
        until = "after the story, until Ctrl-C" if story.keep_running else "until the demo ends"
        story.say(f"status page: http://127.0.0.1:{story.ports['http']}/ (served {until})")


async def boot_stations(story: Story) -> None:
    """The stations connect on their safe limits; the day's EVs come and go; the DSO's meter
    reads the site every ISP."""
    clock = story.clock
    url = f"ws://127.0.0.1:{story.ports['ocpp']}/ocpp"
    site = story.site = SimulatedSite(url, story.stations, clock, password=DEFAULT_PASSWORD)
    story.exits.push_async_callback(stop_stations, story)
    await site.start()
    await asyncio.wait_for(site.wait_ready(), 60)
    versions = sum(1 for f in story.stations if f.protocol.value == "ocpp1.6")
    story.say(
        f"{site.online} stations online ({versions} OCPP 1.6, {len(story.stations) - versions} "
        f"OCPP 2.0.1), each on its safe limit of {_kw(SAFE_LIMIT_W / len(story.stations))}"
    )
    if story.on_ready is not None:
        story.on_ready(story.agent)

    async def read_meter() -> None:
        isp = timedelta(minutes=15)
        epoch = int(clock.now().timestamp())
        boundary = datetime.fromtimestamp(epoch - epoch % 900, UTC) + isp
        previous = site.energy_wh()
        while True:
            await clock.sleep_until(boundary)
            now_wh = site.energy_wh()
            story.meter_wh[boundary - isp] = now_wh - previous
            previous = now_wh
            boundary += isp

    story.tasks += [
        asyncio.create_task(site.play(story.generator.plan(story.today))),
        asyncio.create_task(read_meter()),
    ]


async def stop_stations(story: Story) -> None:
    for task in story.tasks:
        task.cancel()
    story.tasks.clear()
    site, story.site = story.site, None
    if site is not None:
        with contextlib.suppress(Exception):
            await site.stop()


async def day_ahead_prognosis(story: Story) -> None:
    """Today's D-prognosis, sent as soon as the agent runs."""
    first = await story.dso.wait_handled(lambda o: _is_prognosis(story, o), story.real(3600))
    prognosis = _expect(first, DPrognosis)
    market, today = story.market, story.today
    by_isp = prognosis_power(prognosis)
    power = story.power = [by_isp.get(k, 0) for k in range(1, market.count(today) + 1)]
    peak_index = max(range(len(power)), key=power.__getitem__) + 1
    story.say(
        f"D-Prognosis revision {prognosis.revision}: {len(power)} ISPs, "
        f"{sum(power) / 4000:.0f} kWh, peak {_kw(power[peak_index - 1])} at "
        f"{_local(market.start_of(today, peak_index))}; DSO: " + _verdict(first)
    )


async def dso_flex_request(story: Story) -> None:
    """The DSO's congestion: the morning peak of the prognosis over its limit."""
    market, today, clock, power = story.market, story.today, story.clock, story.power
    await clock.sleep_until(story.at(time(6, 30)))
    found = grid.congestion(power, market, today, clock.now() + timedelta(hours=2))
    request = grid.flex_request(found, power, market, today, clock.now())
    await story.dso.send(request)
    story.requested, story.request_id = found.requested, request.message_id
    first, last = found.requested.start, found.requested.stop - 1
    window = (
        f"{_local(market.start_of(today, first))}-"
        f"{_local(market.start_of(today, last) + timedelta(minutes=15))}"
    )
    story.say(
        f"DSO FlexRequest: prognosis peak {_kw(found.peak_w)} over its limit of "
        f"{_kw(found.limit_w)}; reduce the load by at least {_kw(found.excess_w)} (at most "
        f"{_kw(2 * found.excess_w)}) in {window} (ISPs {first}-{last})"
    )


async def flex_offer(story: Story) -> None:
    """The agent's answer: a FlexOffer sized from the EVs' flexibility."""

    def is_offer(o: object) -> bool:
        return isinstance(o, Received) and isinstance(o.message, FlexOffer)

    try:
        answered = await story.dso.wait_handled(is_offer, story.real(1800))
    except TimeoutError:
        request_id = story.request_id
        stored = await story.agent.db.read(lambda c: trades.find_request(c, request_id))
        story.say(f"no FlexOffer: {stored.reason if stored else 'no answer'}")
        raise
    offer = story.offer = _expect(answered, FlexOffer)
    story.result.offers = 1
    option = offer.offer_options[0]
    offered = ", ".join(
        f"{_kw(i.power)} in ISPs {i.start}-{i.start + i.duration - 1}" for i in option.isps
    )
    story.say(
        f"FlexOffer: {offered} for EUR {option.price} (option {option.option_reference}, "
        f"MinActivationFactor {option.min_activation_factor}, expires "
        f"{_local(offer.expiration_date_time)}); DSO: " + _verdict(answered)
    )


async def flex_order(story: Story) -> None:
    """The DSO orders the offer; the agent's next D-prognosis revision includes the order."""
    clock = story.clock
    await clock.sleep_until(max(clock.now(), story.at(time(7, 0))))
    order = story.order = await story.dso.order_offer(story.offer, order_reference="DEMO-ORD-1")
    story.result.orders = 1
    revision = await story.dso.wait_handled(lambda o: _is_prognosis(story, o, 2), story.real(1800))
    story.say(
        f"DSO FlexOrder {order.order_reference} (EUR {order.price}); agent accepted it and "
        f"sent D-Prognosis revision {_expect(revision, DPrognosis).revision} with "
        "the order included"
    )


async def delivery(story: Story) -> None:
    """The ordered ISPs: the dispatcher caps the site, the agent measures what it delivered."""
    market, today, clock, agent = story.market, story.today, story.clock, story.agent
    result, site = story.result, story.site
    assert site is not None, "the stations run until midday"
    ordered_start = market.start_of(today, story.requested.start)
    ordered_end = market.start_of(today, story.requested.stop - 1) + timedelta(minutes=15)
    await clock.sleep_until(ordered_start + timedelta(minutes=7))
    last = agent.dispatcher.last_round
    cap = last.cap_w[0] if last else float("nan")
    charging = sum(1 for s in agent.site.active_sessions() if s.power_w > 0)
    story.say(
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
    story.say(
        f"delivered: on average {_kw(mean_delivered)} against the prognosis over "
        f"{len(delivered)} ISPs, {_kw(mean_ordered)} ordered"
    )


async def skip_the_night(story: Story) -> None:
    """Midday: the EVs' morning is over; the quiet hours until the DSO settles are skipped."""
    clock, agent = story.clock, story.agent
    await clock.sleep_until(story.at(time(12, 0)))
    await stop_stations(story)
    await agent.site.flush()
    story.say(
        "the EVs' morning is over: skipping the afternoon and night to 00:30, when the DSO "
        "settles the day from its meter"
    )
    tonight = story.at(time(0, 30), story.today + timedelta(days=1))
    clock.advance((tonight - clock.now()).total_seconds())
    # Nothing was measured in the skipped hours: the agent's record of being up (which
    # says "no energy = no load") starts again here, as after a restart.
    agent.site.started_at = clock.now()


async def settlement(story: Story) -> None:
    """The DSO settles the order from its own meter against the prognosis the order refers
    to; the agent checks every item against its own measurements."""
    order, dso = story.order, story.dso
    baseline = await dso.baseline_of(order)
    if baseline is None:
        raise DemoError(
            f"the DSO has no D-Prognosis {order.d_prognosis_message_id} for {order.order_reference}"
        )
    to_w = 60 / story.market.isp_minutes
    actual = {
        isp.index: round(story.meter_wh[isp.start] * to_w)
        for isp in story.market.isps(story.today)
        if isp.start in story.meter_wh
    }
    try:
        sent = await dso.settle([OrderOutcome(order, baseline, actual)])
    except SettlementError as exc:
        raise DemoError(f"the DSO cannot settle the day: {exc}") from exc
    answer = await grid.settlement_answer(dso, sent.message_id, story.real(600))
    statuses = [
        f"{s.order_reference}: {s.disposition}"
        + (f" ({s.dispute_reason})" if s.dispute_reason else "")
        for s in answer.flex_order_settlement_statuses
    ]
    story.result.settlement_statuses = statuses
    story.say(f"FlexSettlement answered {answer.result}: " + "; ".join(statuses))


async def report(story: Story) -> None:
    story.result.report = await write_report(
        story.agent, story.today, story.report_path, story.timeline.lines
    )
    story.say(f"report (the day's chart and this timeline): {story.result.report}")


@dataclass(frozen=True)
class Step:
    name: str  # labels the step's timeline lines
    run: Callable[[Story], Awaitable[None]]


STEPS = (
    Step("history", prepare_state_and_history),
    Step("agent", start_agent),
    Step("stations", boot_stations),
    Step("prognosis", day_ahead_prognosis),
    Step("request", dso_flex_request),
    Step("offer", flex_offer),
    Step("order", flex_order),
    Step("delivery", delivery),
    Step("night", skip_the_night),
    Step("settlement", settlement),
    Step("report", report),
)


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
    """Run the story's `STEPS`; returns what happened and writes the HTML report to `report`
    (default: `report.html` in `state_dir`). With `log_to_timeline` the agent's warnings
    appear in the timeline on simulated time instead of on stderr."""
    began = wall.monotonic()
    timeline = Timeline(DEMO_TIMEZONE, out)
    warnings = TimelineLog(timeline) if log_to_timeline else None
    if warnings is not None:
        logging.getLogger().addHandler(warnings)
    try:
        async with contextlib.AsyncExitStack() as exits:
            story = Story(
                state_dir,
                speed,
                seed,
                occupancy,
                keep_running,
                on_ready,
                report or state_dir / "report.html",
                timeline,
                exits,
            )
            for step in STEPS:
                timeline.step = step.name
                await step.run(story)
            story.result.timeline = timeline.lines
            story.result.real_seconds = wall.monotonic() - began
            if keep_running:
                print("the agent keeps running; press Ctrl-C to stop", file=out, flush=True)
                await asyncio.Event().wait()
            return story.result
    finally:
        if warnings is not None:
            logging.getLogger().removeHandler(warnings)


# --- helpers --------------------------------------------------------------------------------


def _is_prognosis(story: Story, outcome: object, revision: int = 1) -> bool:
    return (
        isinstance(outcome, Received)
        and isinstance(outcome.message, DPrognosis)
        and outcome.message.period == story.today
        and outcome.message.revision >= revision
    )


def _expect(outcome: object, kind: type[M]) -> M:
    if not isinstance(outcome, Received) or not isinstance(outcome.message, kind):
        raise DemoError(f"expected a {kind.__name__}, got {outcome!r}")
    return outcome.message


def _verdict(outcome: object) -> str:
    if not isinstance(outcome, Received):
        return "no answer"
    return "accepted" if outcome.accepted else "rejected: " + "; ".join(outcome.rejections)


async def _stop_dso(dso: DsoParticipant) -> None:
    """A failure to stop the DSO must not hide how the story ended."""
    try:
        await dso.stop()
    except Exception:
        log.exception("stopping the demo's DSO failed")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kw(watts: float) -> str:
    return f"{watts / 1000:.1f} kW"


def _local(instant: datetime) -> str:
    return f"{instant.astimezone(ZONE):%H:%M}"
