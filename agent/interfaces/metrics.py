"""Prometheus metrics of one agent: state read at scrape time, plus a few latency histograms.

Most numbers already exist in the agent (chargers online, dispatch rounds, the outbox in the
store), so a collector reads them when Prometheus scrapes instead of every module keeping
counters in step. Where only the moment of the work knows the number (how long a dispatch
round, an OCPP command, the handling of an inbound UFTP message or a store transaction took),
the module calls an `Observe` hook; it defaults to `discard`, so the modules do not depend on
Prometheus and tests without metrics pay nothing.

Each agent has its own `CollectorRegistry` (not the process-global one), so several agents in
one test process never collide. Metric names are documented in docs/operations.md.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent import __version__
from agent.runtime.faults import KNOWN as KNOWN_FAULTS

if TYPE_CHECKING:
    from agent.interfaces.telemetry.mqtt import MqttTelemetry
    from agent.interfaces.view import AgentView
    from ocpp_bridge import Event

# Dispatch rounds and UFTP handling run in milliseconds to seconds on a Raspberry Pi; SQLite
# commits with synchronous=FULL take one or two fsyncs (sub-ms on SSD, tens of ms on SD cards).
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class _StoreCounts:
    inbox: list[tuple[str, str, int]] = field(default_factory=list)
    outbox: list[tuple[str, str, int]] = field(default_factory=list)
    oldest_pending_s: float = 0.0
    records: list[tuple[str, str, int]] = field(default_factory=list)


# (table, status column) of the agent's records counted per status.
_RECORDS = [
    ("prognosis", "status"),
    ("flex_request", "status"),
    ("flex_offer", "status"),
    ("flex_order", "status"),
    ("flex_settlement", "result"),
]


def _store_counts(conn: sqlite3.Connection, now: float) -> _StoreCounts:
    counts = _StoreCounts()
    counts.inbox = [
        (r[0], r[1], int(r[2]))
        for r in conn.execute("SELECT message_type, status, COUNT(*) FROM uftp_inbox GROUP BY 1, 2")
    ]
    counts.outbox = [
        (r[0], r[1], int(r[2]))
        for r in conn.execute(
            "SELECT message_type, status, COUNT(*) FROM uftp_outbox GROUP BY 1, 2"
        )
    ]
    row = conn.execute("SELECT MIN(created_at) FROM uftp_outbox WHERE status = 'pending'")
    oldest = row.fetchone()[0]
    counts.oldest_pending_s = 0.0 if oldest is None else max(0.0, now - float(oldest))
    for table, column in _RECORDS:
        counts.records += [
            (table, str(r[0]), int(r[1]))
            for r in conn.execute(f"SELECT {column}, COUNT(*) FROM {table} GROUP BY 1")
        ]
    return counts


class StateCollector:
    """Reads the agent's live state and the last store counts when Prometheus scrapes."""

    def __init__(self, agent: AgentView, mqtt: MqttTelemetry | None = None) -> None:
        self.agent = agent
        self.mqtt = mqtt
        self.counts = _StoreCounts()

    async def refresh(self) -> None:
        """Read the store's counts (off the loop, on the database thread) before a scrape."""
        now = self.agent.clock.now().timestamp()
        self.counts = await self.agent.db.read(lambda c: _store_counts(c, now))

    def collect(self) -> Iterable[Metric]:
        agent = self.agent
        site = agent.site
        info = GaugeMetricFamily(
            "flexbridge_build_info", "Version and site of this agent", labels=["version", "site"]
        )
        info.add_metric([__version__, agent.config.site.id], 1)
        yield info

        known = {c.id for c in agent.config.ocpp.chargers} | set(site.chargers)
        online = sum(1 for c in site.chargers.values() if c.online)
        chargers = GaugeMetricFamily("flexbridge_chargers", "Known chargers", labels=["state"])
        chargers.add_metric(["online"], online)
        chargers.add_metric(["offline"], len(known) - online)
        yield chargers
        yield GaugeMetricFamily(
            "flexbridge_site_power_watts", "Power the chargers draw now", value=site.power_w()
        )
        yield GaugeMetricFamily(
            "flexbridge_site_capacity_watts",
            "The grid connection's capacity",
            value=agent.config.site.connection_capacity_w,
        )
        yield GaugeMetricFamily(
            "flexbridge_sessions_active", "Charging sessions in progress", value=len(site.sessions)
        )
        power = GaugeMetricFamily(
            "flexbridge_charger_power_watts", "Power per charger", labels=["charger"]
        )
        limit = GaugeMetricFamily(
            "flexbridge_charger_limit_watts",
            "Limit the charger holds by its own word, by source (dynamic, fallback, safe)",
            labels=["charger", "source"],
        )
        uncontrollable = GaugeMetricFamily(
            "flexbridge_charger_uncontrollable",
            "1 while a connected charger takes no charging profile at all",
            labels=["charger"],
        )
        up = GaugeMetricFamily(
            "flexbridge_charger_online", "1 while the charger is connected", labels=["charger"]
        )
        for charger_id, state in sorted(site.chargers.items()):
            power.add_metric([charger_id], state.power_w if state.online else 0.0)
            up.add_metric([charger_id], 1.0 if state.online else 0.0)
            applied = agent.dispatcher.applied(charger_id)
            if applied.limit_w is not None and applied.source is not None:
                limit.add_metric([charger_id, applied.source], applied.limit_w)
            uncontrollable.add_metric([charger_id], 1.0 if applied.controllable is False else 0.0)
        yield power
        yield limit
        yield uncontrollable
        yield up
        yield CounterMetricFamily(
            "flexbridge_ocpp_dropped_events",
            "OCPP events dropped because the agent lagged (meter samples first)",
            value=agent.bridge.dropped_events,
        )
        unsolicited = CounterMetricFamily(
            "flexbridge_ocpp_unsolicited_responses",
            "OCPP responses that answered no pending call (dropped; a stream of them is a flood)",
            labels=["charger"],
        )
        for charger_id, count in sorted(agent.bridge.unsolicited_responses().items()):
            unsolicited.add_metric([charger_id], count)
        yield unsolicited

        dispatcher = agent.dispatcher
        yield CounterMetricFamily(
            "flexbridge_dispatch_rounds", "Dispatch rounds run", value=dispatcher.rounds
        )
        commands = CounterMetricFamily(
            "flexbridge_dispatch_commands",
            "Dynamic schedules pushed to chargers, by result",
            labels=["status"],
        )
        for status, count in sorted(dispatcher.command_results.items()):
            commands.add_metric([status], count)
        yield commands
        readbacks = CounterMetricFamily(
            "flexbridge_dispatch_readbacks",
            "Composite schedules read back after a round, by result (excess: a charger allows "
            "more than it was sent)",
            labels=["result"],
        )
        for result in ("ok", "excess", "unavailable"):
            readbacks.add_metric([result], dispatcher.readbacks[result])
        yield readbacks
        round_ = dispatcher.last_round
        if round_ is not None:
            yield GaugeMetricFamily(
                "flexbridge_dispatch_unmet_energy_wh",
                "Energy the last round could not give the plugged-in EVs by their departure",
                value=round_.unmet_wh,
            )
            yield GaugeMetricFamily(
                "flexbridge_dispatch_cap_watts",
                "Site power cap of the current ISP in the last round (orders lower it)",
                value=round_.cap_w[0],
            )
            yield GaugeMetricFamily(
                "flexbridge_dispatch_last_round_timestamp_seconds",
                "When the last dispatch round ran (agent clock)",
                value=round_.at.timestamp(),
            )

        counts = self.counts
        inbox = GaugeMetricFamily(
            "flexbridge_uftp_inbox_messages",
            "Inbound UFTP messages in the store",
            labels=["message_type", "status"],
        )
        for message_type, status, n in counts.inbox:
            inbox.add_metric([message_type, status], n)
        yield inbox
        outbox = GaugeMetricFamily(
            "flexbridge_uftp_outbox_messages",
            "Outbound UFTP messages in the store",
            labels=["message_type", "status"],
        )
        for message_type, status, n in counts.outbox:
            outbox.add_metric([message_type, status], n)
        yield outbox
        yield GaugeMetricFamily(
            "flexbridge_uftp_outbox_oldest_pending_seconds",
            "Age of the oldest outbound message not yet delivered (0: none)",
            value=counts.oldest_pending_s,
        )
        records = GaugeMetricFamily(
            "flexbridge_store_records", "Trade records by status", labels=["table", "status"]
        )
        for table, status, n in counts.records:
            records.add_metric([table, status], n)
        yield records
        size = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):
                size += os.stat(f"{agent.db.path}{suffix}").st_size
        yield GaugeMetricFamily(
            "flexbridge_store_database_bytes", "SQLite file plus its WAL", value=size
        )
        yield CounterMetricFamily(
            "flexbridge_store_write_failures",
            "Store writes that failed because of the storage (full, read-only, I/O error)",
            value=agent.db.write_failures,
        )
        active = GaugeMetricFamily(
            "flexbridge_fault_active",
            "1 while the fault is active (storage: writes fail; clock: not trusted)",
            labels=["fault"],
        )
        raised = CounterMetricFamily(
            "flexbridge_faults_raised", "Times the fault was raised", labels=["fault"]
        )
        for name in KNOWN_FAULTS:
            active.add_metric([name], 1.0 if agent.faults.is_active(name) else 0.0)
            raised.add_metric([name], agent.faults.raised.get(name, 0))
        yield active
        yield raised

        if self.mqtt is not None:
            stats = self.mqtt.stats
            yield GaugeMetricFamily(
                "flexbridge_mqtt_connected",
                "1 while connected to the broker",
                value=1.0 if stats.connected.is_set() else 0.0,
            )
            yield CounterMetricFamily(
                "flexbridge_mqtt_connects", "Connections to the broker", value=stats.connects
            )
            yield CounterMetricFamily(
                "flexbridge_mqtt_published", "Messages published", value=stats.published
            )


class AgentMetrics:
    """The registry behind /metrics, and the hooks that feed its histograms."""

    def __init__(self, agent: AgentView, mqtt: MqttTelemetry | None = None) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        self.dispatch_round = Histogram(
            "flexbridge_dispatch_round_seconds",
            "Duration of a dispatch round (allocation and pushing schedules)",
            buckets=SLOW,
            registry=self.registry,
        )
        self.ocpp_command = Histogram(
            "flexbridge_ocpp_command_seconds",
            "Time from sending an OCPP command to the charger's answer",
            ["command"],
            buckets=SLOW,
            registry=self.registry,
        )
        self.uftp_inbound = Histogram(
            "flexbridge_uftp_inbound_handling_seconds",
            "Handling of one inbound UFTP message (decision, answer queued, one transaction)",
            ["message_type"],
            buckets=FAST,
            registry=self.registry,
        )
        self.store = Histogram(
            "flexbridge_store_transaction_seconds",
            "SQLite transactions on the database thread, commit included",
            ["kind"],
            buckets=FAST,
            registry=self.registry,
        )
        self.ocpp_events = Counter(
            "flexbridge_ocpp_events",
            "Events from the OCPP bridge, by type",
            ["event"],
            registry=self.registry,
        )
        self.state = StateCollector(agent, mqtt)
        self.registry.register(self.state)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def attach(self) -> None:
        """Connect the hooks of the agent's modules to the histograms."""
        self.agent.db.observe = lambda kind, s: self.store.labels(kind).observe(s)
        if self.agent.trader is not None:
            self.agent.trader.observe = lambda kind, s: self.uftp_inbound.labels(kind).observe(s)
        self.agent.dispatcher.observe = self._dispatch
        self.agent.site.subscribe(self._event)

    def _dispatch(self, what: str, seconds: float) -> None:
        if what == "round":
            self.dispatch_round.observe(seconds)
        else:
            self.ocpp_command.labels(what).observe(seconds)

    def _event(self, event: Event) -> None:
        self.ocpp_events.labels(type(event).__name__).inc()

    async def exposition(self) -> bytes:
        """The Prometheus text format, with the store's counts read just now."""
        await self.state.refresh()
        return generate_latest(self.registry)
