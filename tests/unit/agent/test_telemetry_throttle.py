"""A 1,000-charger site does not flood the broker: changes are coalesced per topic and rate
limited, unchanged state is not re-sent until the periodic refresh, new chargers are discovered
before their state, and discovery left over from chargers that are gone is cleared."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.app import Agent, build_agent
from agent.interfaces.telemetry.mqtt import MessageHandler, Payload, encode
from agent.interfaces.telemetry.publisher import TelemetryPublisher
from agent.interfaces.telemetry.topics import Topics
from ocpp_bridge import BootInfo, ChargerConnected, MeterSample, ProtocolVersion
from tests.support.agent_env import make_env

CHARGERS = [f"P{i:04d}" for i in range(1000)]
TOPICS = Topics("flexbridge", "test")
MIN_INTERVAL = 5.0


class RecordingTransport:
    """An in-process stand-in for MqttTelemetry: records what would go to the broker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.retained: dict[str, bytes] = {}
        self.handlers: dict[str, MessageHandler] = {}

    def publish(self, topic: str, payload: Payload, *, retain: bool = False, qos: int = 0) -> None:
        data = encode(payload)
        self.messages.append((topic, data))
        if retain:
            self.retained[topic] = data

    def clear_retained(self, topic: str) -> None:
        self.retained.pop(topic, None)
        self.messages.append((topic, b""))

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        self.handlers[topic_filter] = handler


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    env = make_env(tmp_path, ocpp={"chargers": [{"id": c} for c in CHARGERS]})
    built = build_agent(env.config)
    await built.db.start()
    yield built
    await built.db.stop()


async def started(
    agent: Agent, clock: FakeTime, transport: RecordingTransport
) -> TelemetryPublisher:
    publisher = TelemetryPublisher(
        agent,
        transport,
        TOPICS,
        "homeassistant",
        min_interval_s=MIN_INTERVAL,
        refresh_s=300.0,
        tick_s=3600.0,  # the test drives step() itself
        monotonic=clock,
    )
    await publisher.start()
    return publisher


def sample(charger_id: str, at: datetime, power_w: float) -> MeterSample:
    return MeterSample(
        charger_id=charger_id, evse_id=1, at=at, session_id=None, power_w=power_w, energy_wh=None
    )


async def test_a_busy_site_costs_at_most_one_message_per_topic_and_interval(agent: Agent) -> None:
    clock, transport = FakeTime(), RecordingTransport()
    publisher = await started(agent, clock, transport)
    start = datetime.now(UTC)
    for cid in CHARGERS:
        await agent.site.handle(
            ChargerConnected(cid, start, BootInfo("V", "M", None, "1.0", ProtocolVersion.OCPP16))
        )
    transport.messages.clear()
    # 60 s of meter values from every charger every second, each with a new power value.
    events = 0
    for second in range(60):
        at = start + timedelta(seconds=second)
        for n, cid in enumerate(CHARGERS):
            await agent.site.handle(sample(cid, at, 1000.0 + n + second))
            events += 1
        clock.now += 1.0
        await publisher.step()
    per_topic = Counter(topic for topic, _ in transport.messages)
    charger_topics = {TOPICS.charger_state(c) for c in CHARGERS}
    assert events == 60_000
    assert max(per_topic[t] for t in charger_topics) <= 60 / MIN_INTERVAL + 1
    assert per_topic[TOPICS.site_state] <= 60 / MIN_INTERVAL + 1
    state = [t for t, _ in transport.messages if not t.startswith("homeassistant/")]
    assert len(state) <= (len(CHARGERS) + 1) * (60 / MIN_INTERVAL + 1)
    # Discovery went out again once per entity: the boot told vendor, model and firmware.
    discovery = [t for t, _ in transport.messages if t.startswith("homeassistant/")]
    assert len(discovery) == len(set(discovery)) == 5 * len(CHARGERS)

    # The newest value waiting for its slot goes out once the interval has passed.
    clock.now += MIN_INTERVAL
    await publisher.step()
    assert publisher.pending == 0
    for n, cid in enumerate(CHARGERS):
        state = json.loads(transport.retained[TOPICS.charger_state(cid)])
        assert state["power_w"] == 1000 + n + 59
        assert state["online"] is True
    site = json.loads(transport.retained[TOPICS.site_state])
    assert site["power_w"] == sum(1000 + n + 59 for n in range(len(CHARGERS)))
    assert site["chargers_online"] == len(CHARGERS)


async def test_unchanged_state_waits_for_the_periodic_refresh(agent: Agent) -> None:
    clock, transport = FakeTime(), RecordingTransport()
    publisher = await started(agent, clock, transport)
    clock.now += MIN_INTERVAL
    await publisher.step()
    transport.messages.clear()
    for _ in range(20):
        clock.now += 10.0
        await publisher.step()
    assert transport.messages == []  # 200 s, nothing changed, nothing sent
    clock.now += 100.0  # past the 300 s refresh
    await publisher.step()
    sent = {topic for topic, _ in transport.messages}
    assert {TOPICS.charger_state(c) for c in CHARGERS} <= sent
    assert {TOPICS.site_state, TOPICS.offers, TOPICS.orders, TOPICS.delivery} <= sent


async def test_a_new_charger_is_discovered_before_its_state(agent: Agent) -> None:
    clock, transport = FakeTime(), RecordingTransport()
    publisher = await started(agent, clock, transport)
    transport.messages.clear()
    boot = BootInfo("Alfen", "Eve", "S1", "6.1", ProtocolVersion.OCPP201)
    await agent.site.handle(ChargerConnected("NEW+1", datetime.now(UTC), boot))
    clock.now += MIN_INTERVAL
    await publisher.step()
    topics = [topic for topic, _ in transport.messages]
    state = TOPICS.charger_state("NEW+1")
    assert state == "flexbridge/test/charger/NEW%2B1/state"
    discovery = [t for t in topics if t.startswith("homeassistant/") and "NEW_1_" in t]
    assert len(discovery) == 5
    assert max(topics.index(t) for t in discovery) < topics.index(state)
    power = json.loads(
        transport.retained[next(t for t in discovery if t.endswith("_power/config"))]
    )
    assert power["device"]["manufacturer"] == "Alfen"
    assert power["device"]["model"] == "Eve"
    assert power["device"]["sw_version"] == "6.1"


async def test_discovery_of_a_charger_that_is_gone_is_cleared(agent: Agent) -> None:
    clock, transport = FakeTime(), RecordingTransport()
    publisher = await started(agent, clock, transport)
    (subscription, handler) = next(iter(transport.handlers.items()))
    assert subscription == "homeassistant/+/flexbridge_test/+/config"
    gone = "homeassistant/sensor/flexbridge_test/OLD-1_power/config"
    gone_state = "flexbridge/test/charger/OLD-1/state"
    config = json.dumps({"state_topic": gone_state, "name": "Power"}).encode()
    ours = next(t for t in transport.retained if t.endswith("/P0001_power/config"))
    handler(gone, config, True)
    handler(ours, transport.retained[ours], True)  # still published: kept
    handler("homeassistant/sensor/flexbridge_test/OLD-2_power/config", config, False)  # live
    # The handler runs on paho's thread and hands over to the loop.
    for _ in range(3):
        await asyncio.sleep(0)
    assert publisher.cleared == [gone, gone_state]
    assert ("homeassistant/sensor/flexbridge_test/OLD-2_power/config", b"") not in (
        transport.messages
    )
    assert ours in transport.retained
    await publisher.stop()
