"""The operator's view of a running agent: one set of shapes for MQTT, the status page and the API.

Live state (site, chargers, sessions, the last dispatch round) is read from memory and costs
nothing; trade records (the current D-prognosis per congestion point, open offers, orders and
their delivery) come from the store in one read. Every shape is JSON-ready and uses the agent's
units: W and Wh, instants as ISO 8601 in UTC. ISPs carry both their UTC start and the market's
1-based index, because operators compare with what the DSO shows them (UFTP numbers ISPs).
These field names are part of the published MQTT topic tree (docs/operations.md): add fields,
never rename or remove them without bumping `SCHEMA_VERSION`.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.fleet import store as fleet_store
from agent.fleet.apply import ActiveCommand
from agent.site.model import ActiveSession, ChargerState
from agent.storage import store, trades
from agent.trading.market import Isp, Market
from agent.trading.orders import OrderContext, load_context
from ocpp_bridge import ConnectorStatus

if TYPE_CHECKING:
    from agent.interfaces.view import AgentView

# Version of the topic tree and of the JSON shapes below.
SCHEMA_VERSION = 1

JsonObject = dict[str, Any]

# What a charger with several EVSEs shows as one status: the one an operator must see first.
_STATUS_RANK = [
    ConnectorStatus.FAULTED,
    ConnectorStatus.CHARGING,
    ConnectorStatus.SUSPENDED_EVSE,
    ConnectorStatus.SUSPENDED_EV,
    ConnectorStatus.OCCUPIED,
    ConnectorStatus.RESERVED,
    ConnectorStatus.AVAILABLE,
    ConnectorStatus.UNAVAILABLE,
]
OFFLINE = "offline"
UNKNOWN = "unknown"
CHARGER_STATUSES = [OFFLINE, UNKNOWN, *(s.value for s in ConnectorStatus)]


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def watts(value: float | None) -> int | None:
    """Whole watts for display and telemetry (a sub-watt change is noise, not news)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value)


def charger_status(state: ChargerState | None) -> str:
    if state is None:
        return UNKNOWN
    if not state.online:
        return OFFLINE
    statuses = {e.status for e in state.evses.values() if e.evse_id > 0 and e.status is not None}
    if not statuses and 0 in state.evses and state.evses[0].status is not None:
        statuses = {state.evses[0].status}
    for status in _STATUS_RANK:
        if status in statuses:
            return status.value
    return UNKNOWN


def session_view(active: ActiveSession) -> JsonObject:
    info = active.info
    return {
        "id": info.session_id,
        "charger_id": info.charger_id,
        "evse_id": info.evse_id,
        "congestion_point": active.congestion_point,
        "started_at": iso(info.started_at),
        "energy_wh": watts(info.energy_wh),
        "power_w": watts(active.power_w),
        "requested_energy_wh": watts(info.requested_energy_wh),
        "departure_at": iso(info.departure_time),
        "soc_percent": info.soc_percent,
    }


class LiveStatus:
    """Reads the live state of one agent; built once, so per-charger lookups stay O(1)."""

    def __init__(self, agent: AgentView) -> None:
        self.agent = agent
        self.configured = {c.id: c for c in agent.config.ocpp.chargers}
        self.registered: set[str] = set()

    def charger_ids(self) -> list[str]:
        """Every charger the agent knows: configured, registered in the store, or seen."""
        return sorted(set(self.configured) | self.registered | set(self.agent.site.chargers))

    def sessions_by_charger(self) -> dict[str, list[ActiveSession]]:
        out: dict[str, list[ActiveSession]] = {}
        for active in self.agent.site.sessions.values():
            out.setdefault(active.info.charger_id, []).append(active)
        return out

    def chargers(self) -> list[JsonObject]:
        sessions = self.sessions_by_charger()
        return [self.charger(cid, sessions.get(cid, [])) for cid in self.charger_ids()]

    def charger(self, charger_id: str, sessions: list[ActiveSession] | None = None) -> JsonObject:
        agent = self.agent
        state = agent.site.chargers.get(charger_id)
        configured = self.configured.get(charger_id)
        if sessions is None:
            sessions = [s for s in agent.site.sessions.values() if s.info.charger_id == charger_id]
        sessions = sorted(sessions, key=lambda s: s.info.evse_id)
        safe_w = agent.config.safe_power_w(configured) if configured is not None else None
        applied = agent.dispatcher.applied(charger_id)
        boot = state.boot if state is not None else None
        online = bool(state and state.online)
        return {
            "id": charger_id,
            "congestion_point": agent.site.congestion_point_of(charger_id),
            "online": online,
            "status": charger_status(state),
            "power_w": watts(state.power_w if state is not None and online else 0.0),
            # What the charger may draw now by its own word (agent.control.dispatch.AppliedLimit):
            # the profile it accepted, confirmed by its composite schedule where read back.
            "limit_w": watts(applied.limit_w),
            "limit_source": applied.source,
            "limit_purpose": applied.purpose,
            "limit_read_back": applied.read_back,
            "controllable": applied.controllable,
            "safe_limit_w": safe_w,
            "max_power_w": configured.max_power_w if configured is not None else None,
            "last_seen": iso(state.last_seen if state is not None else None),
            "vendor": boot.vendor if boot else None,
            "model": boot.model if boot else None,
            "firmware": boot.firmware_version if boot else None,
            "protocol": str(boot.protocol) if boot else None,
            "evses": [
                {
                    "evse_id": e.evse_id,
                    "status": e.status.value if e.status is not None else None,
                    "power_w": watts(e.power_w),
                    "session_id": e.session_id,
                }
                for e in sorted(state.evses.values(), key=lambda e: e.evse_id)
            ]
            if state is not None
            else [],
            "session_active": bool(sessions),
            # Home Assistant's total_increasing sensor: a drop to 0 starts a new session's count.
            "session_energy_wh": watts(sum(s.info.energy_wh or 0.0 for s in sessions)),
            "sessions": [session_view(s) for s in sessions],
        }

    def current_cap_w(self, now: datetime) -> float | None:
        """The site power cap the last dispatch round set for the ISP running now."""
        round_ = self.agent.dispatcher.last_round
        if round_ is None:
            return None
        value: float | None = None
        for start, cap in zip(round_.grid, round_.cap_w, strict=True):
            if start <= now:
                value = cap
        return value

    def site(self, now: datetime) -> JsonObject:
        agent = self.agent
        config = agent.config.site
        round_ = agent.dispatcher.last_round
        return {
            "id": config.id,
            "name": config.name,
            "time_zone": config.timezone,
            "power_w": watts(agent.site.power_w()),
            "capacity_w": config.connection_capacity_w,
            "safe_limit_w": config.effective_safe_limit_w,
            "cap_w": watts(self.current_cap_w(now)),
            "chargers_total": len(self.charger_ids()),
            "chargers_online": sum(1 for c in agent.site.chargers.values() if c.online),
            "sessions": len(agent.site.sessions),
            "dispatch_rounds": agent.dispatcher.rounds,
            "last_dispatch_at": iso(round_.at if round_ is not None else None),
            "unmet_wh": watts(round_.unmet_wh if round_ is not None else None),
            # {"storage": None | {"reason", "since"}, "clock": ...} (agent.runtime.faults).
            "faults": agent.faults.view(),
        }

    def info(self) -> JsonObject:
        agent = self.agent
        return {
            "schema": SCHEMA_VERSION,
            "version": __version__,
            "site": agent.config.site.id,
            "name": agent.config.site.name,
            "started_at": iso(agent.site.started_at),
            # Added field: the load forecast's structure per congestion point.
            "forecast_structures": agent.forecaster.structure_views(),
        }

    async def load_registered(self) -> None:
        """Chargers admitted on first contact live in the store, not in the configuration."""
        rows = await self.agent.db.read(store.chargers)
        self.registered = {r.charger_id for r in rows}


# --- trade records ------------------------------------------------------------------------------


@dataclass
class TradeSnapshot:
    """The store's side of the status, read in one transaction."""

    today: date
    current_isp: int
    prognoses: list[JsonObject] = field(default_factory=list)
    offers: list[JsonObject] = field(default_factory=list)
    orders: list[JsonObject] = field(default_factory=list)
    delivery: list[JsonObject] = field(default_factory=list)
    # Sum of the ordered changes of the ISP running now (W; negative = reduction).
    ordered_now_w: int = 0


def _isps(runs: list[list[int]]) -> list[JsonObject]:
    """UFTP's (Start, Duration, Power) runs of ISPs, named."""
    return [{"start": s, "duration": d, "power_w": p} for s, d, p in runs]


def _offer_view(offer: trades.OfferRow) -> JsonObject:
    return {
        "message_id": offer.message_id,
        "conversation_id": offer.conversation_id,
        "dso": offer.dso_domain,
        "congestion_point": offer.congestion_point,
        "period": offer.period.isoformat(),
        "status": offer.status,
        "created_at": iso(offer.created_at),
        "expires_at": iso(offer.expires_at),
        "currency": offer.currency,
        "options": [
            {
                "reference": o["reference"],
                "price": o["price"],
                "isps": _isps(o["isps"]),
            }
            for o in offer.options
        ],
    }


def _order_view(order: trades.OrderRow) -> JsonObject:
    return {
        "message_id": order.message_id,
        "order_reference": order.order_reference,
        "dso": order.dso_domain,
        "congestion_point": order.congestion_point,
        "period": order.period.isoformat(),
        "price": order.price,
        "currency": order.currency,
        "received_at": iso(order.received_at),
        "isps": _isps(order.isps),
    }


def _prognosis_view(row: trades.PrognosisRow, current_isp: int, market: Market) -> JsonObject:
    k = current_isp - 1
    return {
        "congestion_point": row.congestion_point,
        "period": row.period.isoformat(),
        "revision": row.revision,
        "message_id": row.message_id,
        "status": row.status,
        "reason": row.reason,
        "created_at": iso(row.created_at),
        "isp_minutes": market.isp_minutes,
        "current_isp": current_isp,
        "current_w": row.power_w[k] if 0 <= k < len(row.power_w) else None,
        "current_baseline_w": row.baseline_w[k] if 0 <= k < len(row.baseline_w) else None,
        "power_w": row.power_w,
    }


@dataclass(frozen=True)
class _TradeRows:
    prognoses: list[trades.PrognosisRow]
    offers: list[trades.OfferRow]
    orders: list[trades.OrderRow]
    baselines: dict[str, trades.PrognosisRow]


async def fleet_link(agent: AgentView, now: datetime) -> JsonObject | None:
    """A fleet site's link to its centre (None when the site trades by itself): whether the
    bus answers, what waits in the outbox since when, and the centre's commands in force."""
    link = agent.link
    if link is None:
        return None

    def read(
        conn: sqlite3.Connection,
    ) -> tuple[fleet_store.OutboxBacklog, list[ActiveCommand]]:
        return fleet_store.backlog(conn), fleet_store.active_commands(conn)

    backlog, commands = await agent.db.read(read)
    return {
        "site": link.site,
        "bus_reachable": link.bus_reachable,
        "outbox_waiting": backlog.waiting,
        "outbox_oldest_at": iso(backlog.oldest_at),
        "last_published_at": iso(backlog.last_published_at),
        "commands": [
            {
                "order_id": c.order_id,
                "seq": c.seq,
                "valid_until": iso(c.valid_until),
                "in_force": c.valid_until > now,
                "applied_at": iso(c.applied_at),
            }
            for c in commands
        ],
    }


async def trade_snapshot(agent: AgentView, now: datetime) -> TradeSnapshot:
    market = agent.dispatcher.market
    today, current = market.locate(now)
    start, end = market.bounds(today)
    cps = [cp.entity_address for cp in agent.config.congestion_points]

    def read(conn: sqlite3.Connection) -> _TradeRows:
        prognoses = [
            p for p in (trades.latest_prognosis(conn, cp, today) for cp in cps) if p is not None
        ]
        orders = trades.accepted_orders(conn, since=today)
        baselines: dict[str, trades.PrognosisRow] = {}
        for order in orders:
            ref = order.baseline_message_id
            if order.period == today and ref and ref not in baselines:
                row = trades.prognosis_by_message(conn, ref)
                if row is not None:
                    baselines[ref] = row
        return _TradeRows(prognoses, trades.open_offers(conn, now), orders, baselines)

    rows = await agent.db.read(read)
    ordered_cps = sorted({o.congestion_point for o in rows.orders if o.period == today})
    energy = {cp: await agent.site.isp_energy(cp, start, end) for cp in ordered_cps}
    reported = {cp: agent.site.reported_until(cp, now) for cp in ordered_cps}
    snapshot = TradeSnapshot(today, current)
    snapshot.prognoses = [_prognosis_view(p, current, market) for p in rows.prognoses]
    snapshot.offers = [_offer_view(o) for o in rows.offers]
    snapshot.orders = [_order_view(o) for o in rows.orders]
    isps = market.isps(today)
    for order in rows.orders:
        if order.period != today:
            continue
        baseline = rows.baselines.get(order.baseline_message_id or "")
        cp = order.congestion_point
        items = []
        for index, change in sorted(order.change_per_isp().items()):
            if not 1 <= index <= len(isps):
                continue
            isp = isps[index - 1]
            base = baseline.power_w[index - 1] if baseline is not None else None
            measured = measured_power_w(isp, energy.get(cp, {}), now, reported[cp])
            complete = isp.end <= reported[cp]
            target = None if base is None else max(0, base + change)
            items.append(
                {
                    "isp": index,
                    "start": iso(isp.start),
                    "baseline_w": base,
                    "ordered_w": change,
                    "target_w": target,
                    # Average power so far: the ISP in progress and finished ones whose
                    # meters have not all reported past their end count as they stand.
                    "measured_w": watts(measured),
                    "complete": complete,
                    # Judged once every meter reported past the ISP's end; reduction orders
                    # are met at or below the target, raise orders at or above.
                    "delivered": None
                    if measured is None or target is None or not complete
                    else (measured <= target if change < 0 else measured >= target),
                }
            )
            if index == current:
                snapshot.ordered_now_w += change
        snapshot.delivery.append(
            {
                "order_reference": order.order_reference,
                "message_id": order.message_id,
                "congestion_point": order.congestion_point,
                "isps": items,
            }
        )
    return snapshot


def measured_power_w(
    isp: Isp, energy: dict[int, float], now: datetime, reported_until: datetime
) -> float | None:
    """Average power of `isp` from the energy counted so far: over the whole ISP once it has
    ended, over the part the meters have reported while it runs (so a running ISP shows no
    dip); None for an ISP that has not begun."""
    if isp.start > now:
        return None
    wh = energy.get(int(isp.start.timestamp()), 0.0)
    if isp.end <= now:
        return wh * 3600.0 / (isp.end - isp.start).total_seconds()
    seconds = (min(now, reported_until) - isp.start).total_seconds()
    return wh * 3600.0 / seconds if seconds > 0 else None


# --- the day chart ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ChartRows:
    prognosis: trades.PrognosisRow | None
    prognoses: list[trades.PrognosisRow]
    orders: list[trades.OrderRow]
    requests: list[trades.RequestRow]
    context: OrderContext
    uptime: list[tuple[datetime, datetime]]


@dataclass(frozen=True)
class DayChart:
    """Per ISP of one market day and congestion point: what we told, measured and sold, and
    the limits the load had to stay under."""

    congestion_point: str
    period: date
    isp_starts: list[datetime]
    prognosis_w: list[float | None]
    baseline_w: list[float | None]
    measured_w: list[float | None]
    ordered_w: list[float | None]
    revision: int | None
    # What the DSO's FlexRequests asked the load to stay under: the prognosis it saw plus the
    # request's MaxPower per ISP (below it where it requests a reduction). Empty: no request.
    dso_limit_w: list[float | None] = field(default_factory=list)
    # The site-wide cap the dispatcher holds: the connection capacity, lowered by orders.
    site_cap_w: list[float | None] = field(default_factory=list)
    time_zone: str = "UTC"  # the market's: ISPs are its calendar

    def as_json(self) -> JsonObject:
        def at(values: list[float | None], k: int) -> float | None:
            return values[k] if values else None

        return {
            "congestion_point": self.congestion_point,
            "period": self.period.isoformat(),
            "revision": self.revision,
            "time_zone": self.time_zone,
            "isps": [
                {
                    "isp": k + 1,
                    "start": iso(start),
                    "prognosis_w": self.prognosis_w[k],
                    "baseline_w": self.baseline_w[k],
                    "measured_w": self.measured_w[k],
                    "ordered_w": self.ordered_w[k],
                    "dso_limit_w": at(self.dso_limit_w, k),
                    "site_cap_w": at(self.site_cap_w, k),
                }
                for k, start in enumerate(self.isp_starts)
            ],
        }


def dso_limit(
    requests: list[trades.RequestRow], prognoses: list[trades.PrognosisRow], n: int
) -> list[float | None]:
    """Per ISP, the most load the DSO's latest request covering it allows: the prognosis the
    DSO had when it asked, plus the request's MaxPower there."""
    limit: list[float | None] = [None] * n
    for request in requests:
        seen = [p for p in prognoses if p.created_at <= request.received_at]
        if not seen or len(seen[-1].power_w) != n:
            continue
        base = seen[-1].power_w
        for start, duration, _requested, _min_power, max_power in request.isps:
            for index in range(max(1, start), min(n, start + duration - 1) + 1):
                limit[index - 1] = float(max(0, base[index - 1] + max_power))
    return limit


def site_cap(
    isps: list[Isp], capacity_w: float, context: OrderContext, market: Market
) -> list[float | None]:
    """Per ISP, the site cap as the dispatcher sets it: the connection capacity, an order's
    target where it reduces, the DSO's room elsewhere after an order (never below a floor)."""
    targets = context.targets(market)
    room = context.room(market)
    out: list[float | None] = []
    for isp in isps:
        cap = capacity_w
        target = targets.get(isp.start)
        floor = 0.0
        if target is not None:
            if target.change_w < 0:
                cap = min(cap, target.target_w)
            else:
                floor = min(capacity_w, target.target_w)
        if isp.start in room:
            cap = min(cap, max(room[isp.start], floor))
        out.append(cap)
    return out


async def day_chart(
    agent: AgentView, congestion_point: str, period: date, now: datetime
) -> DayChart:
    market = agent.dispatcher.market
    isps = market.isps(period)
    start, end = market.bounds(period)

    def read(conn: sqlite3.Connection) -> _ChartRows:
        return _ChartRows(
            trades.latest_prognosis(conn, congestion_point, period),
            [
                p
                for p in trades.prognoses_since(conn, period)
                if p.period == period and p.congestion_point == congestion_point
            ],
            trades.accepted_orders(conn, congestion_point=congestion_point, period=period),
            trades.requests_for(conn, congestion_point, period),
            load_context(conn, period=period),
            store.uptime(conn, start, end),
        )

    rows = await agent.db.read(read)
    prognosis = rows.prognosis
    energy = await agent.site.isp_energy(congestion_point, start, end)
    reported = agent.site.reported_until(congestion_point, now)
    ordered: dict[int, int] = {}
    for order in rows.orders:
        for index, change in order.change_per_isp().items():
            ordered[index] = ordered.get(index, 0) + change
    n = len(isps)

    def measured(isp: Isp) -> float | None:
        """Average power so far (see measured_power_w), from the chargers' own timestamped
        readings, so also across an agent restart; no energy recorded means zero load while
        the agent ran and unknown while it did not (skipped: not drawn), never for what is
        still to come."""
        if isp.start > now:
            return None
        if int(isp.start.timestamp()) not in energy:
            alive = isp.end > now or any(a < isp.end and isp.start < b for a, b in rows.uptime)
            if not alive:
                return None
        return measured_power_w(isp, energy, now, reported)

    def per_isp(values: list[int] | None) -> list[float | None]:
        if values is None or len(values) != n:
            return [None] * n
        return [float(v) for v in values]

    limit = dso_limit(rows.requests, rows.prognoses, n) if rows.requests else []
    return DayChart(
        congestion_point=congestion_point,
        period=period,
        isp_starts=[i.start for i in isps],
        prognosis_w=per_isp(prognosis.power_w if prognosis else None),
        baseline_w=per_isp(prognosis.baseline_w if prognosis else None),
        measured_w=[measured(i) for i in isps],
        ordered_w=[float(ordered[i.index]) if i.index in ordered else None for i in isps],
        revision=prognosis.revision if prognosis else None,
        dso_limit_w=limit,
        site_cap_w=site_cap(
            isps, float(agent.config.site.connection_capacity_w), rows.context, market
        ),
        time_zone=market.time_zone,
    )
