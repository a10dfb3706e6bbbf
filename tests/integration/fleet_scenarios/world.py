"""The fleet of the scenarios, all real, all on loopback: a 3-node nats-server cluster, a
PostgreSQL server, the central aggregator as `flexbridge aggregator run` processes,
shapeshifter-uftp 2.4.0 as the DSO, and 200 sites in 4 `tests.support.fleet_host` processes of
50 (each site its own SQLite file, NATS connection and user).

Every process of the world reads one clock: `OffsetClock` over the file `World.clock_file`
(FLEXBRIDGE_CLOCK_OFFSET_FILE in the aggregators' and the hosts' environment), and the DSO
stamps what it sends with it. At 0 it is the system clock; `World.skip_to` moves it ahead
for all at once, so a scenario reaches tomorrow's ordered ISPs, their delivery (the sites
run through them at their caps) and the settlement within minutes, as the market day does.

`World.check_exactly_once` is the end of every scenario: nothing lost, no effect twice, no
command applied at or after its `valid_until`, read from the sites' SQLite files and the
aggregator's PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from nacl.signing import SigningKey
from shapeshifter_uftp import AcceptedRejected, FlexOfferResponse
from shapeshifter_uftp import FlexRequest as LibFlexRequest
from shapeshifter_uftp import FlexRequestISP as LibFlexRequestISP
from shapeshifter_uftp.uftp.enums import AvailableRequested as LibAvailableRequested
from xsdata.models.datatype import XmlDate

from agent.runtime.clock import OFFSET_FILE_ENV, OffsetClock, write_offset
from agent.runtime.failpoints import ENV as FAILPOINT_ENV
from agent.trading.market import Market
from tests.integration.central.conftest import OrderingDso
from tests.support import uftp as build
from tests.support.nats_cluster import NatsCluster, site_password
from tests.support.processes import AgentProcess
from uftp import keys
from uftp.models import utc_now

CP_A = build.CONGESTION_POINT
CP_B = "ean.871685900012636544"
MARKET = Market(build.TZ, 15)
HOSTS = 4
SITES_PER_HOST = 50
BASELINE_W = 6_000.0
MIN_W = 2_000.0
MAX_W = 11_000.0


def site_ids() -> list[str]:
    return [f"s{i:03d}" for i in range(HOSTS * SITES_PER_HOST)]


def congestion_point_of(site: str) -> str:
    """The first half of the hosted sites at CP_A, the second at CP_B (two hosts each); the
    full agents at CP_A."""
    if not (site.startswith("s") and site[1:].isdigit()):
        return CP_A
    return CP_A if int(site[1:]) < HOSTS * SITES_PER_HOST // 2 else CP_B


def central_config(
    *,
    dsn: str,
    key_file: Path,
    port: int,
    http_port: int,
    dso_key: SigningKey,
    dso_port: int,
    servers: Sequence[str],
    sites: Sequence[str],
    reassign_lead_s: int,
    offline_after_s: int,
) -> str:
    listed = "\n".join(
        f'[[sites]]\nid = "{s}"\ncongestion_point = "{congestion_point_of(s)}"\n' for s in sites
    )
    return f"""
[uftp]
domain = "{build.AGR}"
signing_key_file = "{key_file}"
host = "127.0.0.1"
port = {port}

[[uftp.peers]]
domain = "{build.DSO}"
role = "DSO"
public_keys = ["{keys.public_key_b64(dso_key)}"]
endpoint = "{build.url(dso_port)}"

[database]
dsn = "{dsn}"

[nats]
servers = {json.dumps(list(servers))}
password = "set-through-the-environment"

[[congestion_points]]
entity_address = "{CP_A}"
dso_domain = "{build.DSO}"

[[congestion_points]]
entity_address = "{CP_B}"
dso_domain = "{build.DSO}"

{listed}
[[metering]]
congestion_point = "{CP_A}"
ean = "E1234567890123456"

[trading]
reassign_lead_s = {reassign_lead_s}
offline_after_s = {offline_after_s}
prognosis_time = "00:00"

[http]
enabled = true
port = {http_port}

[logging]
level = "INFO"
"""


class ScenarioDso(OrderingDso):
    """The library's DSO ordering every offer at once, unless `hold_orders` (then the test
    sends the order itself). It stamps what it sends with `clock`, the world's shared one (the
    library would take the wall clock): a real DSO's clock is synchronised with the AGR's."""

    hold_orders = False
    clock: Callable[[], datetime] = staticmethod(utc_now)

    def client(self, agr_domain: str) -> Any:
        client = super().client(agr_domain)
        send = client._send_message

        def stamped(message: Any) -> Any:
            message.time_stamp = message.time_stamp or self.clock().isoformat()
            return send(message)

        client._send_message = stamped
        return client

    def process_flex_offer(self, message: Any) -> None:
        if not self.hold_orders:
            super().process_flex_offer(message)
            return
        self._record("FlexOffer", message)
        self.client(message.sender_domain).send_flex_offer_response(
            FlexOfferResponse(
                conversation_id=message.conversation_id,
                flex_offer_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )


class HostProcess:
    """One `python -m tests.support.fleet_host` child and its line protocol."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fleet_host", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.sites: list[str] = [s["id"] for s in json.loads(config.read_text())["sites"]]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"fleet host {self.config.stem} exited ({self.proc.poll()}):\n{self.log_tail()}"
            )
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise AssertionError(f"fleet host {self.config.stem}: {answer.get('error')}")
        return answer

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self) -> None:
        self._read()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.proc.poll() is None:
            try:
                self.call("stop")
                self.proc.wait(timeout=timeout_s)
            except (AssertionError, BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def flex_request(
    period: date, first: int, count: int, *, min_power: int, max_power: int, cp: str = CP_A
) -> LibFlexRequest:
    """A DSO's FlexRequest: reduce by min..max W at `cp` in ISPs first..first+count-1 (1-based
    indexes of `period`), the other ISPs of the day available."""
    total = len(MARKET.isps(period))
    isps = []
    if first > 1:
        isps.append(
            LibFlexRequestISP(
                disposition=LibAvailableRequested.AVAILABLE,
                min_power=0,
                max_power=2_000_000,
                start=1,
                duration=first - 1,
            )
        )
    isps.append(
        LibFlexRequestISP(
            disposition=LibAvailableRequested.REQUESTED,
            min_power=min_power,
            max_power=max_power,
            start=first,
            duration=count,
        )
    )
    if first + count <= total:
        isps.append(
            LibFlexRequestISP(
                disposition=LibAvailableRequested.AVAILABLE,
                min_power=0,
                max_power=2_000_000,
                start=first + count,
                duration=total - first - count + 1,
            )
        )
    # Two hours from now, but never after the period's last ISP ends (the AGR rejects that):
    # late in the market day the day ends sooner.
    expires = min(utc_now() + timedelta(hours=2), MARKET.isps(period)[-1].end)
    return LibFlexRequest(
        isp_duration="PT15M",
        time_zone=build.TZ,
        period=XmlDate.from_date(period),
        congestion_point=cp,
        revision=1,
        expiration_date_time=expires.isoformat(),
        isps=isps,
    )


def within_day(first: datetime, count: int) -> datetime:
    """`first`, or the start of the next market day when `count` ISPs from `first` would run
    past the end of its day: an order's ISPs all lie in one period, so a test that orders the
    next ISPs late in the day orders the first ones of the next day instead."""
    end = MARKET.isps(MARKET.today(first))[-1].end
    return end if first + count * MARKET.isp > end else first


def isp_index(moment: datetime) -> tuple[date, int]:
    """The market day and 1-based ISP index of the ISP starting at `moment`."""
    period = MARKET.today(moment)
    for isp in MARKET.isps(period):
        if isp.start == moment:
            return period, isp.index
    raise ValueError(f"{moment} is not an ISP start")


@dataclass
class SiteRecords:
    """What a site's SQLite file holds of the fleet."""

    outbox: dict[str, float | None]  # message id -> published_at
    log: list[tuple[str, int, str, float]]  # order, seq, outcome, at (epoch s)
    commands: dict[str, int]  # order -> seq in force


def read_site(path: Path) -> SiteRecords:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        outbox = dict(conn.execute("SELECT id, published_at FROM fleet_outbox").fetchall())
        log = [
            (str(o), int(s), str(r), float(a))
            for o, s, r, a in conn.execute(
                "SELECT order_id, seq, outcome, at FROM fleet_command_log ORDER BY rowid"
            )
        ]
        commands = dict(conn.execute("SELECT order_id, seq FROM fleet_commands").fetchall())
    finally:
        conn.close()
    return SiteRecords(outbox, log, commands)


@dataclass
class World:
    tmp_path: Path
    dsn: str
    cluster: NatsCluster
    dso: ScenarioDso
    dso_key: SigningKey
    dso_port: int
    key_file: Path
    agr_port: int
    http_port: int
    config: Path
    sites: list[str]
    # Full agents in fleet mode in the portfolio (their ids)
    agent_sites: list[str]
    # The world's one timeline: the offset of `OffsetClock` that the aggregators, the hosts and
    # the DSO read (0 until a scenario skips ahead).
    clock_file: Path
    # Full agents in fleet mode (site id -> its SQLite file), run by the test itself.
    agent_files: dict[str, Path] = field(default_factory=dict)
    hosts: list[HostProcess] = field(default_factory=list)
    aggregators: list[AgentProcess] = field(default_factory=list)

    # --- processes ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "FLEXBRIDGE_NATS__PASSWORD": self.cluster.central_password,
            OFFSET_FILE_ENV: str(self.clock_file),
        }

    def now(self) -> datetime:
        """The shared clock's time."""
        return OffsetClock(self.clock_file).now()

    def skip_to(self, moment: datetime) -> None:
        """Move the shared clock ahead so that it reads `moment` now: every process sees the
        time in between pass at once (as after a suspended machine), the sites at their caps."""
        ahead = (moment - utc_now()).total_seconds()
        write_offset(self.clock_file, max(ahead, OffsetClock(self.clock_file).offset_s))

    def start_aggregator(
        self, failpoint: str | None = None, env: dict[str, str] | None = None
    ) -> AgentProcess:
        env = {**self.env(), **(env or {})}
        if failpoint:
            env[FAILPOINT_ENV] = failpoint
        process = AgentProcess(["aggregator", "run", "--config", str(self.config)], env=env)
        self.aggregators.append(process)
        process.wait_for("flexbridge running", timeout_s=90)
        return process

    def start_hosts(self) -> None:
        directory = self.tmp_path / "sites"
        directory.mkdir(exist_ok=True)
        for h in range(HOSTS):
            names = self.sites[h * SITES_PER_HOST : (h + 1) * SITES_PER_HOST]
            config = self.tmp_path / f"host{h}.json"
            config.write_text(
                json.dumps(
                    {
                        "servers": self.cluster.client_urls,
                        "directory": str(directory),
                        "time_zone": build.TZ,
                        "sites": [
                            {
                                "id": s,
                                "congestion_point": congestion_point_of(s),
                                "password": site_password(s),
                                "baseline_w": BASELINE_W,
                                "min_w": MIN_W,
                                "max_w": MAX_W,
                            }
                            for s in names
                        ],
                    }
                )
            )
            self.hosts.append(
                HostProcess(
                    config, self.tmp_path / f"host{h}.log", {OFFSET_FILE_ENV: str(self.clock_file)}
                )
            )
        for host in self.hosts:
            host.wait_ready()

    async def all_hosts(self, op: str, **args: Any) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(*(asyncio.to_thread(h.call, op, **args) for h in self.hosts))
        )

    async def host_of(self, site: str) -> HostProcess:
        return next(h for h in self.hosts if site in h.sites)

    async def sites_say(self, *ops: str, period: date | None = None) -> None:
        """Every site queues these messages (forecast: for `period`)."""
        for op in ops:
            args = {"period": period.isoformat()} if op == "forecast" and period else {}
            await self.all_hosts(op, **args)

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Every online site's outbox published."""
        answers = await self.all_hosts("drain", timeout_s=timeout_s)
        left = {k: v for a in answers for k, v in a["left"].items()}
        assert not left, f"unpublished outbox rows after {timeout_s} s: {left}"

    async def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for answer in await self.all_hosts("status"):
            out.update(answer["sites"])
        return out

    def site_file(self, site: str) -> Path:
        if site in self.agent_files:
            return self.agent_files[site]
        return self.tmp_path / "sites" / f"{site}.sqlite"

    @property
    def every_site(self) -> list[str]:
        return [*self.sites, *self.agent_files]

    # --- the centre --------------------------------------------------------------------------

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cursor = await conn.execute(sql, params)
            return list(await cursor.fetchall())

    async def scalar(self, sql: str, *params: Any) -> Any:
        rows = await self.rows(sql, *params)
        return rows[0][0] if rows else None

    async def recorded_upstream(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for site, msg_id in await self.rows("SELECT site, msg_id FROM site_inbox"):
            out.setdefault(site, set()).add(msg_id)
        return out

    async def wait_upstream_recorded(self, timeout_s: float = 90.0) -> None:
        """Every outbox row of every site recorded at the centre."""

        async def done() -> bool:
            recorded = await self.recorded_upstream()
            return all(
                set(read_site(self.site_file(s)).outbox) <= recorded.get(s, set())
                for s in self.every_site
            )

        await eventually(done, timeout_s, "every site's outbox recorded at the centre")

    async def wait_acked(self, order_id: str, timeout_s: float = 90.0) -> None:
        """Every command of the order (its newest seq per site) acked by its site."""

        async def done() -> bool:
            return bool(
                await self.scalar(
                    "SELECT count(*) FROM command WHERE order_id = %s AND ack_outcome IS NULL",
                    order_id,
                )
                == 0
            )

        await eventually(done, timeout_s, f"every command of order {order_id} acked")

    async def orders(self) -> list[str]:
        rows = await self.rows(
            "SELECT message_id FROM flex_order WHERE status = 'accepted' ORDER BY created_at"
        )
        return [str(r[0]) for r in rows]

    # --- the end of every scenario -----------------------------------------------------------

    async def check_exactly_once(self) -> dict[str, int]:
        """0 messages lost, 0 effects twice, 0 commands applied at/after valid_until. Call it
        with every host stopped (their files final) and every aggregator done."""
        recorded_rows = await self.rows(
            "SELECT site, msg_id, count(*) FROM site_inbox GROUP BY site, msg_id"
        )
        recorded: dict[str, set[str]] = {}
        for site, msg_id, count in recorded_rows:
            assert count == 1, f"{site} {msg_id} recorded {count} times"
            recorded.setdefault(site, set()).add(msg_id)
        commands: dict[str, dict[tuple[str, int], tuple[datetime, str | None, datetime | None]]]
        commands = {}
        for order, site, seq, valid_until, outcome, published in await self.rows(
            "SELECT order_id, site, seq, valid_until, ack_outcome, published_at FROM command"
        ):
            commands.setdefault(site, {})[(order, seq)] = (valid_until, outcome, published)
        totals = {"upstream": 0, "commands": 0, "applied": 0, "superseded": 0, "expired": 0}
        for site in self.every_site:
            records = read_site(self.site_file(site))
            unpublished = [i for i, at in records.outbox.items() if at is None]
            assert not unpublished, f"{site}: outbox rows never published: {unpublished}"
            lost = set(records.outbox) - recorded.get(site, set())
            assert not lost, f"{site}: published but not recorded at the centre: {sorted(lost)}"
            foreign = recorded.get(site, set()) - set(records.outbox)
            assert not foreign, f"{site}: recorded at the centre, not in its outbox: {foreign}"
            totals["upstream"] += len(records.outbox)
            logged = {(o, s): (outcome, at) for o, s, outcome, at in records.log}
            assert len(logged) == len(records.log), f"{site}: a command logged twice"
            ours = commands.get(site, {})
            missing = set(ours) - set(logged)
            assert not missing, f"{site}: commands never recorded at the site: {missing}"
            assert set(logged) <= set(ours), f"{site}: commands the centre never made"
            for key, (outcome, at) in logged.items():
                valid_until, acked, published = ours[key]
                assert published is not None, f"{site} {key}: recorded, never published?"
                assert acked == outcome, f"{site} {key}: acked {acked}, logged {outcome}"
                if outcome == "applied":
                    when = datetime.fromtimestamp(at, UTC)
                    assert when < valid_until, f"{site} {key}: applied at {when}"
                totals[outcome] += 1
            totals["commands"] += len(ours)
            # The command in force is the newest applied per order.
            for order, seq in records.commands.items():
                applied = [s for (o, s), (r, _) in logged.items() if o == order and r == "applied"]
                assert seq == max(applied), f"{site} {order}: seq {seq} in force of {applied}"
        return totals

    def check_dso_answers(self) -> None:
        """Every FlexOrder answered once, every FlexRequest once, every FlexSettlement once."""
        for kind, key in (
            ("FlexOrderResponse", "flex_order_message_id"),
            ("FlexRequestResponse", "flex_request_message_id"),
            ("FlexSettlementResponse", "flex_settlement_message_id"),
        ):
            ids = [getattr(m, key) for k, m in self.dso.all_received if k == kind]
            assert len(ids) == len(set(ids)), f"a {kind} received twice: {ids}"


async def eventually(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.25)


async def start_fleet(world: World) -> None:
    """The aggregator, then the 200 sites, each with its heartbeat and envelope recorded."""
    await asyncio.to_thread(world.start_aggregator)
    await asyncio.to_thread(world.start_hosts)
    await world.sites_say("heartbeat", "flex")
    await world.drain()
    await world.wait_upstream_recorded()


async def order(
    world: World, period: date, first: int, count: int, cps: Sequence[str] = (CP_A, CP_B)
) -> list[str]:
    """The DSO asks each congestion point for 1.5 kW less per site in ISPs first..; the
    aggregator offers, the DSO orders at once; the accepted orders' message ids."""
    client = world.dso.client(build.AGR)
    before = set(await world.orders())
    for cp in cps:
        request = flex_request(period, first, count, min_power=-150_000, max_power=-75_000, cp=cp)
        await asyncio.to_thread(client.send_flex_request, request)

    async def accepted() -> list[str] | None:
        new = [o for o in await world.orders() if o not in before]
        return new if len(new) == len(cps) else None

    orders: list[str] = await eventually(accepted, 90, "the orders accepted")
    return orders
