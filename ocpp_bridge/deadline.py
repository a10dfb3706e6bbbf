"""The one loop timer behind an OCPP-J endpoint's time-outs.

`ocppj.Endpoint` (and `relay.Relay` over two of them) keeps time as data: `deadline` is when the
pending CALL times out. The shells that move frames follow it with a single timer, re-armed only
when the deadline moves, so the many frames that leave it alone (a Heartbeat, MeterValues)
cost no timer churn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """Calls `on_deadline(now)` once the followed deadline (loop time, s) has passed."""

    def __init__(self, on_deadline: Callable[[float], None]) -> None:
        self._on_deadline = on_deadline
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def follow(self, deadline: float | None) -> None:
        """Fire at `deadline`, or never for None; nothing changes if it did not move."""
        if deadline == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._at = None, deadline
        if deadline is not None:
            self._handle = asyncio.get_running_loop().call_at(deadline, self._fired)

    def _fired(self) -> None:
        # The loop may run a timer a clock tick early; it fired for this deadline, so `now` is
        # never before it (else the endpoint would find nothing timed out and nobody re-arms).
        now = max(asyncio.get_running_loop().time(), self._at or 0.0)
        self._handle, self._at = None, None
        self._on_deadline(now)
