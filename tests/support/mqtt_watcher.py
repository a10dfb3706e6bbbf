"""A plain paho subscriber that records the last payload per topic, for tests on a real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from tests.support.mosquitto import MosquittoBroker


class Watcher:
    """Subscribes to `topic` (all by default) and keeps the last payload of every topic."""

    def __init__(self, broker: MosquittoBroker, topic: str = "#") -> None:
        self.last: dict[str, bytes] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.last[msg.topic] = msg.payload
            self.changed.notify_all()

    def wait_until(
        self, done: Callable[[dict[str, bytes]], bool], what: str, timeout_s: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not done(self.last):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.changed.wait(left)

    def wait_for(self, topic: str, payload: bytes, timeout_s: float = 15.0) -> None:
        self.wait_until(
            lambda last: last.get(topic) == payload,
            f"{topic} = {payload!r} (have {self.last.get(topic)!r})",
            timeout_s,
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
