"""Supervised background loops: the one way uftp and the agent run periodic work.

A component's background work is a `step` repeated for as long as the component runs: deliver
the outbox, handle pending messages, send prognoses, dispatch limits. Written by hand, each copy
of that loop has to get the same things right, and copies drift: a failing step retried in a
tight loop (a full disk logging a traceback a millisecond), a `CancelledError` swallowed so
that stop hangs, a wake-up lost because the event was cleared after the step instead of before,
a loop that died of a bug without anyone noticing. `SupervisedLoop` does it once:

- the step runs at start, then after each wait: `interval_s` of the caller's time (the agent
  passes its clock's `sleep`, so the demo's scaled clock speeds every loop up alike), cut
  short by `wake()`; the step may return its own delay for the next wait instead;
- the wake event is cleared *before* each step, so a wake-up during a step gives another step;
- a step that raises is logged with the loop's name (the traceback the first time, one line
  for each repeat while it keeps failing, and a line when it succeeds again) and retried after
  an exponential back-off (`Backoff`), which a wake-up does not cut short: a burst of events
  must not turn a failing step into a tight loop. A success resets the back-off;
- `CancelledError` is never caught; `stop()` cancels and waits until the step has unwound;
- a loop that ends other than by cancellation (something that is not an `Exception`
  escaped the step) is logged as critical and reported to `on_death`, so the application can
  raise a fault.

This module is generic (no UFTP in it) and lives in uftp because the agent may import uftp
but uftp may not import the agent: both use this one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
# What a step returns: seconds until the next step (a wake-up may come sooner), or None for
# the loop's interval.
Step = Callable[[], Awaitable[float | None]]
DeathHook = Callable[[str, BaseException | None], None]


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th failure in a row: first_s * 2^(n-1), at most max_s."""

    first_s: float = 1.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.first_s <= 0 or self.max_s < self.first_s:
            raise ValueError("back-off needs 0 < first_s <= max_s")

    def delay(self, failures: int) -> float:
        exponent = min(max(failures - 1, 0), 32)
        return min(self.first_s * 2.0**exponent, self.max_s)


async def sleep_or_wake(sleep: Sleep, seconds: float | None, wake: asyncio.Event) -> None:
    """Sleep `seconds` (through `sleep`), or less if `wake` is set meanwhile; with None,
    wait for `wake` alone."""
    if seconds is None:
        await wake.wait()
        return
    if wake.is_set():
        return
    sleeper = asyncio.ensure_future(sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()


class SupervisedLoop:
    """Runs `step` until stopped; see the module documentation for the rules.

    `interval_s` None: between steps the loop waits for `wake()` alone (unless the step
    returned a delay). `sleep` defaults to `asyncio.sleep` (real seconds); the agent passes its
    clock's. `logger` is the owning module's, so log lines keep their origin.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        interval_s: float | None,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        on_death: DeathHook | None = None,
        logger: logging.Logger | None = None,
        initial_delay_s: float = 0.0,
    ) -> None:
        if interval_s is not None and interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self.name = name
        self._step = step
        self.interval_s = interval_s
        self._sleep = sleep
        self.backoff = backoff or Backoff(
            first_s=interval_s if interval_s else 1.0, max_s=max(60.0, interval_s or 0.0)
        )
        self._on_death = on_death
        self._log = logger or log
        self._initial_delay_s = initial_delay_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.died = False
        """True once the loop ended other than by `stop` (its work has stopped for good)."""
        # Failures in a row (0 after a success) and in total, for tests and status.
        self.failures = 0
        self.failed_total = 0
        self.steps = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"loop {self.name} is already running")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)
        self._task.add_done_callback(self._ended)

    def wake(self) -> None:
        """Run the step soon (now, unless a step is running or the loop is backing off)."""
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the loop and wait until its step has unwound."""
        task, self._task = self._task, None
        if task is None or task.done():
            return  # never started, or died (and was reported then)
        self._stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        if self._initial_delay_s > 0:
            await sleep_or_wake(self._sleep, self._initial_delay_s, self._wake)
        while True:
            self._wake.clear()
            try:
                delay = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.failed_total += 1
                backoff = self.backoff.delay(self.failures)
                if self.failures == 1:
                    self._log.exception(
                        "%s failed; retrying in %.3g s",
                        self.name,
                        backoff,
                        extra={"loop": self.name},
                    )
                else:
                    self._log.error(
                        "%s failed again (%d in a row): %r; retrying in %.3g s",
                        self.name,
                        self.failures,
                        exc,
                        backoff,
                        extra={"loop": self.name},
                    )
                await self._sleep(backoff)
                continue
            self.steps += 1
            if self.failures:
                self._log.warning(
                    "%s works again after %d failures",
                    self.name,
                    self.failures,
                    extra={"loop": self.name},
                )
                self.failures = 0
            await sleep_or_wake(
                self._sleep, self.interval_s if delay is None else delay, self._wake
            )

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Cancelled: stopped, or the event loop is shutting down; neither is a death.
        if self._stopping or task.cancelled():
            return
        self._died(task.exception())

    def _died(self, error: BaseException | None) -> None:
        self.died = True
        self._log.critical(
            "%s stopped unexpectedly: %r",
            self.name,
            error,
            exc_info=error,
            extra={"loop": self.name},
        )
        if self._on_death is not None:
            try:
                self._on_death(self.name, error)
            except Exception:
                self._log.exception("the death hook of %s failed", self.name)
