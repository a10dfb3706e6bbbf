"""Time as the agent sees it: UTC-aware, and scalable for the demo.

Everything in `agent` asks a `Clock` for the time and sleeps through it, never `datetime.now()`
or `asyncio.sleep()` directly. In production that is the system clock. `flexbridge demo` runs a
day of trading in under two minutes with a `ScaledClock`: simulated time starts at a chosen
instant and runs `speed` times faster than the wall clock, and every component (site simulator,
DSO, dispatcher, the OCPP bridge's profile timestamps) sees the same simulated time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, UTC-aware."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time: `start` at creation, advancing `speed` simulated seconds per real second."""

    def __init__(self, start: datetime, speed: float) -> None:
        if start.tzinfo is None:
            raise ValueError("ScaledClock needs a timezone-aware start")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._real_start = time.monotonic()

    def now(self) -> datetime:
        elapsed = (time.monotonic() - self._real_start) * self.speed
        return self.start + timedelta(seconds=elapsed)

    def real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, instant: datetime) -> None:
        await self.sleep((instant - self.now()).total_seconds())

    def advance(self, seconds: float) -> None:
        """Jump ahead (the demo skips a quiet night); sleepers wake at their real deadline
        and find later simulated time, as after a suspended laptop."""
        if seconds < 0:
            raise ValueError("simulated time does not run backwards")
        self.start += timedelta(seconds=seconds)


async def sleep_until(clock: Clock, instant: datetime) -> None:
    await clock.sleep((instant - clock.now()).total_seconds())


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Event) -> None:
    """Sleep `seconds` of the clock's time, or less if `wake` is set meanwhile.

    The periodic loops (dispatch, prognoses, offer housekeeping) run on the clock but react at
    once to an event (an order, a new session) instead of waiting out their period.
    """
    sleeper = asyncio.create_task(clock.sleep(seconds))
    waker = asyncio.create_task(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
