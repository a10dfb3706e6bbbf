"""Failpoints: named places where a test can make the agent die as `kill -9` would.

Crash safety is a claim about every moment of the order flow; tests prove it at the moments
that matter (an order stored but not handled, handled but not answered, half dispatched) by
starting the real agent with ``FLEXBRIDGE_FAILPOINT=<name>``. At that name the process sends
itself SIGKILL: no `finally`, no flush, no goodbye, exactly like a power cut of the process.
Unset (always, in production) a failpoint is one dictionary lookup.

The other hook of this kind is `FLEXBRIDGE_CLOCK_OFFSET_FILE` (`agent.runtime.clock.OffsetClock`):
the fleet scenarios run the aggregator and the sites as separate processes on one timeline and
skip it ahead to reach a delivery and a settlement. Unset, the process runs on the system clock.
"""

from __future__ import annotations

import os
import signal

ENV = "FLEXBRIDGE_FAILPOINT"

TRADER_BEFORE_ORDER = "trader.before-order"
TRADER_AFTER_ORDER_COMMIT = "trader.after-order-commit"
DISPATCH_MID_PUSH = "dispatch.mid-push"


def hit(name: str) -> None:
    """Die here if the environment names this failpoint."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
