"""A full disk under a running agent: nothing acknowledged that was not stored, every surface
tells, and the agent recovers by itself when space returns.

The agent runs as a real process (`flexbridge run`) with its state directory on a small tmpfs,
two simulated stations and the simulated DSO in the test process. With the disk full, a UFTP
message is answered 503 with Retry-After (never 200), the fault shows in the log, /metrics,
/api/status, /health and on MQTT, and the chargers keep their connection and their profiles.
Once the filler file is gone, the fault clears and the FlexRequest the DSO kept retrying is
stored and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from agent.interfaces.telemetry.topics import Topics
from agent.storage.db import connect
from agent.trading.market import Market
from ocpp_bridge.simulator import ProtocolName, ReconnectPolicy, SimulatedStation, StationSpec
from tests.support import uftp as build
from tests.support.agent_env import (
    AGR,
    DSO,
    TZ,
    Env,
    make_env,
    request_answered,
    write_config,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_watcher import Watcher
from tests.support.processes import AgentProcess
from tests.support.trade_history import flex_request
from uftp.models import Role, TestMessage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "storage-test-password-0123"
STATIONS = [
    StationSpec("CP-01", protocol=ProtocolName.OCPP16, meter_interval_s=2.0),
    StationSpec("CP-02", protocol=ProtocolName.OCPP201, meter_interval_s=2.0),
]
XML = {"Content-Type": "text/xml; charset=utf-8"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for the state directory, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        while True:  # the last few bytes
            try:
                out.write(b"\0" * 512)
            except OSError:
                break
    return filler


def disk_env(tmp_path: Path, state: Path, mqtt_port: int) -> Env:
    """The two stations with passwords, state on `state`, telemetry to the broker."""
    return make_env(
        tmp_path,
        site={"id": "disk", "connection_capacity_w": 50_000},
        ocpp={
            "chargers": [
                {"id": s.charger_id, "max_current_a": 16, "password": PASSWORD} for s in STATIONS
            ]
        },
        storage={"state_directory": str(state)},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": mqtt_port, "min_interval_s": 0.5},
        http={"enabled": True},
        logging={"level": "INFO", "format": "logfmt"},
    )


def site_faults(watcher: Watcher, topic: str) -> dict[str, object] | None:
    payload = watcher.last.get(topic)
    if payload is None:
        return None
    faults: dict[str, object] = json.loads(payload).get("faults", {})
    return faults


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def test_a_full_disk_is_answered_503_surfaced_and_recovered_from(
    tmp_path: Path, small_disk: Path, mosquitto: MosquittoBroker
) -> None:
    env = disk_env(tmp_path, small_disk, mosquitto.port)
    http_port = env.config.http.port
    config_file = write_config(env, tmp_path / "flexbridge.toml")
    watcher = Watcher(mosquitto)
    state_topic = Topics("flexbridge", "disk").site_state
    dso = env.dso()
    await dso.start()
    url = f"ws://127.0.0.1:{env.config.ocpp.port}/ocpp"
    fast = ReconnectPolicy(wait_minimum_s=0.5, random_range_s=0.5, repeat_times=2)
    stations = [SimulatedStation(s, url, password=PASSWORD, reconnect=fast) for s in STATIONS]
    agent = AgentProcess(["run", "--config", str(config_file)])
    status_url = f"http://127.0.0.1:{http_port}"
    uftp_url = build.url(env.config.uftp.port)
    try:
        await asyncio.to_thread(agent.wait_for, "flexbridge running", 60)
        for station in stations:
            await station.start()
        await asyncio.gather(*(s.wait_ready() for s in stations))
        leave = datetime.now(UTC) + timedelta(hours=6)
        for n, station in enumerate(stations):
            station.plug_in(1, 15_000, 11_000, leave, f"TOKEN{n}", stated_departure=leave)
        await build.eventually(
            lambda: all(len({p.stack_level for p in s.store.profiles}) >= 2 for s in stations),
            60,
            "a safe and a dynamic profile on both stations",
        )
        profiles_before = [{p.stack_level for p in s.store.profiles} for s in stations]

        # Empty the WAL (so the next commit needs new blocks), then fill the disk.
        conn = connect(small_disk / "flexbridge.sqlite")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        filler = fill(small_disk)

        async with aiohttp.ClientSession() as http:
            body = build.signed_body(
                TestMessage(sender_domain=DSO, recipient_domain=AGR), env.dso_key, DSO, Role.DSO
            )
            async with http.post(uftp_url, data=body, headers=XML) as response:
                assert response.status == 503, await response.text()
                assert int(response.headers["Retry-After"]) > 0
                text = await response.text()
                assert "disk" not in text.lower()
                assert "sqlite" not in text.lower()
            # The DSO's own outbox keeps retrying this one through the fault.
            tomorrow = Market(TZ, 15).today(datetime.now(UTC)) + timedelta(days=1)
            request = flex_request(tomorrow, 40, 44)
            await dso.send(request)

            await asyncio.to_thread(agent.wait_for, "fault raised", 30)

            async def storage_fault_on_api() -> bool:
                status, text = await get(http, f"{status_url}/api/status")
                return status == 200 and json.loads(text)["site"]["faults"]["storage"] is not None

            await build.eventually(storage_fault_on_api, 30, "the storage fault in /api/status")
            status, text = await get(http, f"{status_url}/health")
            assert status == 503
            assert "storage" in text
            status, text = await get(http, f"{status_url}/metrics")
            assert 'flexbridge_fault_active{fault="storage"} 1.0' in text
            status, page = await get(http, f"{status_url}/")
            assert "storage: writes fail" in page
            await asyncio.to_thread(
                watcher.wait_until,
                lambda _last: bool((site_faults(watcher, state_topic) or {}).get("storage")),
                "the storage fault on MQTT",
                30,
            )
            # The chargers stay connected and keep what they were given.
            await asyncio.sleep(3.0)
            assert [s.connections for s in stations] == [1, 1]
            assert [{p.stack_level for p in s.store.profiles} for s in stations] == (
                profiles_before
            )
            responses = await dso.database.read(
                lambda c: c.execute(
                    "SELECT COUNT(*) FROM uftp_inbox WHERE message_type = 'FlexRequestResponse'"
                ).fetchone()[0]
            )
            assert responses == 0

            # Space returns: the fault clears by itself and the retried request is answered.
            filler.unlink()

            async def storage_fault_cleared() -> bool:
                status, text = await get(http, f"{status_url}/api/status")
                return status == 200 and json.loads(text)["site"]["faults"]["storage"] is None

            await build.eventually(storage_fault_cleared, 60, "the storage fault cleared")
            await asyncio.to_thread(agent.wait_for, "fault cleared", 30)
            answer = await request_answered(dso, request)
            assert answer.accepted, answer.rejection_reason
            async with http.post(uftp_url, data=body, headers=XML) as response:
                assert response.status == 200
            status, text = await get(http, f"{status_url}/health")
            assert status == 200, text
            await asyncio.to_thread(
                watcher.wait_until,
                lambda _last: (site_faults(watcher, state_topic) or {}).get("storage", 1) is None,
                "the storage fault cleared on MQTT",
                30,
            )
    finally:
        watcher.close()
        for station in stations:
            with contextlib.suppress(Exception):
                await station.stop()
        agent.proc.terminate()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(agent.finish, 30)
        agent.kill()
        await dso.stop()
