"""MQTT telemetry of a 1,000-charger site: messages and CPU per simulated second.

Ours: `agent.interfaces.telemetry.publisher.TelemetryPublisher` (changed objects coalesced per
topic, at most one message per topic per `min_interval_s`, a tick per second). Baseline: a per-
event publisher that sends the charger's state on every OCPP event, which is what a bridge
without throttling does (one message per meter value). Both get the same event stream through
the same real `Site` and count messages in an in-process transport, so the figures are the
publisher's own cost, not the broker's. Headline: how many times fewer messages ours sends.

    python -m bench telemetry [--chargers 1000] [--seconds 60] [--meter-interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.app import build_agent
from agent.demo.defaults import demo_config
from agent.interfaces.status import LiveStatus
from agent.interfaces.telemetry.mqtt import MessageHandler, Payload, encode
from agent.interfaces.telemetry.publisher import TelemetryPublisher
from agent.interfaces.telemetry.topics import Topics
from bench.report import emit, ratio
from ocpp_bridge import BootInfo, ChargerConnected, Event, MeterSample, ProtocolVersion


class CountingTransport:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def publish(self, topic: str, payload: Payload, *, retain: bool = False, qos: int = 0) -> None:
        self.messages += 1
        self.bytes += len(encode(payload))

    def clear_retained(self, topic: str) -> None:
        self.messages += 1

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        return None


class SimulatedTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def run(chargers: int, seconds: int, meter_interval: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        agent = build_agent(demo_config(Path(tmp) / "state"))
        await agent.db.start()
        try:
            ids = [f"B{i:04d}" for i in range(chargers)]
            topics = Topics("flexbridge", agent.config.site.id)
            ours, clock = CountingTransport(), SimulatedTime()
            publisher = TelemetryPublisher(
                agent, ours, topics, "homeassistant", tick_s=3600.0, monotonic=clock
            )
            naive = CountingTransport()
            status = LiveStatus(agent)

            def per_event(event: Event) -> None:
                charger_id = getattr(event, "charger_id", None)
                if isinstance(charger_id, str):
                    naive.publish(
                        topics.charger_state(charger_id), status.charger(charger_id), retain=True
                    )

            agent.site.subscribe(per_event)
            start = datetime.now(UTC)
            boot = BootInfo("Sim", "Bench", None, "1", ProtocolVersion.OCPP16)
            for charger_id in ids:
                await agent.site.handle(ChargerConnected(charger_id, start, boot))
            await publisher.start()
            ours.messages = naive.messages = 0
            ours.bytes = naive.bytes = 0

            events = 0
            step_s = 0.0
            for second in range(seconds):
                at = start + timedelta(seconds=second)
                if second % meter_interval == 0:
                    for n, charger_id in enumerate(ids):
                        power = 7_000.0 + (n * 37 + second * 11) % 4_000
                        sample = MeterSample(charger_id, 1, at, None, power_w=power)
                        await agent.site.handle(sample)
                        events += 1
                clock.now += 1.0
                began = time.perf_counter()
                await publisher.step()
                step_s += time.perf_counter() - began
            await publisher.stop()
        finally:
            await agent.db.stop()

    emit("chargers", chargers)
    emit("simulated_s", seconds)
    emit("ocpp_events", events)
    emit("baseline_per_event_messages_per_s", naive.messages / seconds)
    emit("baseline_per_event_kib_per_s", naive.bytes / 1024 / seconds)
    emit("flexbridge_messages_per_s", ours.messages / seconds)
    emit("flexbridge_kib_per_s", ours.bytes / 1024 / seconds)
    emit("flexbridge_tick_cpu_ms", 1000 * step_s / seconds)
    emit(
        "message_reduction_x",
        ratio(naive.messages / seconds, max(ours.messages, 1) / seconds),
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench telemetry")
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--meter-interval", type=int, default=1, help="s between meter values")
    args = parser.parse_args(argv)
    asyncio.run(run(args.chargers, args.seconds, args.meter_interval))
