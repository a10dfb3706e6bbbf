"""The one loop timer behind an OCPP-J endpoint's time-outs.

`ocppj.Endpoint` (and `relay.Relay` over two of them) keeps time as data: `deadline` is when the
pending CALL times out. The shells that move frames follow it with a single timer, re-armed only
when the deadline comes earlier than it is armed for, so the many frames that leave it alone or
push it later (a Heartbeat, MeterValues) cost no timer churn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """Calls `on_deadline(now)` once the followed deadline (loop time, s) has passed.

    A deadline that moves later or goes away keeps the timer armed where it is; when it goes
    off early it is armed again for the deadline then followed. A relayed charger's CALLs each
    move the deadline later (the next CALL's time-out), so a busy charger costs one timer per
    time-out period, not two timer operations per message.
    """

    def __init__(self, on_deadline: Callable[[float], None]) -> None:
        self._on_deadline = on_deadline
        self._handle: asyncio.TimerHandle | None = None
        self._armed: float | None = None  # when the timer goes off
        self._at: float | None = None  # the deadline followed

    def follow(self, deadline: float | None) -> None:
        """Fire at `deadline`, or never for None."""
        self._at = deadline
        if deadline is None or (self._armed is not None and self._armed <= deadline):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._armed = when
        self._handle = asyncio.get_running_loop().call_at(when, self._fired)

    def _fired(self) -> None:
        armed, deadline = self._armed, self._at
        self._handle = self._armed = None
        if deadline is None:
            return
        if armed is not None and armed < deadline:
            self._arm(deadline)  # the deadline moved later meanwhile
            return
        # The loop may run a timer a clock tick early; it fired for this deadline, so `now` is
        # never before it (else the endpoint would find nothing timed out and nobody re-arms).
        now = max(asyncio.get_running_loop().time(), deadline)
        self._at = None
        self._on_deadline(now)
