"""The whole agent publishing to a real Mosquitto: Home Assistant discovery of every entity, the
state topics fed by real OCPP chargers, clearing of a gone charger, and all of it back after a
broker restart (which, without persistence, forgets every retained message)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from ocpp_bridge.simulator import SimCharger16, running
from tests.support.agent_env import CHARGERS, CP, TZ, make_env, running_agent, seed_history
from tests.support.mosquitto import MosquittoBroker
from tests.support.mqtt_watcher import Watcher
from uftp import calendar

pytestmark = pytest.mark.integration

BASE = "flexbridge/test"
NODE = "flexbridge_test"
AVAILABILITY = {
    "availability_topic": f"{BASE}/status",
    "payload_available": "online",
    "payload_not_available": "offline",
}
ORIGIN = {
    "name": "flexbridge",
    "sw_version": __version__,
    "support_url": "https://github.com/flexbridge/flexbridge",
}
SITE_DEVICE = {
    "identifiers": [NODE],
    "name": "flexbridge site",
    "manufacturer": "flexbridge",
    "model": "flexbridge agent",
    "sw_version": __version__,
}
CHARGER_STATUSES = [
    "offline",
    "unknown",
    "available",
    "occupied",
    "charging",
    "suspended_ev",
    "suspended_evse",
    "reserved",
    "unavailable",
    "faulted",
]
# Stale: a charger of an earlier configuration, still retained on the broker.
GONE = f"homeassistant/sensor/{NODE}/CP-99_power/config"
GONE_STATE = f"{BASE}/charger/CP-99/state"


def site_entities() -> dict[str, dict[str, Any]]:
    """Every site entity as Home Assistant must receive it (object id -> config)."""
    state = f"{BASE}/site/state"

    def entity(key: str, name: str, topic: str, template: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{NODE}_site_{key}",
            "state_topic": topic,
            "value_template": template,
            **AVAILABILITY,
            "device": SITE_DEVICE,
            "origin": ORIGIN,
            **extra,
        }

    power = {"device_class": "power", "state_class": "measurement", "unit_of_measurement": "W"}
    count = {"state_class": "measurement"}
    return {
        "site_power": entity("power", "Power", state, "{{ value_json.power_w }}", **power),
        "site_cap": entity("cap", "Power cap", state, "{{ value_json.cap_w }}", **power),
        "site_ordered": entity(
            "ordered", "Ordered flexibility", state, "{{ value_json.ordered_w }}", **power
        ),
        "site_chargers_online": entity(
            "chargers_online",
            "Chargers online",
            state,
            "{{ value_json.chargers_online }}",
            icon="mdi:ev-station",
            **count,
        ),
        "site_sessions": entity(
            "sessions",
            "Charging sessions",
            state,
            "{{ value_json.sessions }}",
            icon="mdi:car-electric",
            **count,
        ),
        "site_open_offers": entity(
            "open_offers",
            "Open flex offers",
            f"{BASE}/offers",
            "{{ value_json.count }}",
            icon="mdi:handshake",
            **count,
        ),
        "site_orders": entity(
            "orders",
            "Flex orders",
            f"{BASE}/orders",
            "{{ value_json.count }}",
            icon="mdi:file-document-check",
            **count,
        ),
        **{
            f"site_{fault}_fault": entity(
                f"{fault}_fault",
                f"{fault.capitalize()} fault",
                state,
                f"{{{{ 'ON' if value_json.faults.{fault} else 'OFF' }}}}",
                device_class="problem",
                entity_category="diagnostic",
                payload_on="ON",
                payload_off="OFF",
            )
            for fault in ("storage", "clock")
        },
        f"site_prognosis_{CP.replace('.', '_')}_{_hash(CP)}": entity(
            f"prognosis_{CP.replace('.', '_')}_{_hash(CP)}",
            f"Prognosis {CP}",
            f"{BASE}/congestion_point/{CP}/prognosis",
            "{{ value_json.current_w }}",
            **power,
        ),
    }


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:6]


def charger_entities(charger_id: str, booted: bool) -> dict[str, dict[str, Any]]:
    device = {
        "identifiers": [f"{NODE}_charger_{charger_id}"],
        "name": f"Charger {charger_id}",
        # Vendor and model come from the BootNotification once the charger connected.
        "manufacturer": "Sim" if booted else "unknown",
        "model": "Sim16" if booted else "OCPP charger",
        "via_device": NODE,
    }
    state = f"{BASE}/charger/{charger_id}/state"

    def entity(key: str, name: str, template: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{NODE}_{charger_id}_{key}",
            "state_topic": state,
            "value_template": template,
            **AVAILABILITY,
            "device": device,
            "origin": ORIGIN,
            **extra,
        }

    power = {"device_class": "power", "state_class": "measurement", "unit_of_measurement": "W"}
    return {
        f"sensor/{charger_id}_power": entity("power", "Power", "{{ value_json.power_w }}", **power),
        f"sensor/{charger_id}_limit": entity(
            "limit", "Power limit", "{{ value_json.limit_w }}", **power
        ),
        f"sensor/{charger_id}_session_energy": entity(
            "session_energy",
            "Session energy",
            "{{ value_json.session_energy_wh }}",
            device_class="energy",
            state_class="total_increasing",
            unit_of_measurement="Wh",
        ),
        f"sensor/{charger_id}_status": entity(
            "status",
            "Status",
            "{{ value_json.status }}",
            device_class="enum",
            options=CHARGER_STATUSES,
        ),
        f"binary_sensor/{charger_id}_online": entity(
            "online",
            "Online",
            "{{ 'ON' if value_json.online else 'OFF' }}",
            device_class="connectivity",
            entity_category="diagnostic",
            payload_on="ON",
            payload_off="OFF",
        ),
    }


def expected_discovery(booted: set[str]) -> dict[str, dict[str, Any]]:
    out = {
        f"homeassistant/{'binary_sensor' if key.endswith('_fault') else 'sensor'}/{NODE}/{key}"
        "/config": config
        for key, config in site_entities().items()
    }
    for charger_id in CHARGERS:
        for path, config in charger_entities(charger_id, charger_id in booted).items():
            component, key = path.split("/")
            out[f"homeassistant/{component}/{NODE}/{key}/config"] = config
    return out


def decoded(last: dict[str, bytes], topic: str) -> Any:
    payload = last.get(topic)
    return json.loads(payload) if payload else None


async def wait(watcher: Watcher, done: Any, what: str, timeout_s: float = 30.0) -> None:
    await asyncio.to_thread(watcher.wait_until, done, what, timeout_s)


async def test_discovery_and_state_of_site_and_chargers_survive_a_broker_restart(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    watcher = Watcher(mosquitto)
    stale = Watcher(mosquitto, topic="nothing/#")
    stale.client.publish(GONE, json.dumps({"state_topic": GONE_STATE}), qos=1, retain=True)
    stale.client.publish(GONE_STATE, b'{"power_w":0}', qos=1, retain=True)
    await wait(watcher, lambda last: GONE_STATE in last, "the stale retained topics")
    stale.close()

    env = make_env(
        tmp_path,
        ocpp={"security_profile": 0, "allow_security_profile_0": True},
        mqtt={
            "enabled": True,
            "host": mosquitto.host,
            "port": mosquitto.port,
            "min_interval_s": 0.2,
            "refresh_interval_s": 10,
        },
    )
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    try:
        async with running_agent(env) as (agent, _dso):
            assert agent.web is not None
            url = f"ws://127.0.0.1:{agent.bridge.port}"
            async with (
                running(SimCharger16, url, "CP-01") as charging,
                running(SimCharger16, url, "CP-02") as idle,
            ):
                for sim in (charging, idle):
                    await sim.boot()
                    await sim.status(1, "Available")
                transaction = await charging.start_transaction(1, meter_start=10_000)
                await charging.status(1, "Charging")
                await charging.meter_values(1, transaction, wh=11_500, w=11_000)

                def charging_seen(last: dict[str, bytes]) -> bool:
                    state = decoded(last, f"{BASE}/charger/CP-01/state")
                    return bool(state and state["power_w"] == 11_000 and state["session_active"])

                await wait(watcher, charging_seen, "CP-01 charging at 11 kW")

                def idle_seen(last: dict[str, bytes]) -> bool:
                    # Published on its own throttled schedule: not with CP-01's state.
                    state = decoded(last, f"{BASE}/charger/CP-02/state")
                    site = decoded(last, f"{BASE}/site/state")
                    return bool(
                        state
                        and state["status"] == "available"
                        and site
                        and site["chargers_online"] == 2
                        and site["sessions"] == 1
                    )

                await wait(watcher, idle_seen, "CP-02 available and the site with both online")
                expected = expected_discovery({"CP-01", "CP-02"})
                await wait(
                    watcher,
                    lambda last: all(decoded(last, t) == c for t, c in expected.items()),
                    "every discovery payload",
                )
                # The stale charger's discovery and state were cleared (empty retained).
                await wait(
                    watcher,
                    lambda last: last.get(GONE) == b"" and last.get(GONE_STATE) == b"",
                    "the gone charger cleared",
                )
                last = dict(watcher.last)

                cp01 = decoded(last, f"{BASE}/charger/CP-01/state")
                assert cp01["online"] is True
                assert cp01["status"] == "charging"
                assert cp01["session_energy_wh"] == 1_500
                assert cp01["sessions"][0]["energy_wh"] == 1_500
                cp02 = decoded(last, f"{BASE}/charger/CP-02/state")
                assert cp02["status"] == "available"
                assert cp02["power_w"] == 0
                assert decoded(last, f"{BASE}/charger/CP-03/state")["status"] == "unknown"
                site = decoded(last, f"{BASE}/site/state")
                assert site["chargers_online"] == 2
                assert site["chargers_total"] == len(CHARGERS)
                assert site["sessions"] == 1
                info = decoded(last, f"{BASE}/info")
                assert info["schema"] == 1
                assert info["version"] == __version__
                assert last[f"{BASE}/status"] == b"online"

                def prognosis_seen(last: dict[str, bytes]) -> bool:
                    p = decoded(last, f"{BASE}/congestion_point/{CP}/prognosis")
                    return bool(p and p["revision"] is not None)

                await wait(watcher, prognosis_seen, "today's D-prognosis", 60)
                prognosis = decoded(watcher.last, f"{BASE}/congestion_point/{CP}/prognosis")
                assert len(prognosis["power_w"]) == calendar.isp_count(prognosis_period(), TZ, 15)
                assert prognosis["current_w"] == prognosis["power_w"][prognosis["current_isp"] - 1]
                assert decoded(watcher.last, f"{BASE}/offers") == {"count": 0, "offers": []}

                ours = {t for t in watcher.last if t.startswith((BASE, "homeassistant/"))}
                ours -= {GONE, GONE_STATE}
                mosquitto.restart()  # no persistence: every retained message is gone
                with watcher.changed:
                    watcher.last.clear()
                await wait(
                    watcher,
                    lambda last: (
                        ours <= set(last)
                        and all(decoded(last, t) == c for t, c in expected.items())
                    ),
                    "every topic back after the restart",
                )
                assert watcher.last[f"{BASE}/status"] == b"online"
        await wait(
            watcher, lambda last: last.get(f"{BASE}/status") == b"offline", "offline at stop"
        )
    finally:
        watcher.close()


def prognosis_period() -> Any:
    return calendar.today(TZ, datetime.now(UTC))
