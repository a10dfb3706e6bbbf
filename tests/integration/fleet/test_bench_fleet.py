"""`python -m bench fleet` runs end to end on a small fleet: every figure printed, the node
kill loses nothing, the baseline ratio last."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nats_cluster import MISSING, find_nats_server, in_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def test_small_fleet_bench_prints_every_figure_and_loses_nothing() -> None:
    if find_nats_server() is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    # Each fan-out is bounded by --timeout (publishing included), so a cluster in trouble ends
    # the run with its sites counted lost, and the figures say where, instead of a hang.
    command = [sys.executable, "-m", "bench", "fleet", "--sites", "20", "--site-processes", "1"]
    try:
        result = subprocess.run(
            [*command, "--timeout", "40"],
            capture_output=True,
            text=True,
            timeout=280,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench fleet still running after 280 s:\n{exc.stdout!s}\n{exc.stderr!s}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    figures = dict(line.split(": ", 1) for line in lines)
    assert figures["fleet_sites"] == "20"
    assert figures["fleet_sites_per_aggregator"] == "20"
    assert figures["fleet_lost_messages_node_kill"] == "0"
    assert figures["fleet_core_nats_lost_messages"] == "0"
    for name in (
        "fleet_order_fanout_p99_s",
        "fleet_node_rss_mb",
        "fleet_cluster_healthy_after_restart_s",
        "fleet_fanout_vs_core_nats_ratio",
    ):
        assert float(figures[name]) > 0, name
    assert lines[-1].startswith("fleet_fanout_vs_core_nats_ratio: ")
