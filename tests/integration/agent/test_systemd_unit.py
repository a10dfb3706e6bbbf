"""The shipped unit verifies with systemd, and the service speaks sd_notify for real."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.support.ports import free_port
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "systemd" / "flexbridge.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_notify_watchdog_and_hardening() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["User"] == ["flexbridge"]
    assert s["StateDirectory"] == ["flexbridge"]
    assert s["ConfigurationDirectory"] == ["flexbridge"]
    assert s["RestartPreventExitStatus"][0].split() == ["64", "65", "66", "77", "78"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert s[key] == [value], key
    # numba JIT-compiles into executable memory.
    assert "MemoryDenyWriteExecute" not in s


@pytest.mark.parametrize("name", ["flexbridge.service", "flexbridge-aggregator.service"])
def test_unit_verifies(tmp_path: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze missing (Debian package systemd)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    flexbridge = Path(sys.executable).parent / "flexbridge"
    unit = tmp_path / name
    source = ROOT / "systemd" / name
    text = source.read_text().replace("/opt/flexbridge/venv/bin/flexbridge", str(flexbridge))
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    problems = [
        line for line in result.stderr.splitlines() if name in line and "Failed to" not in line
    ]
    assert problems == [], result.stderr


def test_aggregator_unit_is_notify_with_a_watchdog_and_no_jit() -> None:
    text = (ROOT / "systemd" / "flexbridge-aggregator.service").read_text()
    lines = {line.strip() for line in text.splitlines()}
    for expected in (
        "Type=notify",
        "WatchdogSec=60",
        "User=flexbridge",
        "RestartPreventExitStatus=64 65 66 77 78",
        "MemoryDenyWriteExecute=yes",
        "ExecStart=/opt/flexbridge/venv/bin/flexbridge aggregator run "
        "--config /etc/flexbridge/central.toml",
    ):
        assert expected in lines, expected


def test_service_notifies_ready_watchdog_and_stopping(tmp_path: Path, state_dir: Path) -> None:
    from agent.cli import main

    key = tmp_path / "agr.key"
    main(["keys", "--out", str(key)])
    config = tmp_path / "flexbridge.toml"
    text = (ROOT / "systemd" / "flexbridge.toml.example").read_text()
    text = text.replace("/etc/flexbridge/agr-signing.key", str(key))
    text = text.replace('"/var/lib/flexbridge"', f'"{state_dir}"')
    config.write_text(text)

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    agent = AgentProcess(
        ["run", "--config", str(config)],
        env={
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",  # ping every 0.2 s
            # Free ports, never the example's defaults another run on this machine may hold.
            "FLEXBRIDGE_OCPP__PORT": str(free_port()),
            "FLEXBRIDGE_UFTP__PORT": str(free_port()),
            "FLEXBRIDGE_HTTP__PORT": str(free_port()),
        },
    )
    try:
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1"), messages
        deadline = time.monotonic() + 10
        while sum("WATCHDOG=1" in m for m in messages) < 3 and time.monotonic() < deadline:
            messages.append(sock.recv(4096).decode())
        assert sum("WATCHDOG=1" in m for m in messages) >= 3
        agent.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        assert agent.finish() == 0
    finally:
        agent.kill()
        sock.close()
