"""MQTT telemetry against a real Mosquitto: availability, retained state, restart, last will."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from agent.interfaces.telemetry.mqtt import MqttSettings, MqttTelemetry
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_watcher import Watcher
from tests.support.uftp import eventually

pytestmark = pytest.mark.integration

AVAIL = "flexbridge/t/status"


@pytest.fixture
def watcher(mosquitto: MosquittoBroker) -> Iterator[Watcher]:
    w = Watcher(mosquitto)
    yield w
    w.close()


def settings(broker: MosquittoBroker, **kw: object) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, client_id="fb-test", **kw)  # type: ignore[arg-type]


async def test_online_state_and_discovery_survive_a_broker_restart(
    mosquitto: MosquittoBroker, watcher: Watcher
) -> None:
    telemetry = MqttTelemetry(
        settings(mosquitto, reconnect_max_s=2),
        AVAIL,
        on_connect=lambda: [("homeassistant/sensor/x/config", {"name": "x"})],
    )
    await telemetry.start()
    try:
        await asyncio.to_thread(watcher.wait_for, AVAIL, b"online")
        telemetry.publish("flexbridge/t/site/state", {"power_w": 1200}, retain=True, qos=1)
        await asyncio.to_thread(watcher.wait_for, "flexbridge/t/site/state", b'{"power_w":1200}')
        await asyncio.to_thread(watcher.wait_for, "homeassistant/sensor/x/config", b'{"name":"x"}')

        mosquitto.restart()  # no persistence: every retained message is gone
        watcher.last.clear()
        await asyncio.to_thread(watcher.wait_for, AVAIL, b"online", 20)
        await asyncio.to_thread(watcher.wait_for, "flexbridge/t/site/state", b'{"power_w":1200}')
        await asyncio.to_thread(watcher.wait_for, "homeassistant/sensor/x/config", b'{"name":"x"}')
        assert telemetry.stats.connects >= 2
    finally:
        await telemetry.stop()
    await asyncio.to_thread(watcher.wait_for, AVAIL, b"offline")


async def test_start_without_broker_does_not_block_and_connects_later(
    mosquitto: MosquittoBroker, watcher: Watcher
) -> None:
    mosquitto.stop()
    telemetry = MqttTelemetry(settings(mosquitto, reconnect_max_s=1), AVAIL)
    await asyncio.wait_for(telemetry.start(), 1)
    telemetry.publish("flexbridge/t/site/state", "cached", retain=True)
    assert not telemetry.connected
    mosquitto.start()
    try:
        await asyncio.to_thread(watcher.wait_for, "flexbridge/t/site/state", b"cached", 20)
    finally:
        await telemetry.stop()


def test_last_will_when_the_agent_dies(mosquitto: MosquittoBroker, watcher: Watcher) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from agent.interfaces.telemetry.mqtt import MqttSettings, MqttTelemetry
        async def main():
            t = MqttTelemetry(MqttSettings(host="{mosquitto.host}", port={mosquitto.port},
                                           client_id="dying"), "{AVAIL}")
            await t.start()
            await asyncio.sleep(3600)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        watcher.wait_for(AVAIL, b"online")
        proc.kill()  # no DISCONNECT: the broker must publish the will
        proc.wait()
        watcher.wait_for(AVAIL, b"offline")
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_username_and_password(tmp_path: object, mosquitto: MosquittoBroker) -> None:
    mosquitto.users = {"fb": "pa55word"}
    mosquitto.restart()
    watcher = Watcher(mosquitto)  # anonymous: refused, so it never sees anything
    good = MqttTelemetry(settings(mosquitto, username="fb", password="pa55word"), AVAIL)
    bad = MqttTelemetry(
        MqttSettings(
            host=mosquitto.host,
            port=mosquitto.port,
            client_id="bad",
            username="fb",
            password="wrong",
            reconnect_max_s=1,
        ),
        "flexbridge/bad/status",
    )
    await good.start()
    await bad.start()
    try:
        assert await asyncio.to_thread(good.stats.connected.wait, 10)

        def refused() -> bool:
            error = bad.stats.last_error
            return "Not authorized" in error or "Bad user name" in error

        await eventually(refused, 10, "the broker's refusal of the wrong password")
        assert not bad.connected
    finally:
        await good.stop()
        await bad.stop()
        watcher.close()
