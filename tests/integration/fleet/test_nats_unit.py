"""The shipped nats-server unit verifies with systemd, runs what natsconf renders, and keeps
the JetStream store in its own state directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.fleet.natsconf import Cluster, Node, SiteCredentials, render_node
from tests.support.nats_cluster import MISSING, find_nats_server, in_ci

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "systemd" / "flexbridge-nats@.service"


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def _require(tool: str | None, message: str) -> str:
    if tool is None:
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return tool


def test_unit_runs_the_instance_config_with_its_own_state() -> None:
    s = _settings()
    assert s["ExecStart"] == ["/usr/sbin/nats-server -c /etc/flexbridge/nats/%i.conf"]
    assert s["ExecStartPre"] == ["/usr/sbin/nats-server -t -c /etc/flexbridge/nats/%i.conf"]
    assert s["StateDirectory"] == ["flexbridge-nats/%i"]
    assert s["User"] == ["nats"]
    assert s["Restart"] == ["on-failure"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = _require(shutil.which("systemd-analyze"), "systemd-analyze missing (systemd)")
    _require(find_nats_server(), MISSING)
    unit = tmp_path / "flexbridge-nats@n1.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    problems = [
        line
        for line in result.stderr.splitlines()
        if "flexbridge-nats@" in line and "Failed to" not in line
    ]
    assert problems == [], result.stderr


def test_rendered_production_config_passes_the_servers_own_check(tmp_path: Path) -> None:
    binary = _require(find_nats_server(), MISSING)
    nodes = tuple(
        Node(
            name=f"n{i}",
            host=f"10.0.0.{i}",
            client_port=4222,
            cluster_port=6222,
            http_port=8222,
            leaf_port=7422,
            store_dir=f"/var/lib/flexbridge-nats/n{i}",
        )
        for i in (1, 2, 3)
    )
    cluster = Cluster(nodes=nodes, central_password="c" * 24, route_password="r" * 24)
    sites = [SiteCredentials(f"site{i}", f"password-{i}") for i in range(50)]
    conf = tmp_path / "n1.conf"
    conf.write_text(render_node(cluster, 0, sites))
    result = subprocess.run(
        [binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text(conf.read_text().replace("accounts {", "accounts {{"))
    result = subprocess.run(
        [binary, "-t", "-c", str(broken)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
