"""The published MQTT topic tree and the Home Assistant discovery payloads. Pure: no I/O.

Topic tree (schema 1, documented in docs/operations.md; names are stable, fields only grow)::

    <prefix>/<site>/status                          online | offline (retained, last will)
    <prefix>/<site>/info                            schema, version, site name, start time
    <prefix>/<site>/site/state                      site power, cap, chargers online, sessions
    <prefix>/<site>/charger/<charger>/state         status, online, power, limit, session
    <prefix>/<site>/congestion_point/<ea>/prognosis today's current D-prognosis revision
    <prefix>/<site>/offers                          open FlexOffers
    <prefix>/<site>/orders                          accepted FlexOrders from today on
    <prefix>/<site>/delivery                        today's orders per ISP: target vs measured

All retained: each is the latest state, which a subscriber that connects later needs at once.

A charger id may hold characters MQTT reserves (``+`` is legal in an OCPP identity) and an EA1
entity address may hold ``/``, ``#`` or ``+``: such a topic level is percent-encoded (``%2B``),
which is reversible and never collides because ``%`` itself is encoded. Home Assistant's
discovery ids allow only ``[a-zA-Z0-9_-]``; ids that needed changing get a short hash of the
original so two chargers never share an entity.

Discovery follows the Home Assistant MQTT integration: one retained config per entity under
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``, each with a ``unique_id`` and
a ``device``; the site is a device and every charger a device ``via_device`` the site, so Home
Assistant groups them. Every entity uses the agent's status topic for availability, so all of
them turn unavailable when the agent stops or the broker loses it (last will).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

_RESERVED = re.compile(r"[^A-Za-z0-9_-]")

Discovery = dict[str, Any]


def topic_level(value: str) -> str:
    """One topic level for an arbitrary id: no '/', '+', '#', NUL (MQTT 3.1.1 §4.7)."""
    if not value:
        raise ValueError("an empty id cannot be a topic level")
    # quote() keeps letters, digits and "_.-~" plus `safe`; OCPP identities also use these.
    return quote(value, safe="*=|@:,;!$&'()")


def object_id(value: str) -> str:
    """A Home Assistant discovery id: [a-zA-Z0-9_-], distinct for distinct inputs."""
    cleaned = _RESERVED.sub("_", value)
    if cleaned == value:
        return value
    digest = hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:6]
    return f"{cleaned}_{digest}"


@dataclass(frozen=True)
class Topics:
    prefix: str
    site_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def site_state(self) -> str:
        return f"{self.base}/site/state"

    def charger_state(self, charger_id: str) -> str:
        return f"{self.base}/charger/{topic_level(charger_id)}/state"

    def prognosis(self, congestion_point: str) -> str:
        return f"{self.base}/congestion_point/{topic_level(congestion_point)}/prognosis"

    @property
    def offers(self) -> str:
        return f"{self.base}/offers"

    @property
    def orders(self) -> str:
        return f"{self.base}/orders"

    @property
    def delivery(self) -> str:
        return f"{self.base}/delivery"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: where its value comes from and what it measures."""

    component: str  # sensor, binary_sensor
    key: str  # unique within its device
    name: str
    state_topic: str
    value_template: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()
    entity_category: str | None = None


@dataclass(frozen=True)
class Device:
    identifier: str
    name: str
    manufacturer: str
    model: str
    sw_version: str | None = None
    via_device: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "identifiers": [self.identifier],
            "name": self.name,
            "manufacturer": self.manufacturer,
            "model": self.model,
        }
        if self.sw_version:
            out["sw_version"] = self.sw_version
        if self.via_device:
            out["via_device"] = self.via_device
        return out


def power_sensor(key: str, name: str, state_topic: str, field: str) -> Entity:
    """A power reading in W, as Home Assistant's energy dashboard and statistics expect."""
    return Entity(
        "sensor",
        key,
        name,
        state_topic,
        f"{{{{ value_json.{field} }}}}",
        "power",
        "measurement",
        "W",
    )


def count_sensor(key: str, name: str, state_topic: str, template: str, icon: str) -> Entity:
    return Entity("sensor", key, name, state_topic, template, state_class="measurement", icon=icon)


class HomeAssistant:
    """Discovery messages for one site under `discovery_prefix`."""

    def __init__(self, topics: Topics, discovery_prefix: str, version: str) -> None:
        self.topics = topics
        self.prefix = discovery_prefix
        self.version = version
        self.node_id = object_id(f"flexbridge_{topics.site_id}")

    def topic(self, component: str, object_key: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id}/{object_key}/config"

    @property
    def subscription(self) -> str:
        """Every discovery config of this site, to find those of chargers that are gone."""
        return f"{self.prefix}/+/{self.node_id}/+/config"

    def _config(self, entity: Entity, device: Device, object_key: str) -> Discovery:
        config: Discovery = {
            "name": entity.name,
            "unique_id": f"{self.node_id}_{object_key}",
            "state_topic": entity.state_topic,
            "value_template": entity.value_template,
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device.as_json(),
            "origin": {
                "name": "flexbridge",
                "sw_version": self.version,
                "support_url": "https://github.com/flexbridge/flexbridge",
            },
        }
        for key, value in (
            ("device_class", entity.device_class),
            ("state_class", entity.state_class),
            ("unit_of_measurement", entity.unit),
            ("icon", entity.icon),
            ("entity_category", entity.entity_category),
        ):
            if value is not None:
                config[key] = value
        if entity.options:
            config["options"] = list(entity.options)
        if entity.component == "binary_sensor":
            config["payload_on"] = "ON"
            config["payload_off"] = "OFF"
        return config

    def site_device(self, site_name: str) -> Device:
        return Device(self.node_id, site_name, "flexbridge", "flexbridge agent", self.version)

    def site(self, site_name: str, congestion_points: list[str]) -> dict[str, Discovery]:
        """Topic -> config for the site's entities."""
        device = self.site_device(site_name)
        state = self.topics.site_state
        entities = [
            power_sensor("power", "Power", state, "power_w"),
            power_sensor("cap", "Power cap", state, "cap_w"),
            power_sensor("ordered", "Ordered flexibility", state, "ordered_w"),
            count_sensor(
                "chargers_online",
                "Chargers online",
                state,
                "{{ value_json.chargers_online }}",
                "mdi:ev-station",
            ),
            count_sensor(
                "sessions",
                "Charging sessions",
                state,
                "{{ value_json.sessions }}",
                "mdi:car-electric",
            ),
            count_sensor(
                "open_offers",
                "Open flex offers",
                self.topics.offers,
                "{{ value_json.count }}",
                "mdi:handshake",
            ),
            count_sensor(
                "orders",
                "Flex orders",
                self.topics.orders,
                "{{ value_json.count }}",
                "mdi:file-document-check",
            ),
        ]
        # Problems an operator must act on (agent.runtime.faults): storage that cannot be written, a
        # clock the agent does not trust. Their reasons are in the site state's "faults".
        entities.extend(
            Entity(
                "binary_sensor",
                f"{fault}_fault",
                f"{fault.capitalize()} fault",
                state,
                f"{{{{ 'ON' if value_json.faults.{fault} else 'OFF' }}}}",
                "problem",
                entity_category="diagnostic",
            )
            for fault in ("storage", "clock")
        )
        entities.extend(
            power_sensor(
                f"prognosis_{object_id(cp)}",
                f"Prognosis {cp}",
                self.topics.prognosis(cp),
                "current_w",
            )
            for cp in congestion_points
        )
        return {
            self.topic(e.component, f"site_{e.key}"): self._config(e, device, f"site_{e.key}")
            for e in entities
        }

    def charger(
        self,
        charger_id: str,
        vendor: str | None = None,
        model: str | None = None,
        firmware: str | None = None,
        statuses: tuple[str, ...] = (),
    ) -> dict[str, Discovery]:
        """Topic -> config for one charger's entities (a device via the site)."""
        slug = object_id(charger_id)
        device = Device(
            f"{self.node_id}_charger_{slug}",
            f"Charger {charger_id}",
            vendor or "unknown",
            model or "OCPP charger",
            firmware,
            via_device=self.node_id,
        )
        state = self.topics.charger_state(charger_id)
        entities = [
            power_sensor("power", "Power", state, "power_w"),
            power_sensor("limit", "Power limit", state, "limit_w"),
            Entity(
                "sensor",
                "session_energy",
                "Session energy",
                state,
                "{{ value_json.session_energy_wh }}",
                "energy",
                "total_increasing",
                "Wh",
            ),
            Entity(
                "sensor",
                "status",
                "Status",
                state,
                "{{ value_json.status }}",
                "enum",
                options=statuses,
            ),
            Entity(
                "binary_sensor",
                "online",
                "Online",
                state,
                "{{ 'ON' if value_json.online else 'OFF' }}",
                "connectivity",
                entity_category="diagnostic",
            ),
        ]
        return {
            self.topic(e.component, f"{slug}_{e.key}"): self._config(e, device, f"{slug}_{e.key}")
            for e in entities
        }


def stale_state_topic(config_payload: bytes, base: str) -> str | None:
    """The state topic a retained discovery config points to, if it is one of ours."""
    try:
        config = json.loads(config_payload)
    except ValueError:
        return None
    topic = config.get("state_topic") if isinstance(config, dict) else None
    if isinstance(topic, str) and topic.startswith(base + "/charger/"):
        return topic
    return None
