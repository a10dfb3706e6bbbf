"""Fixtures for the real-charger suite: the EVerest libocpp build and a site around it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.support.everest import (
    MISSING,
    V16,
    V201,
    AgentSite,
    EverestPeer,
    Station,
    find_peer,
    stop_all,
)
from tests.support.node_csms import NodeCsms
from tests.support.node_peer import MISSING as NODE_MISSING
from tests.support.node_peer import find_node


@pytest.fixture(scope="session")
def everest() -> EverestPeer:
    """The built EVerest chargers. Missing build: skip locally, fail under CI=true."""
    peer = find_peer()
    if peer is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return peer


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., AgentSite]]:
    """`site_factory(charger_ids, **options)`: a configured, not yet started agent."""
    sites: list[AgentSite] = []

    def make(charger_ids: list[str], **options: object) -> AgentSite:
        site = AgentSite(tmp_path / f"agent{len(sites)}", charger_ids, **options)  # type: ignore[arg-type]
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


@pytest.fixture
async def stations(
    everest: EverestPeer, tmp_path: Path
) -> AsyncIterator[Callable[..., list[Station]]]:
    """`stations(site, count, version, prefix=...)`: Station objects (not started yet);
    every one made is stopped at the end of the test."""
    made: list[Station] = []

    def make(site: AgentSite, ids: list[str], version: str, **options: object) -> list[Station]:
        assert version in (V16, V201)
        new = [
            Station(everest, cid, version, tmp_path / "chargers" / cid, site.csms_url, **options)  # type: ignore[arg-type]
            for cid in ids
        ]
        made.extend(new)
        return new

    yield make
    await stop_all(made)


@pytest.fixture
def node() -> str:
    """The Node.js test peers (tests/peers). Missing: skip locally, fail under CI=true."""
    found = find_node()
    if found is None:
        if in_ci():
            pytest.fail(NODE_MISSING)
        pytest.skip(NODE_MISSING)
    return found


@pytest.fixture
async def csms(node: str) -> AsyncIterator[NodeCsms]:
    """The operator's CSMS of local-controller mode: tests/peers/csms.js (ocpp-rpc, strict)."""
    server = await NodeCsms.start(node)
    yield server
    await server.stop()
