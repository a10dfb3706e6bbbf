"""The broker fixture is a real Mosquitto: a paho client round-trips and survives a restart."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.integration


def _client(
    broker: MosquittoBroker, received: list[tuple[str, bytes]], event: threading.Event
) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload))
        event.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    return client


def test_publish_subscribe_and_restart(mosquitto: MosquittoBroker) -> None:
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    client = _client(mosquitto, received, got)
    client.loop_start()
    try:
        sub_result, _ = client.subscribe("flexbridge/test/#", qos=1)
        assert sub_result == mqtt.MQTT_ERR_SUCCESS
        info = client.publish("flexbridge/test/a", b"1", qos=1, retain=True)
        info.wait_for_publish(timeout=5)
        assert got.wait(5)
        assert received[-1] == ("flexbridge/test/a", b"1")
    finally:
        client.loop_stop()
        client.disconnect()

    mosquitto.restart()  # persistence off: retained messages are gone after a restart
    received.clear()
    got.clear()
    client = _client(mosquitto, received, got)
    client.loop_start()
    try:
        client.subscribe("flexbridge/test/#", qos=1)
        client.publish("flexbridge/test/b", b"2", qos=1).wait_for_publish(timeout=5)
        assert got.wait(5)
        assert received == [("flexbridge/test/b", b"2")]
    finally:
        client.loop_stop()
        client.disconnect()
