"""MQTT connection for telemetry, with paho's network loop off the event loop.

paho runs its own network thread (`loop_start`), which also reconnects with exponential back-off
(1 s to 60 s) and retries the first connection, so a missing or restarting broker never blocks
or crashes the agent. `publish` is thread-safe in paho and only enqueues, so calling it from the
event loop costs microseconds.

Retained state is also kept in a local cache and re-published on every (re)connect: a broker
restarted without persistence gets the full picture back at once, and messages are not queued
while disconnected (stale bursts help nobody; the cache has the latest value). Availability uses
a retained last will: ``<prefix>/<site>/status`` is ``online`` while we are connected and
``offline`` when we stop or the broker loses us.

Subscriptions (`subscribe`) are renewed on every connect; their handlers run on paho's thread
and must only hand the message over (the telemetry publisher reads back its own retained Home
Assistant discovery this way, to clear that of chargers that are gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

Payload = str | bytes | dict[str, object] | list[object] | int | float
# (topic, payload, retained): called on paho's network thread, so it must only hand over.
MessageHandler = Callable[[str, bytes, bool], None]


def encode(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = 60
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60


@dataclass
class MqttStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    dropped_offline: int = 0
    last_error: str = ""
    connected: threading.Event = field(default_factory=threading.Event)


class MqttTelemetry:
    """Service component owning one MQTT connection; publish from the event loop freely."""

    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        availability_topic: str,
        on_connect: Callable[[], Iterable[tuple[str, Payload]]] | None = None,
    ) -> None:
        self.settings = settings
        self.availability_topic = availability_topic
        # Extra retained messages (Home Assistant discovery) to (re)send on every connect.
        self._on_connect_messages = on_connect
        self._retained: dict[str, bytes] = {}
        self._subscriptions: dict[str, MessageHandler] = {}
        self._lock = threading.Lock()
        self.stats = MqttStats()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id)
        client.enable_logger(logging.getLogger("agent.interfaces.telemetry.paho"))
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
            client.tls_set_context(context)
        client.will_set(self.availability_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        return client

    # --- paho thread ------------------------------------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        if reason.is_failure:
            self.stats.last_error = str(reason)
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        self.stats.connects += 1
        client.publish(self.availability_topic, b"online", qos=1, retain=True)
        # A clean session forgets subscriptions: renew them on every connect.
        with self._lock:
            filters = list(self._subscriptions)
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=1)
        extra = list(self._on_connect_messages()) if self._on_connect_messages else []
        for topic, payload in extra:
            client.publish(topic, encode(payload), qos=1, retain=True)
        with self._lock:
            cached = list(self._retained.items())
        for topic, data in cached:
            client.publish(topic, data, qos=1, retain=True)
        self.stats.connected.set()
        log.info(
            "MQTT connected",
            extra={"broker": f"{self.settings.host}:{self.settings.port}", "retained": len(cached)},
        )

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: object,
    ) -> None:
        was_connected = self.stats.connected.is_set()
        self.stats.connected.clear()
        if was_connected:
            self.stats.disconnects += 1
            log.warning("MQTT connection lost (%s); reconnecting with back-off", reason)

    def _handle_message(
        self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage
    ) -> None:
        with self._lock:
            handlers = [
                h for f, h in self._subscriptions.items() if mqtt.topic_matches_sub(f, msg.topic)
            ]
        for handler in handlers:
            try:
                handler(msg.topic, bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("MQTT message handler failed on %s", msg.topic)

    # --- event loop -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.stats.connected.is_set()

    async def start(self) -> None:
        s = self.settings
        # connect_async + loop_start: the thread retries the first connection too.
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    async def stop(self) -> None:
        if self.connected:
            info = self._client.publish(self.availability_topic, b"offline", qos=1, retain=True)
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def publish(self, topic: str, payload: Payload, *, retain: bool = False, qos: int = 0) -> None:
        """Send now if connected; retained state is also cached for the next (re)connect."""
        data = encode(payload)
        if retain:
            with self._lock:
                self._retained[topic] = data
        if not self.connected:
            self.stats.dropped_offline += 0 if retain else 1
            return
        self._client.publish(topic, data, qos=qos, retain=retain)
        self.stats.published += 1

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Receive messages on `topic_filter` (now and after every reconnect) in `handler`."""
        with self._lock:
            self._subscriptions[topic_filter] = handler
        if self.connected:
            self._client.subscribe(topic_filter, qos=1)

    def clear_retained(self, topic: str) -> None:
        """Remove a retained topic (an entity that no longer exists)."""
        with self._lock:
            self._retained.pop(topic, None)
        if self.connected:
            self._client.publish(topic, b"", qos=1, retain=True)
