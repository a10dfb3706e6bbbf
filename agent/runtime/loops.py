"""The agent's supervised loops: `uftp.loops.SupervisedLoop` on the agent's clock.

The implementation lives in uftp (the agent may import uftp, not the other way round), so the
outbox, the inbox handler and the agent's own loops share one tested behaviour. Here the
agent's loops get their waits from its `Clock` (the demo's scaled clock speeds them all up)
and report a loop that died to the `LOOP` fault (agent.runtime.faults).
"""

from __future__ import annotations

import logging

from agent.runtime.clock import Clock
from uftp.loops import Backoff, DeathHook, Step, SupervisedLoop

__all__ = ["Backoff", "DeathHook", "SupervisedLoop", "clock_loop"]


def clock_loop(
    name: str,
    step: Step,
    clock: Clock,
    *,
    interval_s: float | None,
    backoff: Backoff | None = None,
    on_death: DeathHook | None = None,
    logger: logging.Logger | None = None,
) -> SupervisedLoop:
    """A loop whose waits are `clock` seconds."""
    return SupervisedLoop(
        name,
        step,
        interval_s=interval_s,
        sleep=clock.sleep,
        backoff=backoff,
        on_death=on_death,
        logger=logger,
    )
