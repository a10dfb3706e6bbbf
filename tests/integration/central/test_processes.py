"""`flexbridge aggregator` as real processes on a real 3-node NATS cluster and PostgreSQL,
shapeshifter-uftp 2.4.0 as the DSO, the sites' real fleet links over their own SQLite files:
a crash between an order's commit and the commands' publish, two aggregator processes on one
database, and `add-site`."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest
from nacl.signing import SigningKey

from agent.central.app import AFTER_ORDER_COMMIT
from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.bus import NatsBus
from agent.fleet.link import SiteLink
from agent.runtime.clock import SystemClock
from agent.runtime.failpoints import ENV as FAILPOINT_ENV
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from tests.integration.central.conftest import (
    CP_A,
    CP_B,
    MARKET,
    SITES,
    OrderingDso,
    config_text,
    eventually,
)
from tests.integration.central.test_trading_round_trip import library_request
from tests.support import uftp as build
from tests.support.nats_cluster import NatsCluster, site_password
from tests.support.nats_cluster import start_or_skip as start_cluster
from tests.support.ports import free_port
from tests.support.postgres import (
    PostgresServer,
    postgres,  # noqa: F401  (the fixture)
)
from tests.support.processes import AgentProcess
from uftp import keys
from uftp.models import FlexRequest, Role, utc_now

pytestmark = pytest.mark.integration

CP_A_SITES = ("site-a1", "site-a2")


@dataclass
class Site:
    """A site's real fleet link (outbox, command application) over its own SQLite file."""

    name: str
    db: Database
    bus: NatsBus
    link: SiteLink
    changes: list[int] = field(default_factory=list)

    async def log(self) -> list[fleet_store.LogEntry]:
        return await self.db.read(fleet_store.command_log)


@dataclass
class World:
    tmp_path: Path
    dsn: str
    cluster: NatsCluster
    dso: OrderingDso
    dso_key: SigningKey
    agr_port: int
    config: Path
    sites: dict[str, Site]
    processes: list[AgentProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"FLEXBRIDGE_NATS__PASSWORD": self.cluster.central_password}

    def start_aggregator(
        self, failpoint: str | None = None, uftp_port: int | None = None
    ) -> AgentProcess:
        env = self.env()
        if failpoint:
            env[FAILPOINT_ENV] = failpoint
        if uftp_port is not None:
            env["FLEXBRIDGE_UFTP__PORT"] = str(uftp_port)
        process = AgentProcess(["aggregator", "run", "--config", str(self.config)], env=env)
        self.processes.append(process)
        process.wait_for("flexbridge running", timeout_s=60)
        return process


async def start_site(tmp_path: Path, cluster: NatsCluster, name: str) -> Site:
    db = Database(tmp_path / f"{name}.sqlite", SCHEMA)
    await db.start()
    bus = await NatsBus.connect_site(cluster.client_urls, name, site_password(name))
    site = Site(name, db, bus, None)  # type: ignore[arg-type]
    site.link = SiteLink(
        db, bus, name, SystemClock(), lambda: site.changes.append(1), fetch_timeout_s=0.5
    )
    await site.link.start()
    return site


@pytest.fixture
async def world(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[World]:  # noqa: F811
    workdir = tmp_path / "nats"
    workdir.mkdir()
    cluster = start_cluster(workdir, list(SITES))
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    agr_port, dso_port = free_port(), free_port()
    dso = OrderingDso(
        build.DSO,
        dso_key,
        port=dso_port,
        peer_keys={(build.AGR, "AGR"): keys.public_key_b64(agr_key)},
        peer_endpoints={(build.AGR, "AGR"): build.url(agr_port)},
    )
    await asyncio.to_thread(dso.run_in_thread)
    key_file = tmp_path / "agr.key"
    keys.write_signing_key(key_file, agr_key)
    text = config_text(
        dsn=postgres.dsn("flexbridge"),
        key_file=key_file,
        port=agr_port,
        dso_key=dso_key,
        dso_port=dso_port,
    ).replace('servers = ["nats://127.0.0.1:4222"]', f"servers = {cluster.client_urls!r}")
    text = text.replace("'", '"')
    config = tmp_path / "central.toml"
    config.write_text(text)
    state = World(tmp_path, postgres.dsn("flexbridge"), cluster, dso, dso_key, agr_port, config, {})
    try:
        yield state
    finally:
        for site in state.sites.values():
            await site.link.stop()
            await site.bus.close()
            await site.db.stop()
        for process in state.processes:
            process.kill()
        await asyncio.to_thread(dso.stop)
        cluster.stop()


async def scalar(dsn: str, sql: str) -> object:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(sql)).fetchone()
        return None if row is None else row[0]


async def test_killed_between_order_commit_and_publish(world: World) -> None:
    first = world.start_aggregator(failpoint=AFTER_ORDER_COMMIT)
    for name in CP_A_SITES:  # their consumers exist now: the aggregator made them at start
        world.sites[name] = await start_site(world.tmp_path, world.cluster, name)
    now = utc_now()
    isps = MARKET.isps(MARKET.today(now) + timedelta(days=1))
    for name, site in world.sites.items():
        await site.link.enqueue(
            protocol.Flex(
                id=f"{name}-flex-1",
                site=name,
                sent_at=now,
                start=isps[0].start,
                congestion_point=SITES[name],
                made_at=now,
                valid_until=now + timedelta(hours=12),
                baseline_w=[6000.0] * len(isps),
                min_w=[2000.0] * len(isps),
                max_w=[8000.0] * len(isps),
            )
        )

    async def envelopes() -> bool:
        return await scalar(world.dsn, "SELECT count(*) FROM site_flex") == 2

    await eventually(envelopes, timeout_s=30, what="both envelopes recorded")
    request = library_request(MARKET.today(utc_now()) + timedelta(days=1))
    await asyncio.to_thread(world.dso.client(build.AGR).send_flex_request, request)

    # The order is committed with its commands and answer; the process dies before publishing.
    code = await asyncio.to_thread(first.proc.wait, 60)
    assert code == -signal.SIGKILL
    assert await scalar(world.dsn, "SELECT count(*) FROM command WHERE published_at IS NULL") == 2
    assert (
        await scalar(
            world.dsn,
            "SELECT count(*) FROM uftp_outbox WHERE message_type = 'FlexOrderResponse' "
            "AND status = 'pending'",
        )
        == 1
    )
    await asyncio.sleep(1.0)
    assert all(site.link.received["applied"] == 0 for site in world.sites.values())

    world.start_aggregator()
    for site in world.sites.values():
        await eventually(lambda s=site: s.link.received["applied"] == 1, 30, f"{site.name}")
    answer = await asyncio.to_thread(world.dso.wait_for, "FlexOrderResponse", 30.0)
    assert answer.result == "Accepted"

    async def acked() -> bool:
        return (
            await scalar(world.dsn, "SELECT count(*) FROM command WHERE ack_outcome = 'applied'")
            == 2
        )

    await eventually(acked, timeout_s=30, what="both sites' acks recorded")
    await asyncio.sleep(1.0)
    for site in world.sites.values():
        log = await site.log()
        assert [(e.seq, e.outcome) for e in log] == [(1, "applied")]
        assert site.link.received == {"applied": 1, "superseded": 0, "expired": 0}
    kinds = [k for k, _ in world.dso.all_received]
    assert kinds.count("FlexOrderResponse") == 1
    assert os.environ.get(FAILPOINT_ENV) is None


async def test_two_aggregator_processes_handle_every_message_once(world: World) -> None:
    other_port = free_port()
    world.start_aggregator()
    world.start_aggregator(uftp_port=other_port)
    tomorrow = MARKET.today(utc_now()) + timedelta(days=1)
    messages = []
    for revision in range(1, 41):
        now = utc_now()
        messages.append(
            build.flex_request(
                now,
                time_stamp=now,
                period=tomorrow,
                congestion_point=CP_A,
                revision=revision,
                expiration_date_time=now + timedelta(hours=4),
            )
        )
    urls = [build.url(world.agr_port), build.url(other_port)]
    async with aiohttp.ClientSession() as session:

        async def post(index: int, message: FlexRequest) -> int:
            body = build.signed_body(message, world.dso_key, build.DSO, Role.DSO)
            async with session.post(
                urls[index % 2], data=body, headers={"Content-Type": "text/xml"}
            ) as response:
                return response.status

        statuses = await asyncio.gather(*(post(i, m) for i, m in enumerate(messages)))
    assert set(statuses) == {200}

    async def done() -> bool:
        return (
            await scalar(world.dsn, "SELECT count(*) FROM uftp_inbox WHERE status = 'pending'") == 0
        )

    await eventually(done, timeout_s=60, what="every message handled")
    async with await psycopg.AsyncConnection.connect(world.dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT i.message_id, i.status, i.attempts, count(o.id) FROM uftp_inbox i "
                "LEFT JOIN uftp_outbox o ON o.reply_to = i.id WHERE i.message_type = 'FlexRequest' "
                "GROUP BY i.id"
            )
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(m.message_id for m in messages)
    assert {(r[1], r[2], r[3]) for r in rows} == {("processed", 0, 1)}

    def answered() -> list[str]:
        return [
            m.flex_request_message_id
            for k, m in world.dso.all_received
            if k == "FlexRequestResponse"
        ]

    await eventually(lambda: len(answered()) >= len(messages), 60, "every answer delivered")
    await asyncio.sleep(1.0)
    assert sorted(answered()) == sorted(m.message_id for m in messages)


def run_cli(world: World, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = AgentProcess(
        ["aggregator", *args, "--config", str(world.config)], env={**world.env(), **(env or {})}
    )
    code = process.finish(60)
    return code, "\n".join(process.lines)


async def test_add_site_makes_its_consumer_before_it_joins(world: World) -> None:
    code, out = await asyncio.to_thread(
        run_cli, world, "add-site", "site-c1", "--congestion-point", CP_A
    )
    assert code == 0, out
    assert "site site-c1 added to the portfolio" in out
    code, out = await asyncio.to_thread(
        run_cli, world, "add-site", "site-c1", "--congestion-point", CP_A
    )
    assert (code, "already in the portfolio" in out) == (0, True)
    code, out = await asyncio.to_thread(
        run_cli, world, "add-site", "site-c1", "--congestion-point", CP_B
    )
    assert code == 65
    assert "site site-c1 is already at congestion point" in out
    code, out = await asyncio.to_thread(
        run_cli, world, "add-site", "site-c2", "--congestion-point", "ean.871685900012630000"
    )
    assert code == 65
    assert "is not in the portfolio" in out
    nobody = f"postgresql://flexbridge@127.0.0.1:{free_port()}/flexbridge"
    code, out = await asyncio.to_thread(
        run_cli,
        world,
        "add-site",
        "site-c2",
        "--congestion-point",
        CP_A,
        env={"FLEXBRIDGE_DATABASE__DSN": nobody},
    )
    assert code == 75
    assert "cannot connect to PostgreSQL" in out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if line.startswith("error:")]) == 1
    central = await NatsBus.connect_central(
        world.cluster.client_urls, world.cluster.central_password
    )
    try:
        info = await central.jetstream.consumer_info(
            protocol.CMD_STREAM, protocol.site_consumer("site-c1")
        )
        assert info.config.filter_subject == protocol.cmd_subject("site-c1")
    finally:
        await central.close()
    assert await scalar(world.dsn, "SELECT congestion_point FROM site WHERE id = 'site-c1'") == CP_A
