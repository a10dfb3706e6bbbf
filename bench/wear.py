"""SD-card wear: bytes the agent writes to its state directory per hour, 20 chargers.

The agent runs as its own process on the demo site's configuration (20 stations, one
congestion point, 28 days of history in its store, the clock guard on), with 20 simulated
stations charging an EV each and sending meter values every `--meter-interval` seconds, and the
simulated DSO answering its prognoses, all on loopback. After a warm-up (start, the first
forecast and D-prognosis), the bench reads the agent process's `write_bytes` from /proc/<pid>/io
(bytes it sent to the block layer: SQLite's WAL frames, checkpoints into the database file;
its log goes to a pipe, as under systemd) over `--seconds` and extrapolates to an hour. The
growth of the database files over the same window (the WAL frames alone, while no checkpoint
runs) is printed too.

Baseline, in the same run: the same agent committing every meter sample as it arrives
(`per_sample_commit`, the site's flush interval at the time between two samples of the site),
which is what a store writing each sample on receipt costs. Headline: how many times fewer
bytes ours writes. Goal: under 10 MB/h (`state_mb_written_per_hour_20_chargers`).

    python -m bench wear [--seconds 90] [--meter-interval 10] [--warmup 30]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.demo.defaults import (
    DEMO_AGR_DOMAIN,
    DEMO_DSO_DOMAIN,
    DEMO_TIMEZONE,
    numba_cache_dir,
    seed_history,
    simulated_dso,
)
from agent.demo.simulation import DEFAULT_PASSWORD, SessionGenerator, default_fleet
from agent.runtime.clock import SystemClock
from agent.trading.market import Market
from bench._wear_agent import wear_config
from bench.report import emit, ratio
from ocpp_bridge.simulator import ReconnectPolicy, SimulatedStation
from uftp import keys

CHARGERS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


async def keep_lines(child: asyncio.subprocess.Process, log: collections.deque[bytes]) -> None:
    assert child.stderr is not None
    async for line in child.stderr:
        log.append(line)


def state_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("flexbridge.sqlite*"))


async def measure(
    flush_s: float | None, seconds: float, meter_s: float, warmup_s: float, name: str
) -> float:
    """Bytes per hour the agent process writes, with the site flushing every `flush_s`
    (None: as the agent does)."""
    with tempfile.TemporaryDirectory(prefix="flexbridge-wear-") as tmp:
        state = Path(tmp) / "state"
        ports = [free_port() for _ in range(4)]
        dso_key = keys.generate_signing_key()
        params: dict[str, str | int] = {
            "state_dir": str(state),
            "ocpp_port": ports[0],
            "uftp_port": ports[1],
            "dso_port": ports[2],
            "http_port": ports[3],
            "dso_key_file": str(Path(tmp) / "dso.key"),
        }
        keys.write_signing_key(Path(tmp) / "dso.key", dso_key)
        config = wear_config(params)
        fleet = default_fleet(CHARGERS, meter_interval_s=meter_s)
        today = Market(DEMO_TIMEZONE, 15).today(datetime.now(UTC))
        seed_history(config, SessionGenerator(fleet, DEMO_TIMEZONE, seed=1), today)
        config_file = Path(tmp) / "wear.json"
        config_file.write_text(json.dumps(params))
        dso = simulated_dso(
            DEMO_DSO_DOMAIN,
            dso_key,
            DEMO_AGR_DOMAIN,
            keys.load_signing_key(config.uftp.signing_key_file),
            ports[1],
            ports[2],
            Path(tmp) / "dso.sqlite",
        )
        await dso.start()
        env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache_dir())}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._wear_agent",
            str(config_file),
            "default" if flush_s is None else str(flush_s),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            # Kept in memory: a log file would count as the agent's writes (under systemd
            # the journal writes the log, not the agent).
            stderr=asyncio.subprocess.PIPE,
        )
        log: collections.deque[bytes] = collections.deque(maxlen=200)
        drain = asyncio.create_task(keep_lines(child, log))
        url = f"ws://127.0.0.1:{ports[0]}/ocpp"
        retry = ReconnectPolicy(wait_minimum_s=0.5, random_range_s=0.5, repeat_times=60)
        stations = [
            SimulatedStation(spec, url, password=DEFAULT_PASSWORD, reconnect=retry)
            for spec in fleet
        ]
        try:
            for station in stations:
                await station.start()
            try:
                await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in stations)), 120)
            except TimeoutError:
                text = b"".join(log).decode(errors="replace")
                raise RuntimeError(f"the stations did not connect; agent log:\n{text}") from None
            leave = SystemClock().now() + timedelta(hours=8)
            for n, station in enumerate(stations):
                for evse in range(1, station.spec.evse_count + 1):
                    station.plug_in(evse, 40_000, 11_000, leave, f"WEAR{n}-{evse}")
            await asyncio.sleep(warmup_s)
            before, size_before = write_bytes(child.pid), state_bytes(state)
            await asyncio.sleep(seconds)
            after, size_after = write_bytes(child.pid), state_bytes(state)
            if child.returncode is not None:
                raise RuntimeError(f"the agent exited with {child.returncode}")
            emit(f"state_file_growth_bytes_{name}", size_after - size_before)
            return (after - before) * 3600.0 / seconds
        finally:
            for station in stations:
                with contextlib.suppress(Exception):
                    await station.stop()
            if child.returncode is None:
                child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
            drain.cancel()
            await dso.stop()


async def run(seconds: float, meter_s: float, warmup_s: float) -> None:
    emit("chargers", CHARGERS)
    emit("meter_interval_s", meter_s)
    emit("measured_s", seconds)
    # The site's samples arrive every meter_s / (samples per interval); committing at that
    # rate is committing each one.
    samples = sum(spec.evse_count for spec in default_fleet(CHARGERS))
    per_sample_s = meter_s / samples
    baseline = await measure(per_sample_s, seconds, meter_s, warmup_s, "per_sample_commit")
    emit("state_bytes_written_per_hour_20_chargers_per_sample_commit", round(baseline))
    ours = await measure(None, seconds, meter_s, warmup_s, "flexbridge")
    emit("state_bytes_written_per_hour_20_chargers", round(ours))
    emit("state_mb_written_per_hour_20_chargers", ours / 1e6)
    emit("wear_fewer_bytes_x", ratio(baseline, ours))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench wear", description=__doc__)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--meter-interval", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args.seconds, args.meter_interval, args.warmup))
