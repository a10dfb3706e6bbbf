"""`flexbridge run` and `flexbridge demo` as real processes: start, serve, stop on a signal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import AgentProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "flexbridge.toml.example"


@pytest.fixture
def config_file(tmp_path: Path, state_dir: Path) -> Path:
    from agent.cli import main

    key = tmp_path / "agr.key"
    assert main(["keys", "--out", str(key)]) == 0
    text = EXAMPLE.read_text()
    text = text.replace("/etc/flexbridge/agr-signing.key", str(key))
    text = text.replace(
        'state_directory = "/var/lib/flexbridge"', f'state_directory = "{state_dir}"'
    )
    # Free ports, not the example's 9000/8443/8080 another run on this machine may hold.
    for default in ("9000", "8443", "8080"):
        old = f"port = {default}"
        assert old in text
        text = text.replace(old, f"port = {free_port()}")
    path = tmp_path / "flexbridge.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(config_file: Path, state_dir: Path, sig: int) -> None:
    agent = AgentProcess(
        ["run", "--config", str(config_file)], env={"FLEXBRIDGE_LOGGING__FORMAT": "logfmt"}
    )
    try:
        agent.wait_for('msg="flexbridge running"')
        assert (state_dir / "flexbridge.lock").exists()
        agent.proc.send_signal(sig)
        assert agent.finish() == 0
        assert any('msg="flexbridge stopped"' in line for line in agent.lines)
    finally:
        agent.kill()


def test_second_agent_on_same_state_refuses_to_start(config_file: Path) -> None:
    first = AgentProcess(["run", "--config", str(config_file)])
    try:
        first.wait_for("flexbridge running")
        second = AgentProcess(["run", "--config", str(config_file)])
        assert second.finish() == 75  # EX_TEMPFAIL: try again once the other one stopped
        # One line, naming the cause and the fix; no traceback, no log cascade.
        assert len(second.lines) == 1, second.lines
        assert "another flexbridge process (pid " in second.lines[0]
        assert "stop that agent first" in second.lines[0]
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish() == 0
    finally:
        first.kill()


def test_secret_from_environment_is_not_logged(config_file: Path) -> None:
    text = config_file.read_text().replace("[mqtt]\n", '[mqtt]\nusername = "fb"\n')
    config_file.write_text(text)
    agent = AgentProcess(
        ["run", "--config", str(config_file)],
        env={
            "FLEXBRIDGE_MQTT__PASSWORD": "very-secret-value",
            "FLEXBRIDGE_LOGGING__LEVEL": "DEBUG",
        },
    )
    try:
        agent.wait_for("flexbridge running")
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.finish() == 0
        assert not any("very-secret-value" in line for line in agent.lines)
    finally:
        agent.kill()
