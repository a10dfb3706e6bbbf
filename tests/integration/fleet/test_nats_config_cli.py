"""`flexbridge aggregator nats-config`: the rendered files run a real cluster that lets a site
in with its own secret and no one else; wrong input is one line and a sysexits code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.demo.infra import jetstream_ready
from agent.fleet.bus import NatsBus, ensure_central_consumer, ensure_site_consumer, ensure_streams
from agent.fleet.ports import BusUnavailable
from tests.conftest import in_ci
from tests.support.nats_cluster import MISSING, find_nats_server
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

FLEXBRIDGE = [sys.executable, "-m", "agent"]


def nats_server() -> str:
    binary = find_nats_server()
    if binary is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return binary


def describe(root: Path, sites: dict[str, str]) -> tuple[Path, list[dict[str, int]]]:
    """A cluster description on loopback with relative secret paths, as an operator writes."""
    (root / "secrets" / "sites").mkdir(parents=True)
    (root / "secrets" / "central.secret").write_text("central-secret-0123456789\n")
    (root / "secrets" / "route.secret").write_text("route-secret-0123456789\n")
    for site, password in sites.items():
        (root / "secrets" / "sites" / f"{site}.secret").write_text(password + "\n")
    (root / "secrets" / "sites" / "README").write_text("not a secret: ignored\n")
    ports = [{"client": free_port(), "cluster": free_port(), "http": free_port()} for _ in range(3)]
    nodes = "\n".join(
        f'[[nodes]]\nname = "n{i}"\nhost = "127.0.0.1"\nclient_port = {p["client"]}\n'
        f"cluster_port = {p['cluster']}\nhttp_port = {p['http']}\nleaf_port = {free_port()}\n"
        f'store_dir = "{root / f"store-n{i}"}"\n'
        for i, p in enumerate(ports, start=1)
    )
    cluster = root / "cluster.toml"
    cluster.write_text(
        'central_password_file = "secrets/central.secret"\n'
        'route_password_file = "secrets/route.secret"\n'
        'site_secrets_dir = "secrets/sites"\n\n' + nodes
    )
    return cluster, ports


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEXBRIDGE, "aggregator", "nats-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rendered_files_run_a_cluster_that_admits_each_site_by_its_own_secret(
    tmp_path: Path,
) -> None:
    binary = nats_server()
    cluster, ports = describe(tmp_path, {"gw-0001": "gw-one-password-1", "gw-0002": "two-22222"})
    out = tmp_path / "nats"
    result = run("--cluster", str(cluster), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2 site user(s): gw-0001, gw-0002"
    files = sorted(out.glob("*.conf"))
    assert [f.name for f in files] == ["n1.conf", "n2.conf", "n3.conf"]
    for conf in files:
        assert conf.stat().st_mode & 0o777 == 0o640  # it holds passwords
        check = subprocess.run(
            [binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr

    servers = [
        subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL) for conf in files
    ]
    try:
        deadline = time.monotonic() + 60
        # Serving, and JetStream's meta group has a leader: before that the JetStream API (the
        # first stream_info) goes unanswered, which CI saw time out on a loaded machine.
        while not all(jetstream_ready(f"http://127.0.0.1:{p['http']}") for p in ports):
            assert time.monotonic() < deadline, "the rendered cluster did not become healthy"
            time.sleep(0.3)
        urls = [f"nats://127.0.0.1:{p['client']}" for p in ports]
        asyncio.run(admits_only_the_right_secrets(urls))
    finally:
        for server in servers:
            server.kill()
            server.wait(timeout=30)


async def admits_only_the_right_secrets(urls: list[str]) -> None:
    central = await NatsBus.connect_central(urls, "central-secret-0123456789")
    try:
        await ensure_streams(central.jetstream, replicas=3)
        await ensure_central_consumer(central.jetstream)
        await ensure_site_consumer(central.jetstream, "gw-0001")
    finally:
        await central.close()
    site = await NatsBus.connect_site(urls, "gw-0001", "gw-one-password-1")
    try:
        await site.publish("fleet.up.gw-0001.heartbeat", "hb-1", b"{}")
    finally:
        await site.close()
    with pytest.raises(BusUnavailable):
        await NatsBus.connect_site(urls, "gw-0001", "two-22222", connect_timeout_s=3.0)


@pytest.mark.parametrize(
    ("breakage", "code", "said"),
    [
        ("no-secrets-dir", 66, "site secrets"),
        ("bad-site-id", 65, "site secret"),
        ("two-line-secret", 65, "exactly one non-empty line"),
        ("unknown-key", 78, "colour"),
        ("two-nodes", 78, "odd number >= 3"),
        ("not-toml", 78, "cluster description"),
    ],
)
def test_wrong_input_is_one_line_and_its_exit_code(
    tmp_path: Path, breakage: str, code: int, said: str
) -> None:
    cluster, _ = describe(tmp_path, {"gw-0001": "gw-one-password-1"})
    text = cluster.read_text()
    if breakage == "no-secrets-dir":
        cluster.write_text(text.replace('"secrets/sites"', '"secrets/nowhere"'))
    elif breakage == "bad-site-id":
        (tmp_path / "secrets" / "sites" / "Bad Site.secret").write_text("password-123\n")
    elif breakage == "two-line-secret":
        (tmp_path / "secrets" / "sites" / "gw-0001.secret").write_text("a-password\nmore\n")
    elif breakage == "unknown-key":
        cluster.write_text('colour = "blue"\n' + text)
    elif breakage == "two-nodes":
        cluster.write_text(text[: text.rindex("[[nodes]]")])
    else:
        cluster.write_text(text + "\n[[nodes\n")
    out = tmp_path / "nats"
    result = run("--cluster", str(cluster), "--out", str(out))
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    assert os.access(cluster, os.R_OK)
