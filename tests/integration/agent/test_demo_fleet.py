"""`flexbridge demo --fleet` as a real process: nats-server, PostgreSQL, the aggregator, three
site agents and the DSO on loopback; the timeline tells the fleet's story in order and the
demo leaves nothing behind."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

import pytest

from agent.demo.fleet import SITES, STEPS
from agent.demo.infra import find_nats_server, find_pg_bin
from tests.conftest import in_ci
from tests.support.processes import AgentProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMELINE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [0-2][0-9]:[0-5][0-9]  \S")


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("flexbridge-fleet-demo-*")}


async def test_the_fleet_demo_trades_for_three_sites_and_cleans_up() -> None:
    if find_nats_server() is None or find_pg_bin() is None:
        missing = "nats-server and postgresql-15 (make system-deps) are needed"
        if in_ci():
            pytest.fail(missing)
        pytest.skip(missing)
    before = leftovers()
    demo = AgentProcess(["demo", "--fleet"])
    try:
        code = await asyncio.to_thread(demo.finish, 240)
    finally:
        demo.kill()
    output = "\n".join(demo.lines)
    assert code == 0, output
    assert "Traceback" not in output, output
    others = [line for line in demo.lines if not TIMELINE.match(line)]
    assert len(others) == 2, output
    assert others[0].startswith("flexbridge demo --fleet: three sites, two congestion points")
    assert re.fullmatch(r"done in \d+ s; temporary directory removed", others[1]), output
    labels = [line.split()[2] for line in demo.lines if TIMELINE.match(line)]
    assert labels == sorted(labels, key=STEPS.index), output
    assert set(labels) == set(STEPS), output

    def said(pattern: str) -> list[str]:
        return [line for line in demo.lines if re.search(pattern, line)]

    for site, cp in SITES.items():
        point = "CP-A" if cp.endswith("543") else "CP-B"
        assert said(rf"site {site} joined {point}: agent in fleet mode"), output
        assert said(rf"forecast from {site} recorded at the centre"), output
    assert said(r"D-Prognosis CP-A revision \d+: aggregated from north \+ south.*DSO: accepted")
    assert said(r"D-Prognosis CP-B revision \d+: aggregated from harbour.*DSO: accepted")
    assert said(r"DSO FlexRequest at CP-A: reduce the load"), output
    assert said(r"FlexOffer: .*DSO: accepted"), output
    assert said(r"DSO FlexOrder DEMO-FLEET-ORD-1 .*split it into 2 commands"), output
    for site in ("north", "south"):
        commands = said(rf"command to {site}: seq 1, caps ")
        assert len(commands) == 1, output
        assert said(rf"{site} applied its command"), output
        # The split may give a site a cap in one of the two ordered ISPs or in both: in each
        # ISP it has a cap for, the chargers' total limit at or under that cap.
        capped = re.findall(r"[\d.]+ kW at \d\d:\d\d", commands[0])
        assert 1 <= len(capped) <= 2, output
        limits = said(
            rf"{site}: its 3 chargers limited to ([\d.]+) kW together \(cap ([\d.]+) kW\)"
        )
        assert len(limits) == len(capped), output
        for line in limits:
            match = re.search(r"limited to ([\d.]+) kW together \(cap ([\d.]+) kW\)", line)
            assert match is not None
            assert float(match[1]) <= float(match[2]), line
    assert not said(r"command to harbour"), output  # CP-B was not asked for anything
    assert said(r"stopped: the site agents and their stations, the DSO, the aggregator"), output
    assert leftovers() <= before, "the demo's temporary directory was left behind"
