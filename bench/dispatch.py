"""``python -m bench dispatch``: from a FlexOrder's HTTP POST to every charger holding its new
profile.

The whole agent runs in this process (UFTP endpoint, trader, store, dispatcher, OCPP bridge);
N simulated stations run in a process of their own (`python -m ocpp_bridge.simulator`), each
with an EV plugged in, and report the moment they accept each charging profile. The simulated
DSO posts a direct FlexOrder that caps the next ISP at zero, so every charger's schedule changes;
the latency per charger is its acceptance time minus the POST time (same machine clock).

Baseline, measured in the same run: the same agent pushing one profile at a time
(`Dispatcher.push_concurrency = 1`), the naive loop over chargers. Figures per fleet size:
p50/p99/max latency for both; then `dispatch_p99_500_chargers_s` and, last, the p99 speed-up
over the sequential baseline at 500 chargers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import emit, percentile

PASSWORD = "bench-dispatch-password-0123"
DSO = "dso.flexbridge-bench.org"
AGR = "agr.flexbridge-bench.org"
CP = "ean.871685900012636543"
TZ = "Europe/Amsterdam"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Fleet:
    """The simulated stations' process and what they report, line by line."""

    def __init__(self, url: str, count: int) -> None:
        self.accepted: list[tuple[str, float]] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ocpp_bridge.simulator",
                "--url",
                url,
                "--count",
                str(count),
                "--prefix",
                "BENCH-",
                "--password",
                PASSWORD,
                "--report-profiles",
                "--no-strict",
                "--plug-in-wh",
                "30000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[:1] == ["ready"]:
                self.ready.set()
            elif parts[:1] == ["accepted"] and parts[2] == "0":
                self.accepted.append((parts[1], float(parts[5])))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run_case(count: int, concurrency: int, work: Path) -> list[float]:
    """Latencies (s) of every charger, POST to acceptance, for one order."""
    from nacl.signing import SigningKey

    from agent.app import build_agent
    from agent.demo.defaults import simulated_dso
    from agent.runtime.config import Config
    from ocpp_bridge import hash_password
    from uftp import keys
    from uftp.models import FlexOrder, PowerISP

    state = work / f"state-{count}-{concurrency}"
    state.mkdir()
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    keys.write_signing_key(state / "agr.key", agr_key)
    ocpp_port, agr_port, dso_port = _free_port(), _free_port(), _free_port()
    password_hash = hash_password(PASSWORD)
    config = Config.model_validate(
        {
            "site": {"id": "bench", "timezone": TZ, "connection_capacity_w": count * 11_040},
            "ocpp": {
                "host": "127.0.0.1",
                "port": ocpp_port,
                "heartbeat_interval_s": 3600,
                "ping_interval_s": 0,
                "chargers": [
                    {"id": f"BENCH-{i + 1:04d}", "password_hash": password_hash}
                    for i in range(count)
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
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": f"http://127.0.0.1:{dso_port}/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [{"entity_address": CP, "dso_domain": DSO}],
            "storage": {"state_directory": str(state)},
            "trading": {"direct_order_contracts": ["BENCH"]},
            "http": {"enabled": False},
        }
    )
    dso = simulated_dso(
        DSO, dso_key, AGR, agr_key, agr_port, dso_port, state / "dso.sqlite", time_zone=TZ
    )
    agent = build_agent(config)
    agent.dispatcher.push_concurrency = concurrency
    started: list[Any] = []
    fleet: Fleet | None = None
    try:
        await dso.start()
        for component in agent.components:
            await component.start()
            started.append(component)
        fleet = Fleet(f"ws://127.0.0.1:{ocpp_port}/ocpp", count)
        if not await asyncio.to_thread(fleet.ready.wait, 300):
            raise RuntimeError("the fleet did not boot within 300 s")
        # Quiet: every session known and the last profile accepted a second ago.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            settled = fleet.accepted and time.time() - fleet.accepted[-1][1] > 1.5
            if len(agent.site.active_sessions()) >= count and settled:
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError("the site did not settle")
        market = agent.dispatcher.market
        now = datetime.now(UTC)
        period, index = market.locate(now + timedelta(minutes=15))
        order = FlexOrder(
            sender_domain=DSO,
            recipient_domain=AGR,
            isp_duration=timedelta(minutes=15),
            time_zone=TZ,
            period=period,
            congestion_point=CP,
            unsolicited=True,
            contract_id="BENCH",
            price="1.0000",
            currency="EUR",
            order_reference=f"BENCH-{count}-{concurrency}",
            isps=(PowerISP(power=-10_000_000, start=index, duration=1),),
        )
        before = len(fleet.accepted)
        posted = time.time()
        await dso.send(order)
        latest: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(latest) < count and time.monotonic() < deadline:
            for charger, at in fleet.accepted[before:]:
                if at >= posted:
                    latest.setdefault(charger, at)
            await asyncio.sleep(0.05)
        if len(latest) < count:
            raise RuntimeError(f"only {len(latest)} of {count} chargers took the new profile")
        return [at - posted for at in latest.values()]
    finally:
        if fleet is not None:
            fleet.stop()
        for component in reversed(started):
            await component.stop()
        await dso.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench dispatch")
    parser.add_argument("--chargers", type=int, nargs="+", default=[100, 500])
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache/flexbridge/numba-cache"))
    import logging

    logging.basicConfig(level=logging.ERROR)
    from forecaster.cache import warm_up

    warm_up()  # compile or load the kernels first: the first case must not pay for them
    results: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="flexbridge-bench-dispatch-") as tmp:
        for count in args.chargers:
            for mode, concurrency in (("sequential", 1), ("ours", 100)):
                latencies = asyncio.run(run_case(count, concurrency, Path(tmp)))
                results[(count, mode)] = latencies
                emit(f"dispatch_{mode}_{count}_chargers_p50_s", percentile(latencies, 0.5))
                emit(f"dispatch_{mode}_{count}_chargers_p99_s", percentile(latencies, 0.99))
                emit(f"dispatch_{mode}_{count}_chargers_max_s", max(latencies))
    largest = max(args.chargers)
    ours = percentile(results[(largest, "ours")], 0.99)
    sequential = percentile(results[(largest, "sequential")], 0.99)
    emit(f"dispatch_p99_{largest}_chargers_s", ours)
    emit(f"dispatch_p99_speedup_vs_sequential_{largest}", sequential / ours)
