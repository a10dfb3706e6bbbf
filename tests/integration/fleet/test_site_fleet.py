"""Sites of a fleet against a real 3-node nats-server cluster, with a test-side "centre" that
sets up the streams and consumers, publishes commands and reads what the sites send up.

- a whole agent in fleet mode (`build_agent` with `[fleet]`, its own NATS connection as site
  user) with simulated chargers over real OCPP: a command's cap reaches the chargers' composite
  limits, and a newer seq replaces it;
- 200 site links in one process, each over its own SQLite file and its own site connection:
  every command, delivered twice (the stream's de-duplication bypassed), applied exactly once,
  each Ack published under one id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent, build_agent
from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.apply import ack_id
from agent.fleet.bus import (
    NatsBus,
    ensure_central_consumer,
    ensure_site_consumer,
    ensure_streams,
)
from agent.fleet.link import AFTER_COMMAND_COMMIT, SiteLink
from agent.interfaces.status import fleet_link
from agent.runtime import failpoints
from agent.runtime.clock import SystemClock
from agent.runtime.config import Config
from agent.runtime.service import Component
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from ocpp_bridge.simulator import SimCharger16, running
from tests.support.agent_env import make_env, toml_text
from tests.support.nats_cluster import NatsCluster, site_password, start_or_skip
from tests.support.processes import AgentProcess
from tests.support.uftp import eventually

pytestmark = pytest.mark.integration

CP = "ean.871685900012636543"
PASSWORD = "fleet-site-test-password-0123"
VOLTS_3PH = 3 * 230.0


@contextlib.contextmanager
def cluster_for(tmp_path: Path, sites: list[str]) -> Iterator[NatsCluster]:
    workdir = tmp_path / "nats"
    workdir.mkdir()
    cluster = start_or_skip(workdir, sites)
    try:
        yield cluster
    finally:
        cluster.stop()


class Centre:
    """What the aggregator does on the bus, as far as these tests need it."""

    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus
        self.received: list[Any] = []

    async def command(self, command: protocol.Command, msg_id: str | None = None) -> None:
        await self.bus.publish(
            protocol.cmd_subject(command.site), msg_id or command.id, protocol.encode(command)
        )

    async def collect(self) -> list[Any]:
        """Everything the sites sent up so far (acked at the centre)."""
        while True:
            try:
                batch = await self.bus.fetch(
                    protocol.UP_STREAM, protocol.CENTRAL_CONSUMER, 256, 0.5
                )
            except TimeoutError:  # nats-py's own, when fewer than the batch came in time
                return self.received
            if not batch:
                return self.received
            for delivery in batch:
                self.received.append(protocol.decode_upstream(delivery.data))
                await delivery.ack()

    def acks(self, site: str | None = None) -> list[protocol.Ack]:
        return [
            m
            for m in self.received
            if isinstance(m, protocol.Ack) and (site is None or m.site == site)
        ]


@contextlib.asynccontextmanager
async def centre_on(cluster: NatsCluster, sites: list[str]) -> AsyncIterator[Centre]:
    bus = await NatsBus.connect_central(cluster.client_urls, cluster.central_password)
    try:
        await ensure_streams(bus.jetstream)
        await ensure_central_consumer(bus.jetstream)
        # As each site joins: before any command for it (a few at a time, as joins come).
        for first in range(0, len(sites), 20):
            await asyncio.gather(
                *(ensure_site_consumer(bus.jetstream, s) for s in sites[first : first + 20])
            )
        yield Centre(bus)
    finally:
        await bus.close()


def command_for(
    site: str,
    order: str,
    seq: int,
    caps: list[float | None],
    *,
    valid_for: timedelta = timedelta(hours=1),
) -> protocol.Command:
    now = datetime.now(UTC)
    start = datetime.fromtimestamp(int(now.timestamp()) // 900 * 900, UTC)
    return protocol.Command(
        id=f"centre.{order}.{site}.{seq}",
        site=site,
        sent_at=now,
        order_id=order,
        seq=seq,
        valid_until=now + valid_for,
        congestion_point=CP,
        start=start,
        cap_w=caps,
    )


# --- a whole agent in fleet mode ----------------------------------------------------------------


def fleet_site_config(tmp_path: Path, cluster: NatsCluster, site: str) -> Config:
    return Config.model_validate(fleet_site_raw(tmp_path, cluster, site))


def fleet_site_raw(tmp_path: Path, cluster: NatsCluster, site: str) -> dict[str, Any]:
    """A fleet site's configuration as written: two chargers, the cluster's servers."""
    env = make_env(
        tmp_path,
        ocpp={
            "chargers": [
                {"id": c, "max_current_a": 16, "password": PASSWORD, "safe_power_w": 6_900}
                for c in ("CP-01", "CP-02")
            ]
        },
    )
    raw = dict(env.raw)
    del raw["uftp"]
    raw["site"] = {**raw["site"], "id": site}
    raw["fleet"] = {
        "servers": cluster.client_urls,
        "password": site_password(site),
        "heartbeat_s": 5,
    }
    return raw


@contextlib.asynccontextmanager
async def started(agent: Agent) -> AsyncIterator[Agent]:
    done: list[Component] = []
    try:
        for component in agent.components:
            await component.start()
            done.append(component)
        yield agent
    finally:
        for component in reversed(done):
            await component.stop()


def station_limit_w(sim: Any) -> float:
    """What the simulated station allows now, from the profiles it holds (its composite)."""
    return float(sim.store.limit_a_at(datetime.now(UTC), 0)) * VOLTS_3PH


async def plug_in(sim: Any, agent: Agent) -> None:
    await sim.boot()
    await sim.status(1, "Charging")
    await sim.start_transaction(1, 0)
    await eventually(
        lambda: any(s.info.charger_id == sim.id for s in agent.site.active_sessions()),
        what=f"the session on {sim.id}",
    )


async def test_a_fleet_agent_holds_its_chargers_to_the_centres_cap(tmp_path: Path) -> None:
    site = "depot-1"
    with cluster_for(tmp_path, [site]) as cluster:
        async with centre_on(cluster, [site]) as centre:
            config = fleet_site_config(tmp_path, cluster, site)
            agent = build_agent(config)
            assert agent.participant is None
            assert agent.trader is None
            assert agent.link is not None
            url = f"ws://127.0.0.1:{config.ocpp.port}/ocpp"
            async with (
                started(agent),
                running(SimCharger16, url, "CP-01", PASSWORD) as one,
                running(SimCharger16, url, "CP-02", PASSWORD) as two,
            ):
                for sim in (one, two):
                    await plug_in(sim, agent)
                # Unconstrained, each EV may take its charger's 11 kW.
                await eventually(
                    lambda: all(station_limit_w(s) > 10_000 for s in (one, two)),
                    timeout_s=20,
                    what="the chargers' limits before any command",
                )
                # The centre's share for this site: 8.28 kW in this ISP and the next three.
                cap_w = 2 * 6 * VOLTS_3PH
                first = command_for(site, "order-1", 1, [cap_w] * 4)
                await centre.command(first)
                await eventually(
                    lambda: sum(station_limit_w(s) for s in (one, two)) <= cap_w + 1,
                    timeout_s=20,
                    what="the chargers held to the cap",
                )
                # The room is used (0-or-minimum per EV: one may wait while the other charges).
                assert sum(station_limit_w(s) for s in (one, two)) >= 6 * VOLTS_3PH

                async def ack_arrived() -> bool:
                    await centre.collect()
                    return len(centre.acks(site)) == 1

                await eventually(ack_arrived, timeout_s=20, what="the Ack at the centre")
                [ack] = centre.acks(site)
                assert (ack.order_id, ack.seq, ack.outcome) == ("order-1", 1, "applied")
                assert ack.id == ack_id(site, "order-1", 1)

                # The operator sees the link and the command in force in the status API.
                link = await fleet_link(agent, datetime.now(UTC))
                assert link is not None
                assert link["site"] == site
                assert link["bus_reachable"] is True
                assert [(c["order_id"], c["seq"], c["in_force"]) for c in link["commands"]] == [
                    ("order-1", 1, True)
                ]

                # A newer share lifts the cap: the chargers follow it back up.
                await centre.command(command_for(site, "order-1", 2, [None] * 4))
                await eventually(
                    lambda: all(station_limit_w(s) > 10_000 for s in (one, two)),
                    timeout_s=20,
                    what="the chargers released by seq 2",
                )

                async def heartbeat_arrived() -> bool:
                    await centre.collect()
                    return any(isinstance(m, protocol.Heartbeat) for m in centre.received)

                await eventually(heartbeat_arrived, timeout_s=20, what="a heartbeat")
                beat = next(m for m in centre.received if isinstance(m, protocol.Heartbeat))
                assert beat.site == site
                assert beat.safe_limit_w == config.site.effective_safe_limit_w

                # Today's forecast (made in a forecast worker) and the EVs' flexibility.
                async def forecast_and_flex_arrived() -> bool:
                    await centre.collect()
                    kinds = {m.kind for m in centre.received if m.site == site}
                    return {"forecast", "flex"} <= kinds

                await eventually(
                    forecast_and_flex_arrived, timeout_s=120, what="a forecast and a flex"
                )
                forecast = next(m for m in centre.received if isinstance(m, protocol.Forecast))
                assert (forecast.congestion_point, forecast.made_at.tzinfo) == (CP, UTC)
                assert len(forecast.p50_w) >= 1
                flex = [m for m in centre.received if isinstance(m, protocol.Flex)][-1]
                # Two EVs plugged in: they could take both chargers' 11 kW from the next ISP
                # (one plugged in within an ISP counts from the next: never promise too much).
                assert flex.max_w[1] == pytest.approx(2 * 16 * VOLTS_3PH, rel=0.01)
            rows = await _read(config, fleet_store.command_log)
            assert [(e.order_id, e.seq, e.outcome) for e in rows] == [
                ("order-1", 1, "applied"),
                ("order-1", 2, "applied"),
            ]


async def _read(config: Config, fn: Any) -> Any:
    db = Database(config.storage.database_path, SCHEMA)
    await db.start()
    try:
        return await db.read(fn)
    finally:
        await db.stop()


# --- 200 site links in one process --------------------------------------------------------------


async def test_two_hundred_sites_apply_each_command_exactly_once(tmp_path: Path) -> None:
    sites = [f"s{i:03d}" for i in range(200)]
    with cluster_for(tmp_path, sites) as cluster:
        async with centre_on(cluster, sites) as centre:
            clock = SystemClock()
            changes = dict.fromkeys(sites, 0)
            dbs: list[Database] = []
            buses: list[NatsBus] = []
            links: list[SiteLink] = []

            def changed(site: str) -> Any:
                def count() -> None:
                    changes[site] += 1

                return count

            try:
                for site in sites:
                    db = Database(tmp_path / f"{site}.sqlite", SCHEMA)
                    await db.start()
                    dbs.append(db)
                    bus = await NatsBus.connect_site(cluster.client_urls, site, site_password(site))
                    buses.append(bus)
                    link = SiteLink(db, bus, site, clock, changed(site), fetch_timeout_s=1.0)
                    await link.start()
                    links.append(link)
                # Each command twice, the second under another Nats-Msg-Id: the stream keeps
                # both, only the site's own record can absorb the copy.
                commands = [command_for(site, "order-9", 1, [5_000.0, 4_000.0]) for site in sites]
                for command in commands:
                    await centre.command(command)
                for command in commands:
                    await centre.command(command, msg_id=command.id + ".again")

                async def all_handled() -> bool:
                    await centre.collect()
                    done = sum(link.received["applied"] + link.repeats for link in links)
                    return done == 2 * len(sites) and len(centre.acks()) >= len(sites)

                await eventually(all_handled, timeout_s=120, what="both deliveries everywhere")

                async def outboxes_empty() -> bool:
                    for db in dbs:
                        if await db.read(lambda c: fleet_store.pending(c, 1)):
                            return False
                    return True

                await eventually(outboxes_empty, timeout_s=60, what="every Ack published")
                await asyncio.sleep(1.0)  # anything extra would arrive now
                await centre.collect()
                for link in links:
                    await link.stop()

                # One effect per site, the copy handled as a repeat.
                assert changes == dict.fromkeys(sites, 1)
                assert [link.received["applied"] for link in links] == [1] * len(sites)
                assert [link.repeats for link in links] == [1] * len(sites)
                # The Ack of the repeat went out under the same id: the stream's window
                # dropped it (beyond the window the centre's unique key would).
                acks = centre.acks()
                assert sorted(a.id for a in acks) == sorted(ack_id(s, "order-9", 1) for s in sites)
                assert all(a.outcome == "applied" for a in acks)
                for db in dbs:
                    log = await db.read(fleet_store.command_log)
                    assert [(e.order_id, e.seq, e.outcome) for e in log] == [
                        ("order-9", 1, "applied")
                    ]
                    [active] = await db.read(fleet_store.active_commands)
                    assert active.caps_w == (5_000.0, 4_000.0)
                    assert await db.read(lambda c: fleet_store.pending(c, 10)) == []
            finally:
                for link in links:
                    await link.stop()
                for bus in buses:
                    await bus.close()
                for db in dbs:
                    await db.stop()


# --- a fleet agent killed between the command's commit and the stream ack ------------------------


async def test_an_agent_killed_after_committing_a_command_applies_it_once_after_restart(
    tmp_path: Path,
) -> None:
    site = "crash-1"
    with cluster_for(tmp_path, [site]) as cluster:
        bus = await NatsBus.connect_central(cluster.client_urls, cluster.central_password)
        try:
            await ensure_streams(bus.jetstream)
            await ensure_central_consumer(bus.jetstream)
            # A short ack_wait: the unacked command comes back soon after the restart.
            await ensure_site_consumer(bus.jetstream, site, ack_wait_s=2.0)
            centre = Centre(bus)
            raw = fleet_site_raw(tmp_path, cluster, site)
            config = Config.model_validate(raw)
            password = raw["fleet"].pop("password")
            path = tmp_path / "site.toml"
            path.write_text(toml_text(raw))
            env = {"FLEXBRIDGE_FLEET__PASSWORD": password}

            first = AgentProcess(
                ["run", "--config", str(path)],
                env={**env, failpoints.ENV: AFTER_COMMAND_COMMIT},
            )
            try:
                first.wait_for("fleet bus connected")
                await centre.command(command_for(site, "order-5", 1, [3_000.0, 2_000.0]))
                code = await asyncio.to_thread(first.finish, 30.0)
                assert code == -signal.SIGKILL, "\n".join(first.lines)
            finally:
                first.kill()
            database = config.storage.database_path
            assert _rows(database, "SELECT order_id, seq, outcome FROM fleet_command_log") == [
                ("order-5", 1, "applied")
            ]
            [(applied_at,)] = _rows(database, "SELECT applied_at FROM fleet_commands")
            ack = ack_id(site, "order-5", 1)
            assert _rows(
                database, "SELECT id, published_at FROM fleet_outbox WHERE kind='ack'"
            ) == [(ack, None)]

            second = AgentProcess(["run", "--config", str(path)], env=env)
            try:
                second.wait_for("fleet bus connected")

                async def acked_at_centre() -> bool:
                    await centre.collect()
                    return bool(centre.acks(site))

                await eventually(acked_at_centre, timeout_s=30, what="the Ack after the restart")
                await eventually(
                    lambda: _consumer_settled(bus, site),
                    timeout_s=30,
                    what="the redelivered command acked on the stream",
                )
                await asyncio.sleep(3.0)  # another ack_wait: nothing more may come
                await centre.collect()
            finally:
                second.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(second.finish, 30.0)
                second.kill()
            assert [(a.id, a.outcome) for a in centre.acks(site)] == [(ack, "applied")]
            assert _rows(database, "SELECT order_id, seq, applied_at FROM fleet_commands") == [
                ("order-5", 1, applied_at)
            ]
            assert len(_rows(database, "SELECT * FROM fleet_command_log")) == 1
            assert not [line for line in second.lines if "fleet command applied" in line]
        finally:
            await bus.close()


async def _consumer_settled(bus: NatsBus, site: str) -> bool:
    info = await bus.jetstream.consumer_info(protocol.CMD_STREAM, protocol.site_consumer(site))
    return info.num_ack_pending == 0 and info.num_pending == 0


def _rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return [tuple(r) for r in conn.execute(sql)]
