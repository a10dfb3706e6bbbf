"""What accepted FlexOrders ask of each ISP (pure): the cap or floor on the congestion point.

An order's ISP powers are changes relative to the D-prognosis its offer referred to (the DSO's
baseline), so each ordered ISP has a *target*: that prognosis' power plus the change. A
reduction caps the load at its target, a raise asks for at least its target. A later offer's
baseline already includes earlier orders, so where several orders cover an ISP the strictest
target binds.

The request behind an order also bounds the rest of the day: its Available ISPs say how much
more load the DSO can take there (MaxPower above the baseline). The offer was sized so the
moved energy fits that room; after the order the dispatcher keeps the load within it, so the
EVs catching up do not make a new peak where the DSO has none to spare.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.storage import trades
from agent.trading.market import Market

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderedIsp:
    start: datetime
    index: int
    baseline_w: float
    change_w: float

    @property
    def target_w(self) -> float:
        return max(0.0, self.baseline_w + self.change_w)


def _binds_more(candidate: OrderedIsp, current: OrderedIsp) -> bool:
    if candidate.change_w < 0:
        return current.change_w >= 0 or candidate.target_w < current.target_w
    return current.change_w > 0 and candidate.target_w > current.target_w


def ordered_isps(
    orders: Sequence[trades.OrderRow],
    baselines: Mapping[str, trades.PrognosisRow],
    market: Market,
) -> dict[datetime, OrderedIsp]:
    """Per ISP start: the binding target of the orders (lowest cap, else highest floor)."""
    out: dict[datetime, OrderedIsp] = {}
    for order in orders:
        baseline = baselines.get(order.baseline_message_id or "")
        starts = {isp.index: isp.start for isp in market.isps(order.period)}
        for index, change in order.change_per_isp().items():
            start = starts.get(index)
            if start is None:
                continue
            if baseline is None or index > len(baseline.power_w):
                log.error("order %s has no baseline prognosis; cannot cap", order.order_reference)
                continue
            candidate = OrderedIsp(start, index, float(baseline.power_w[index - 1]), float(change))
            current = out.get(start)
            if current is None or _binds_more(candidate, current):
                out[start] = candidate
    return out


def available_room(
    orders: Sequence[trades.OrderRow],
    requests: Mapping[str, trades.RequestRow],
    offers: Mapping[str, trades.OfferRow],
    baselines: Mapping[str, trades.PrognosisRow],
    market: Market,
) -> dict[datetime, float]:
    """Per ISP start: the most load the DSO's Available ISPs allow after an order."""
    room: dict[datetime, float] = {}
    for order in orders:
        offer = offers.get(order.offer_message_id or "")
        request = requests.get(offer.request_message_id or "") if offer else None
        baseline = baselines.get(order.baseline_message_id or "")
        if request is None or baseline is None:
            continue
        starts = {isp.index: isp.start for isp in market.isps(order.period)}
        ordered = order.change_per_isp()
        for start, duration, requested, _, max_power in request.isps:
            if requested:
                continue
            for index in range(start, start + duration):
                if index in ordered or index not in starts or index > len(baseline.power_w):
                    continue
                limit = baseline.power_w[index - 1] + max(0, max_power)
                moment = starts[index]
                room[moment] = min(room.get(moment, math.inf), float(limit))
    return room


def prognosis_with_orders(
    baseline_w: Sequence[int], targets: Mapping[int, OrderedIsp]
) -> list[int]:
    """The prognosis of a day with its orders: a cap where one reduces, a floor where one
    raises; the load cannot be above an uncontrolled forecast, nor below one, because of it."""
    out: list[int] = []
    for index, base in enumerate(baseline_w, start=1):
        target = targets.get(index)
        if target is None:
            out.append(max(0, base))
        elif target.change_w < 0:
            out.append(max(0, min(base, round(target.target_w))))
        else:
            out.append(max(base, round(target.target_w)))
    return out


@dataclass(frozen=True)
class OrderContext:
    """Accepted orders with what they refer to: baselines, offers and the requests behind."""

    orders: list[trades.OrderRow]
    baselines: dict[str, trades.PrognosisRow]
    offers: dict[str, trades.OfferRow]
    requests: dict[str, trades.RequestRow]

    def targets(self, market: Market) -> dict[datetime, OrderedIsp]:
        return ordered_isps(self.orders, self.baselines, market)

    def room(self, market: Market) -> dict[datetime, float]:
        return available_room(self.orders, self.requests, self.offers, self.baselines, market)


def load_context(conn: sqlite3.Connection, **where: object) -> OrderContext:
    """The accepted orders matching `where` (see `trades.accepted_orders`) and their context."""
    orders = trades.accepted_orders(conn, **where)  # type: ignore[arg-type]
    baselines: dict[str, trades.PrognosisRow] = {}
    offers: dict[str, trades.OfferRow] = {}
    requests: dict[str, trades.RequestRow] = {}
    for order in orders:
        if order.baseline_message_id and order.baseline_message_id not in baselines:
            row = trades.prognosis_by_message(conn, order.baseline_message_id)
            if row is not None:
                baselines[row.message_id] = row
        if order.offer_message_id and order.offer_message_id not in offers:
            offer = trades.find_offer(conn, order.offer_message_id)
            if offer is not None:
                offers[offer.message_id] = offer
                if offer.request_message_id:
                    request = trades.find_request(conn, offer.request_message_id)
                    if request is not None:
                        requests[request.message_id] = request
    return OrderContext(orders, baselines, offers, requests)
