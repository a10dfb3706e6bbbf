"""Conditions an operator must see at once: storage that cannot be written, a clock not to
trust, a background loop that died.

A fault is raised by the part that notices it (the database on a failed write, the clock guard
on a step backwards) and cleared by the same part when the condition is gone; the agent keeps
running meanwhile, in the degraded way each fault documents (docs/operations.md). `Faults`
only keeps the state and tells every surface about it: the log (one line at each change, not
one per failed write), /metrics, the site state on MQTT, the status page and /api/status, and
/health. It is deliberately not a systemd watchdog probe: a restart cures neither a full disk
nor a wrong clock, and would only take the chargers' dynamic limits away meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

STORAGE = "storage"
CLOCK = "clock"
# A background loop (dispatch, trading, prognoses, UFTP delivery...) ended unexpectedly: the
# work it did stops until a restart (agent.runtime.loops).
LOOP = "loop"
KNOWN = (STORAGE, CLOCK, LOOP)


@dataclass(frozen=True)
class Fault:
    name: str
    reason: str
    since: datetime


class Faults:
    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self.active: dict[str, Fault] = {}
        # How often each fault was raised since start (a transition, not every failed write).
        self.raised: dict[str, int] = dict.fromkeys(KNOWN, 0)
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` after every change (raised, cleared, reason changed)."""
        self._listeners.append(listener)

    def raise_fault(self, name: str, reason: str) -> None:
        current = self.active.get(name)
        if current is not None and current.reason == reason:
            return
        if current is None:
            self.raised[name] = self.raised.get(name, 0) + 1
            log.error("fault raised", extra={"fault": name, "reason": reason})
        self.active[name] = Fault(name, reason, current.since if current else self._now())
        self._changed()

    def clear(self, name: str) -> None:
        fault = self.active.pop(name, None)
        if fault is None:
            return
        log.warning("fault cleared", extra={"fault": name, "was": fault.reason})
        self._changed()

    def is_active(self, name: str) -> bool:
        return name in self.active

    def problems(self) -> list[str]:
        """One line per active fault, for /health."""
        return [f"{f.name}: {f.reason}" for f in self.active.values()]

    def view(self) -> dict[str, Any]:
        """{name: {reason, since} or None} for every known fault (status page, API, MQTT)."""
        out: dict[str, Any] = {}
        for name in KNOWN:
            fault = self.active.get(name)
            out[name] = (
                None
                if fault is None
                else {"reason": fault.reason, "since": fault.since.isoformat()}
            )
        return out

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("a fault listener failed")
