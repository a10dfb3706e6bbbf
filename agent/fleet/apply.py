"""How a site applies the centre's commands, without I/O.

A command arrives at least once, in any order, possibly long after it was sent. Whether it takes
effect depends only on the command, the command applied so far for the same order and the
time: never at or after its `valid_until`, never when a command with the same or a newer `seq`
for that order is already in force (a redelivery, or an older share arriving late). So the
order's state after any sequence of deliveries is the newest command that arrived in time, and
the outcome of each delivery is recorded once per (order, seq).

Which caps bind dispatch is decided here too: per ISP the strictest cap of the commands still
valid; a command past its `valid_until` binds nothing, and no cap is ever "unlimited" (an ISP
without a cap is simply absent).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from agent.fleet.protocol import Command

Outcome = Literal["applied", "superseded", "expired"]


@dataclass(frozen=True)
class ActiveCommand:
    """The command in force for one order: its caps per ISP from `start` (None: no cap)."""

    order_id: str
    seq: int
    valid_until: datetime
    congestion_point: str
    start: datetime
    isp_s: int
    caps_w: tuple[float | None, ...]
    applied_at: datetime


def decide(command: Command, current: ActiveCommand | None, now: datetime) -> Outcome:
    """What to do with `command` for an order whose command in force is `current`: too late
    is `expired` even when it would be newer, so a stale share can never come back into
    force; not newer is `superseded` (a duplicate included)."""
    if now >= command.valid_until:
        return "expired"
    if current is not None and command.seq <= current.seq:
        return "superseded"
    return "applied"


def ack_id(site: str, order_id: str, seq: int) -> str:
    """The id of a site's Ack for (order, seq): the same for every delivery of that command,
    so the centre's unique key absorbs an Ack sent again."""
    digest = hashlib.sha256(f"{order_id}\0{seq}".encode()).hexdigest()[:32]
    return f"{site}.ack.{seq}.{digest}"


def binding_caps(
    commands: Iterable[ActiveCommand], now: datetime, *, since: datetime | None = None
) -> dict[datetime, float]:
    """Per ISP start, the strictest cap of the commands still valid at `now` (ISPs that end
    before `since` left out). ISPs no valid command caps are absent: they are bounded by the
    site's own limits only."""
    out: dict[datetime, float] = {}
    for command in commands:
        if now >= command.valid_until:
            continue
        step = timedelta(seconds=command.isp_s)
        for k, cap in enumerate(command.caps_w):
            if cap is None:
                continue
            start = command.start + k * step
            if since is not None and start + step <= since:
                continue
            out[start] = min(cap, out.get(start, cap))
    return out
