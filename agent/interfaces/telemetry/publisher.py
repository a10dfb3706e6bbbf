"""What the agent publishes over MQTT: the topic tree of `telemetry.topics`, throttled.

A site of 1,000 chargers reporting meter values every few seconds must not turn into thousands
of MQTT messages a second. So nothing is published per event: events only mark a charger (and
the site) as changed, and a tick every `tick_s` builds the payload of each changed object and
publishes it when

- it differs from what was last published on that topic (whole watts, so meter noise below a
  watt is no news), and
- at least `min_interval_s` passed since that topic's last message; a newer value waiting for
  its slot replaces an older one, so a busy charger costs one message per interval at most.

Every `refresh_s` everything is published again even if unchanged (what OpenEMS does every
5 minutes), so a consumer that lost a message or only samples live values gets the state back.
Trade records (prognoses, offers, orders, delivery) are read from the store every `trade_s`.

Home Assistant discovery is published for the site and every known charger. Chargers that are
gone (removed from the configuration) still have retained discovery configs on the broker from
an earlier run: the publisher subscribes to its own discovery subtree, and every retained
config it did not publish itself is cleared, together with that charger's retained state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.interfaces.status import CHARGER_STATUSES, LiveStatus, TradeSnapshot, trade_snapshot
from agent.interfaces.telemetry.mqtt import MessageHandler, Payload, encode
from agent.interfaces.telemetry.topics import HomeAssistant, Topics, stale_state_topic
from ocpp_bridge import ChargerConnected, Event, MeterSample

if TYPE_CHECKING:
    from agent.interfaces.view import AgentView
from agent.runtime.loops import SupervisedLoop

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the publisher needs of the MQTT connection (`MqttTelemetry`)."""

    def publish(self, topic: str, payload: Payload, *, retain: bool = False, qos: int = 0) -> None:
        """Send (retained: also kept for the next reconnect)."""

    def clear_retained(self, topic: str) -> None:
        """Delete a retained topic on the broker."""

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Receive messages matching the filter."""


def _charger_of(event: Event) -> str | None:
    charger_id = getattr(event, "charger_id", None)
    if isinstance(charger_id, str):
        return charger_id
    session = getattr(event, "session", None)
    return getattr(session, "charger_id", None)


class TelemetryPublisher:
    """Service component publishing the agent's state to MQTT (after the transport started)."""

    name = "telemetry"

    def __init__(
        self,
        agent: AgentView,
        transport: Transport,
        topics: Topics,
        discovery_prefix: str,
        *,
        min_interval_s: float = 5.0,
        refresh_s: float = 300.0,
        trade_s: float = 15.0,
        tick_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.transport = transport
        self.topics = topics
        self.ha = HomeAssistant(topics, discovery_prefix, __version__)
        self.status = LiveStatus(agent)
        self.min_interval_s = min_interval_s
        self.refresh_s = refresh_s
        self.trade_s = trade_s
        self.tick_s = tick_s
        self._monotonic = monotonic
        self._last: dict[str, bytes] = {}
        self._last_at: dict[str, float] = {}
        self._pending: dict[str, bytes] = {}
        self._known: set[str] = set()
        self._dirty: set[str] = set()
        self._discovery_dirty: set[str] = set()
        self._site_dirty = True
        self._discovery_topics: set[str] = set()
        self._trade: TradeSnapshot | None = None
        self._next_trade = 0.0
        self._next_refresh = 0.0
        self._rounds_seen = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: SupervisedLoop | None = None
        self.cleared: list[str] = []
        agent.site.subscribe(self._site_event)
        agent.faults.subscribe(self._fault_changed)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.status.load_registered()
        self._publish_now(self.topics.info, self.status.info(), qos=1)
        site_discovery = self.ha.site(
            self.agent.config.site.name,
            [cp.entity_address for cp in self.agent.config.congestion_points],
        )
        for topic, config in site_discovery.items():
            self._discovery_topics.add(topic)
            self._publish_now(topic, config, qos=1)
        # Before the first state, so Home Assistant has the entities when the values arrive.
        self._discover_new_chargers()
        self._publish_discovery()
        self.transport.subscribe(self.ha.subscription, self._discovery_seen)
        await self.step()
        # Real time, not the agent's clock: the broker's load is counted in real seconds.
        self._ticker = SupervisedLoop(
            "telemetry",
            self.step,
            interval_s=self.tick_s,
            initial_delay_s=self.tick_s,
            logger=log,
        )
        self._ticker.start()

    async def stop(self) -> None:
        if self._ticker is not None:
            await self._ticker.stop()
            self._ticker = None

    # --- change tracking ------------------------------------------------------------------------

    def _site_event(self, event: Event) -> None:
        charger_id = _charger_of(event)
        if charger_id is not None:
            self._dirty.add(charger_id)
            if isinstance(event, ChargerConnected):
                self._discovery_dirty.add(charger_id)  # vendor, model, firmware from the boot
        if not isinstance(event, MeterSample) or event.power_w is not None:
            self._site_dirty = True

    def _fault_changed(self) -> None:
        # The site state carries the faults; publish it at the next tick.
        self._site_dirty = True

    def _discover_new_chargers(self) -> None:
        for charger_id in self.status.charger_ids():
            if charger_id not in self._known:
                self._known.add(charger_id)
                self._discovery_dirty.add(charger_id)
                self._dirty.add(charger_id)

    # --- one tick -------------------------------------------------------------------------------

    async def step(self) -> None:
        """Publish what changed (within the throttle); everything at a refresh."""
        now_m = self._monotonic()
        force = now_m >= self._next_refresh
        if force:
            self._next_refresh = now_m + self.refresh_s
            self._dirty.update(self._known)
            self._site_dirty = True
        if now_m >= self._next_trade or force:
            self._next_trade = now_m + self.trade_s
            await self._publish_trade(force)
        if self.agent.dispatcher.rounds != self._rounds_seen:
            # A dispatch round may have changed every charger's limit.
            self._rounds_seen = self.agent.dispatcher.rounds
            self._dirty.update(self._known)
            self._site_dirty = True
        self._discover_new_chargers()
        self._publish_discovery()
        if self._dirty:
            sessions = self.status.sessions_by_charger()
            for charger_id in sorted(self._dirty):
                view = self.status.charger(charger_id, sessions.get(charger_id, []))
                self._offer(self.topics.charger_state(charger_id), view, force)
            self._dirty.clear()
        if self._site_dirty:
            self._site_dirty = False
            site = self.status.site(self.agent.clock.now())
            site["ordered_w"] = self._trade.ordered_now_w if self._trade is not None else 0
            self._offer(self.topics.site_state, site, force)
        self._flush(now_m)

    async def _publish_trade(self, force: bool) -> None:
        trade = await trade_snapshot(self.agent, self.agent.clock.now())
        self._trade = trade
        by_cp = {p["congestion_point"]: p for p in trade.prognoses}
        for cp in self.agent.config.congestion_points:
            address = cp.entity_address
            prognosis = by_cp.get(address) or {
                "congestion_point": address,
                "period": trade.today.isoformat(),
                "revision": None,
                "status": None,
                "current_isp": trade.current_isp,
                "current_w": None,
            }
            self._offer(self.topics.prognosis(address), prognosis, force)
        self._offer(self.topics.offers, {"count": len(trade.offers), "offers": trade.offers}, force)
        self._offer(self.topics.orders, {"count": len(trade.orders), "orders": trade.orders}, force)
        self._offer(
            self.topics.delivery,
            {"period": trade.today.isoformat(), "orders": trade.delivery},
            force,
        )
        self._site_dirty = True

    def _publish_discovery(self) -> None:
        for charger_id in sorted(self._discovery_dirty):
            view = self.status.charger(charger_id, [])
            configs = self.ha.charger(
                charger_id,
                view["vendor"],
                view["model"],
                view["firmware"],
                tuple(CHARGER_STATUSES),
            )
            for topic, config in configs.items():
                self._discovery_topics.add(topic)
                if encode(config) != self._last.get(topic):
                    self._publish_now(topic, config, qos=1)
        self._discovery_dirty.clear()

    # --- throttle -------------------------------------------------------------------------------

    def _offer(self, topic: str, payload: Payload, force: bool = False) -> None:
        data = encode(payload)
        if not force and data == self._last.get(topic):
            self._pending.pop(topic, None)  # back to what subscribers already have
            return
        self._pending[topic] = data

    def _flush(self, now_m: float) -> None:
        for topic, data in list(self._pending.items()):
            if now_m - self._last_at.get(topic, -self.min_interval_s) < self.min_interval_s:
                continue
            del self._pending[topic]
            self.transport.publish(topic, data, retain=True)
            self._last[topic] = data
            self._last_at[topic] = now_m

    def _publish_now(self, topic: str, payload: Any, qos: int = 0) -> None:
        data = encode(payload)
        self.transport.publish(topic, data, retain=True, qos=qos)
        self._last[topic] = data
        self._last_at[topic] = self._monotonic()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- chargers that are gone -----------------------------------------------------------------

    def _discovery_seen(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho thread: a message in our discovery subtree; judge it on the event loop."""
        # Only retained copies (sent because we subscribed) can be left over from an earlier
        # run; live ones are our own publications coming back.
        if not retained or not payload or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            self._loop.call_soon_threadsafe(self._clear_if_stale, topic, payload)

    def _clear_if_stale(self, topic: str, payload: bytes) -> None:
        if topic in self._discovery_topics:
            return
        self.transport.clear_retained(topic)
        self.cleared.append(topic)
        state = stale_state_topic(payload, self.topics.base)
        current_states = {self.topics.charger_state(c) for c in self._known}
        if state is not None and state not in current_states and state not in self.cleared:
            self.transport.clear_retained(state)
            self.cleared.append(state)
        log.info("cleared Home Assistant discovery of an entity that no longer exists: %s", topic)
