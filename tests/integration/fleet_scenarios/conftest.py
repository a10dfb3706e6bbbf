"""The fleet scenarios' world: every part real, on loopback (see `world.py`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nacl.signing import SigningKey

from agent.fleet.bus import NatsBus, ensure_central_consumer, ensure_site_consumer, ensure_streams
from agent.runtime.clock import write_offset
from tests.integration.fleet_scenarios.world import ScenarioDso, World, central_config, site_ids
from tests.support import uftp as build
from tests.support.nats_cluster import NatsCluster
from tests.support.nats_cluster import start_or_skip as start_cluster
from tests.support.ports import free_port
from tests.support.postgres import start_or_skip as start_postgres
from uftp import keys


def write_config(world: World, *, reassign_lead_s: int = 600, offline_after_s: int = 180) -> None:
    world.config.write_text(
        central_config(
            dsn=world.dsn,
            key_file=world.key_file,
            port=world.agr_port,
            http_port=world.http_port,
            dso_key=world.dso_key,
            dso_port=world.dso_port,
            servers=world.cluster.client_urls,
            sites=[*world.sites, *world.agent_sites],
            reassign_lead_s=reassign_lead_s,
            offline_after_s=offline_after_s,
        )
    )


async def join_sites(cluster: NatsCluster, sites: list[str]) -> None:
    """The streams and every site's durable command consumer, made ahead of the aggregator's
    first start as `flexbridge aggregator add-site` makes them when a site joins (16 at a
    time, as the aggregator's own pass at start does: a replicated consumer takes half a
    second to create on this cluster; finding them made, the aggregator only confirms their
    settings)."""
    bus = await NatsBus.connect_central(cluster.client_urls, cluster.central_password)
    try:
        await ensure_streams(bus.jetstream)
        await ensure_central_consumer(bus.jetstream)
        limit = asyncio.Semaphore(16)

        async def join(site: str) -> None:
            async with limit:
                # On a loaded machine the cluster may not answer a creation within the
                # client's timeout; making the consumer again is harmless (it is looked up
                # first), as `add-site` run twice is.
                for attempt in range(4):
                    try:
                        await ensure_site_consumer(bus.jetstream, site)
                        return
                    except nats.errors.TimeoutError:
                        if attempt == 3:
                            raise
                        await asyncio.sleep(1.0)

        await asyncio.gather(*(join(s) for s in sites))
    finally:
        await bus.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path, []) as state:
        yield state


@pytest.fixture
async def world_with_agents(tmp_path: Path) -> AsyncIterator[World]:
    """The world and two full agents' sites (`depot-1`, `depot-2` at CP_A) in the cluster's
    users and the aggregator's portfolio; the test runs the agents."""
    async with make_world(tmp_path, ["depot-1", "depot-2"]) as state:
        yield state


@contextlib.asynccontextmanager
async def make_world(tmp_path: Path, agents: list[str]) -> AsyncIterator[World]:
    """`agents`: the site ids of full agents the test will run (`World.agent_files` gets
    their SQLite files when it does)."""
    sites = site_ids()
    workdir = tmp_path / "nats"
    workdir.mkdir()
    cluster = start_cluster(workdir, [*sites, *agents])
    postgres, dsn = start_postgres("central")
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    agr_port, dso_port, http_port = free_port(), free_port(), free_port()
    dso = ScenarioDso(
        build.DSO,
        dso_key,
        port=dso_port,
        peer_keys={(build.AGR, "AGR"): keys.public_key_b64(agr_key)},
        peer_endpoints={(build.AGR, "AGR"): build.url(agr_port)},
    )
    key_file = tmp_path / "agr.key"
    keys.write_signing_key(key_file, agr_key)
    state = World(
        tmp_path,
        dsn,
        cluster,
        dso,
        dso_key,
        dso_port,
        key_file,
        agr_port,
        http_port,
        tmp_path / "central.toml",
        sites,
        agents,
        tmp_path / "clock-offset",
    )
    write_offset(state.clock_file, 0)
    dso.clock = state.now
    write_config(state)
    try:
        await join_sites(cluster, [*sites, *agents])
        await asyncio.to_thread(dso.run_in_thread)
        yield state
    finally:
        for host in state.hosts:
            await asyncio.to_thread(host.kill)
        for n, process in enumerate(state.aggregators):
            process.kill()
            # Kept next to the hosts' logs for a failure's post-mortem.
            (tmp_path / f"aggregator{n}.log").write_text("\n".join(process.drain()))
        await asyncio.to_thread(dso.stop)
        cluster.stop()
        postgres.stop()
