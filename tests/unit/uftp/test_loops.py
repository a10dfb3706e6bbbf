"""uftp.loops.SupervisedLoop: the one background-loop behaviour of uftp and the agent.

Time is a `FakeTime`: a sleep returns only when the test advances time past its deadline, so
the tests see every wait the loop asks for and never sleep for real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uftp.loops import Backoff, SupervisedLoop, sleep_or_wake


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.asked: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, future)
        self._sleepers.append(entry)
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now and not future.done():
                future.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until all wait again."""
    for _ in range(50):
        await asyncio.sleep(0)


class Steps:
    """A step that does what the test queues: succeed (optionally with a delay) or raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.plan: list[BaseException | float | None] = []
        self.during: Callable[[], None] | None = None

    async def __call__(self) -> float | None:
        self.calls += 1
        if self.during is not None:
            self.during()
        outcome = self.plan.pop(0) if self.plan else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_steps_at_start_then_every_interval() -> None:
    time, step = FakeTime(), Steps()
    loop = SupervisedLoop("every", step, interval_s=10.0, sleep=time.sleep)
    loop.start()
    await settle()
    assert step.calls == 1
    await time.advance(9.9)
    assert step.calls == 1
    await time.advance(0.1)
    assert step.calls == 2
    assert time.asked == [10.0, 10.0]
    await loop.stop()
    assert not loop.running


async def test_wake_cuts_the_wait_short_and_a_wake_during_a_step_is_not_lost() -> None:
    time, step = FakeTime(), Steps()
    loop = SupervisedLoop("woken", step, interval_s=60.0, sleep=time.sleep)
    loop.start()
    await settle()
    loop.wake()
    await settle()
    assert step.calls == 2
    # Woken while the step runs (an order arriving mid-round): one more step at once.
    step.during = lambda: loop.wake() if step.calls == 3 else None
    loop.wake()
    await settle()
    assert step.calls == 4
    assert time.now == 0.0
    await loop.stop()


async def test_no_interval_waits_for_wake_or_the_delay_the_step_returns() -> None:
    time, step = FakeTime(), Steps()
    step.plan = [None, 5.0]
    loop = SupervisedLoop("on-demand", step, interval_s=None, sleep=time.sleep)
    loop.start()
    await settle()
    await time.advance(3600.0)
    assert step.calls == 1
    assert time.asked == []
    loop.wake()
    await settle()
    assert step.calls == 2
    assert time.asked == [5.0]
    await time.advance(5.0)
    assert step.calls == 3
    await loop.stop()


async def test_failures_back_off_exponentially_capped_and_reset_after_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time, step = FakeTime(), Steps()
    step.plan = [RuntimeError("disk full")] * 5 + [None, RuntimeError("again")]
    loop = SupervisedLoop(
        "flaky", step, interval_s=10.0, sleep=time.sleep, backoff=Backoff(1.0, 4.0)
    )
    caplog.set_level(logging.DEBUG, logger="uftp.loops")
    loop.start()
    await settle()
    for delay in (1.0, 2.0, 4.0, 4.0, 4.0):
        assert time.sleeping == 1
        await time.advance(delay)
    # Five failures waited 1, 2, 4, 4, 4 s; the sixth step succeeded and waits its interval.
    assert time.asked == [1.0, 2.0, 4.0, 4.0, 4.0, 10.0]
    assert step.calls == 6
    assert loop.failures == 0
    assert loop.failed_total == 5
    await time.advance(10.0)
    assert time.asked[-1] == 1.0  # the back-off starts over after a success
    await loop.stop()

    records = [r for r in caplog.records if r.name == "uftp.loops"]
    failed = [r for r in records if r.levelno == logging.ERROR]
    assert len(failed) == 6  # one line per failure, no more
    assert all("flaky" in r.getMessage() for r in failed)
    assert all(getattr(r, "loop", None) == "flaky" for r in failed)
    # The traceback once per run of failures, not for every repeat.
    assert [r.exc_info is not None for r in failed] == [True, False, False, False, False, True]
    assert any("works again after 5 failures" in r.getMessage() for r in records)


async def test_a_wake_does_not_cut_a_back_off_short() -> None:
    time, step = FakeTime(), Steps()
    step.plan = [RuntimeError("boom"), None]
    loop = SupervisedLoop(
        "patient", step, interval_s=10.0, sleep=time.sleep, backoff=Backoff(3.0, 30.0)
    )
    loop.start()
    await settle()
    for _ in range(5):
        loop.wake()
        await settle()
    assert step.calls == 1
    await time.advance(3.0)
    assert step.calls == 2
    await loop.stop()


async def test_stop_cancels_a_running_step_and_waits_for_it_to_unwind() -> None:
    unwound = asyncio.Event()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    deaths: list[str] = []
    loop = SupervisedLoop(
        "busy", forever, interval_s=1.0, on_death=lambda name, _e: deaths.append(name)
    )
    loop.start()
    await started.wait()
    await loop.stop()
    assert unwound.is_set()
    assert not loop.running
    assert deaths == []  # stopping is not dying
    await loop.stop()  # a second stop is harmless


async def test_cancelled_error_from_the_step_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time, step = FakeTime(), Steps()
    step.plan = [asyncio.CancelledError()]
    loop = SupervisedLoop("cancelled", step, interval_s=1.0, sleep=time.sleep)
    loop.start()
    await settle()
    assert not loop.running
    assert step.calls == 1
    assert time.asked == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class Fatal(BaseException):
    """Not an Exception: escapes the retry, as a bug in the loop machinery would."""


async def test_a_loop_that_dies_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    time, step = FakeTime(), Steps()
    step.plan = [Fatal("gone")]
    deaths: list[tuple[str, BaseException | None]] = []
    loop = SupervisedLoop(
        "mortal",
        step,
        interval_s=1.0,
        sleep=time.sleep,
        on_death=lambda name, error: deaths.append((name, error)),
    )
    loop.start()
    await settle()
    assert not loop.running
    assert [(name, type(error)) for name, error in deaths] == [("mortal", Fatal)]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "mortal stopped unexpectedly" in critical[0].getMessage()
    await loop.stop()  # the death was reported; stopping does not raise it again


async def test_initial_delay_and_restart() -> None:
    time, step = FakeTime(), Steps()
    loop = SupervisedLoop("late", step, interval_s=5.0, sleep=time.sleep, initial_delay_s=5.0)
    loop.start()
    with pytest.raises(RuntimeError, match="already running"):
        loop.start()
    await settle()
    assert step.calls == 0
    await time.advance(5.0)
    assert step.calls == 1
    await loop.stop()
    loop.start()
    await settle()
    assert step.calls == 1  # waits its initial delay again
    await loop.stop()


async def test_sleep_or_wake_returns_at_once_when_already_woken() -> None:
    time, wake = FakeTime(), asyncio.Event()
    wake.set()
    await sleep_or_wake(time.sleep, 10.0, wake)
    assert time.asked == []


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


@given(
    first=st.floats(min_value=0.001, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    failures=st.integers(min_value=1, max_value=10_000),
)
def test_backoff_grows_from_first_to_the_cap(first: float, factor: float, failures: int) -> None:
    backoff = Backoff(first, first * factor)
    assert backoff.delay(1) == first
    assert first <= backoff.delay(failures) <= backoff.max_s
    assert backoff.delay(failures) <= backoff.delay(failures + 1)
    assert backoff.delay(failures + 1) <= 2 * backoff.delay(failures)
