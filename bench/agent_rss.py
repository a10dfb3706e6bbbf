"""Footprint of a steady agent: ``flexbridge run`` as a real process with 20 chargers connected.

The agent runs as `python -m agent run --config ...` (what systemd starts), its store seeded
with 8 weeks of sessions of those chargers on one congestion point; 20 simulated stations
(`python -m ocpp_bridge.simulator`, a process of their own) connect over loopback with
Basic auth. Steady state: every station connected and the first forecast round done (the
day-ahead D-prognosis at start, which selects the structure from the seeded history). Then:

* `agent_steady_rss_mb_20_chargers`: VmRSS of the agent from /proc/<pid>/status, the largest
  of samples over a few seconds after steady state (VmHWM, the peak, is printed too);
* `forecast_round_s`: wall time of one forecast round, measured as the latency of the
  status API's prognosis resend (`POST /api/prognosis/resend`): load the history from the
  store, start a forecast worker process (`forecaster.worker`: interpreter, numba, kernels from
  the cache), forecast the day with the chosen structure there, record the new revision. Best
  and first of a few; against it, as the named baseline, `forecast_in_process_s`: the same
  forecast on the same store run in this process with numba loaded and the kernels warm (what
  a round cost while the agent kept numba resident), and the ratio of the two;
* `forecast_worker_rss_mb`: the largest VmRSS of the agent's worker processes sampled during
  those rounds (memory the gateway needs for a moment, handed back when the worker exits);
* the same agent's RSS before any charger connects, and, as the named baseline in the same
  run, the RSS of a bare interpreter that imports numpy, and numpy plus numba, so the
  figures say what numba costs the agent.

Goal: under 120 MB. Linux only (/proc). Usage: python -m bench agent_rss
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import emit

CHARGERS = 20
HISTORY_DAYS = 56
PASSWORD = "bench-rss-password-0123"
TOKEN = "bench-rss-token-0123456789"
AGR = "agr.flexbridge-bench.org"
DSO = "dso.flexbridge-bench.org"
CP = "ean.871685900012636543"
TZ = "Europe/Amsterdam"
SAMPLE_S = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A `kB` field of /proc/<pid>/status in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(raw: dict[str, Any], path: Path) -> None:
    """The config as TOML: tables of scalars and lists, arrays of tables for lists of dicts."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        nested = []
        for key, value in body.items():
            if isinstance(value, dict):
                nested.append((f"{name}.{key}", value, False))
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                nested.extend((f"{name}.{key}", item, True) for item in value)
            else:
                lines.append(f"{key} = {_toml(value)}")
        for sub, item, array in nested:
            lines.append(f"[[{sub}]]" if array else f"[{sub}]")
            table(sub, item)

    for name, body in raw.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{name}]]")
                table(name, item)
        else:
            lines.append(f"[{name}]")
            table(name, body)
    path.write_text("\n".join(lines) + "\n")


def baseline_rss_mb(code: str) -> float:
    """VmRSS of a fresh interpreter after `code`, read by the interpreter itself."""
    probe = (
        code
        + "\nfrom pathlib import Path\n"
        + "print([l for l in Path('/proc/self/status').read_text().splitlines()"
        + " if l.startswith('VmRSS:')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) * 1024 / 1e6


def resend(port: int) -> float:
    """Seconds for one prognosis resend: one forecast round plus recording the revision."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/prognosis/resend",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - began


class ChildSampler(threading.Thread):
    """The largest VmRSS of any child process of `pid`, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.largest_mb = 0.0
        self.stop = threading.Event()

    def children(self) -> list[int]:
        out: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            for child in self.children():
                try:
                    self.largest_mb = max(self.largest_mb, rss_mb(child))
                except (OSError, RuntimeError):
                    continue  # gone between the listing and the read
            time.sleep(0.01)


async def in_process_rounds(raw: dict[str, Any], rounds: int) -> list[float]:
    """The agent's day-ahead forecast on the store it left, run in this process (numba
    loaded here): the cost of a round before forecasts moved to a worker."""
    from agent.runtime.clock import SystemClock
    from agent.runtime.config import Config
    from agent.site import forecasting
    from agent.storage.db import Database
    from agent.storage.store import SCHEMA
    from agent.trading.market import Market
    from uftp import store as uftp_store

    config = Config.model_validate(raw)
    db = Database(
        config.storage.database_path,
        SCHEMA,
        extra_migrations=[uftp_store.migrate, forecasting.migrate],
    )
    await db.start()
    try:
        forecaster = forecasting.SiteForecaster(config, db, SystemClock())

        async def here(function: Any, args: tuple[object, ...]) -> Any:
            return function(*args)

        forecaster._in_worker = here  # type: ignore[method-assign]
        market = Market(TZ, config.uftp.isp_duration_min)
        targets = [i.start for i in market.isps(market.today(datetime.now(UTC)))]
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            await forecaster.forecast([CP], targets)
            times.append(time.perf_counter() - began)
        return times
    finally:
        await db.stop()


def chargers_connected(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chargers", timeout=10) as r:
        body = json.loads(r.read())
    rows = body if isinstance(body, list) else body.get("chargers", [])
    return sum(1 for c in rows if c.get("connected") or c.get("online"))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench agent_rss")
    parser.add_argument("--chargers", type=int, default=CHARGERS)
    parser.add_argument("--rounds", type=int, default=3, help="forecast rounds timed")
    args = parser.parse_args(argv)

    from nacl.signing import SigningKey

    from agent.runtime.config import Config
    from forecaster.cache import cache_dir_for, point_cache_at
    from ocpp_bridge import hash_password
    from tests.support.agent_env import seed_history
    from tests.support.processes import AgentProcess
    from uftp import keys

    numpy_mb = baseline_rss_mb("import numpy")
    numba_mb = baseline_rss_mb("import numpy, numba")

    ids = [f"RSS-{i + 1:04d}" for i in range(args.chargers)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state = work / "state"
        state.mkdir()
        keys.write_signing_key(state / "agr.key", SigningKey.generate())
        ocpp_port, agr_port, http_port = _free_port(), _free_port(), _free_port()
        raw: dict[str, Any] = {
            "site": {"id": "bench", "timezone": TZ, "connection_capacity_w": 400_000},
            "ocpp": {
                "host": "127.0.0.1",
                "port": ocpp_port,
                "heartbeat_interval_s": 300,
                "chargers": [
                    {"id": c, "password_hash": hash_password(PASSWORD), "congestion_point": CP}
                    for c in ids
                ],
            },
            "uftp": {
                "domain": AGR,
                "signing_key_file": str(state / "agr.key"),
                "host": "127.0.0.1",
                "port": agr_port,
                "market_timezone": TZ,
                "peers": [
                    {
                        "domain": DSO,
                        "role": "DSO",
                        "public_keys": [keys.public_key_b64(SigningKey.generate())],
                        # Nobody listens: the prognoses wait in the outbox, as with a DSO
                        # that is down; the forecast rounds are the same.
                        "endpoint": f"http://127.0.0.1:{_free_port()}/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [{"entity_address": CP, "dso_domain": DSO}],
            "storage": {"state_directory": str(state)},
            "http": {"host": "127.0.0.1", "port": http_port, "token": TOKEN},
            "mqtt": {"enabled": False},
        }
        config_file = work / "flexbridge.toml"
        write_config(raw, config_file)
        seed_history(
            Config.model_validate(raw),
            datetime.now(UTC).date(),
            days=HISTORY_DAYS,
            chargers=ids,
        )
        # The kernel cache warm, as `flexbridge warmup` leaves it on a gateway.
        warm = AgentProcess(["warmup", "--config", str(config_file)])
        if warm.finish(timeout_s=600) != 0:
            raise RuntimeError("warmup failed:\n" + "\n".join(warm.lines))

        agent = AgentProcess(
            ["run", "--config", str(config_file)],
            env={"FLEXBRIDGE_LOGGING__FORMAT": "logfmt"},
        )
        fleet: subprocess.Popen[str] | None = None
        try:
            agent.wait_for("flexbridge running", timeout_s=120)
            pid = agent.proc.pid
            # The first forecast round: the D-prognosis of today, at start.
            agent.wait_for("forecast structure of", timeout_s=300)
            idle_mb = rss_mb(pid)
            fleet = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ocpp_bridge.simulator",
                    "--url",
                    f"ws://127.0.0.1:{ocpp_port}/ocpp",
                    "--count",
                    str(args.chargers),
                    "--prefix",
                    "RSS-",
                    "--password",
                    PASSWORD,
                    "--no-strict",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + 300
            while chargers_connected(http_port) < args.chargers:
                if time.monotonic() > deadline or fleet.poll() is not None:
                    raise RuntimeError("the simulated chargers did not all connect")
                time.sleep(0.5)
            sampler = ChildSampler(pid)
            sampler.start()
            rounds = [resend(http_port) for _ in range(args.rounds)]
            sampler.stop.set()
            sampler.join()
            samples = []
            end = time.monotonic() + SAMPLE_S
            while time.monotonic() < end:
                samples.append(rss_mb(pid))
                time.sleep(0.25)
            steady_mb = max(samples)
            peak_mb = rss_mb(pid, "VmHWM")
        finally:
            if fleet is not None:
                fleet.terminate()
                fleet.wait(timeout=20)
            agent.proc.terminate()
            try:
                agent.finish(timeout_s=30)
            finally:
                agent.kill()
        # The same kernel cache the agent's workers load from (numba is not loaded here yet).
        point_cache_at(cache_dir_for(state))
        here = asyncio.run(in_process_rounds(raw, args.rounds))

    emit("chargers_connected", args.chargers)
    emit("history_days", HISTORY_DAYS)
    emit("agent_idle_rss_mb_no_charger", idle_mb)
    emit("agent_steady_rss_mb_20_chargers", steady_mb)
    emit("agent_peak_rss_mb", peak_mb)
    emit("forecast_round_s", min(rounds))
    emit("forecast_round_first_s", rounds[0])
    emit("forecast_in_process_s", min(here))
    emit("forecast_in_process_first_s", here[0])
    emit("forecast_round_vs_in_process", min(rounds) / min(here))
    emit("forecast_worker_rss_mb", sampler.largest_mb)
    emit("python_numpy_rss_mb", numpy_mb)
    emit("python_numpy_numba_rss_mb", numba_mb)
    emit("numba_import_rss_mb", numba_mb - numpy_mb)
    emit("agent_steady_rss_vs_goal_120_mb", steady_mb / 120.0)
