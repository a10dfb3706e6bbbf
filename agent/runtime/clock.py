"""Time as the agent sees it: UTC-aware, and scalable for the demo.

Everything in `agent` asks a `Clock` for the time and sleeps through it, never `datetime.now()`
or `asyncio.sleep()` directly. In production that is the system clock. `flexbridge demo` runs a
day of trading in under two minutes with a `ScaledClock`: simulated time starts at a chosen
instant and runs `speed` times faster than the wall clock, and every component (site simulator,
DSO, dispatcher, the OCPP bridge's profile timestamps) sees the same simulated time. Tests
that run several processes on one timeline give each an `OffsetClock` through the environment
(`clock_from_environment`, beside the failpoints as the other test hook production reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from uftp.loops import SupervisedLoop

log = logging.getLogger(__name__)


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


# --- one timeline for several processes (tests) ---------------------------------------------------

OFFSET_FILE_ENV = "FLEXBRIDGE_CLOCK_OFFSET_FILE"


class ClockFileError(ValueError):
    """The offset file named by FLEXBRIDGE_CLOCK_OFFSET_FILE is missing or does not hold a
    number of seconds."""


def _read_offset(path: Path) -> float:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClockFileError(f"clock offset file {path}: {exc}") from None
    try:
        seconds = float(text)
    except ValueError:
        raise ClockFileError(
            f"clock offset file {path} holds {text[:40]!r}, not a number of seconds"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ClockFileError(
            f"clock offset file {path} holds {text[:40]!r}: the offset is a finite number of "
            "seconds ahead, never behind"
        )
    return seconds


class OffsetClock:
    """The system clock plus an offset in seconds that a test moves ahead, read from a file.

    The fleet scenario runs the aggregator, the site hosts and the DSO as separate processes;
    a market day reaches its delivery and settlement only when every one of them sees
    tomorrow evening pass, at once. In-process, `ScaledClock.advance` does that; across
    processes the one thing they share is the file named by FLEXBRIDGE_CLOCK_OFFSET_FILE,
    which the test rewrites atomically (`write_offset`: temporary file + rename). `now()`
    stats it (one system call) and reads it again only when it was replaced, so every
    process sees a skip from its next reading on.

    The offset never decreases: a smaller value in the file is ignored (time does not run
    backwards). A file that is missing or holds anything but a finite, non-negative number
    of seconds raises `ClockFileError` naming it, at construction and at any later reading:
    a test with a broken timeline must fail loudly, not run on the wall clock.

    Sleepers sleep real seconds, as `ScaledClock.advance` documents for a skip: a sleeper
    wakes at its real deadline and finds later time, as after a suspended laptop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self.offset_s = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ClockFileError(f"clock offset file {self.path}: {exc}") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        offset = _read_offset(self.path)
        self._seen = key
        if offset < self.offset_s:
            log.warning(
                "clock offset file went back from %.0f s to %.0f s; kept %.0f s",
                self.offset_s,
                offset,
                self.offset_s,
            )
            return
        self.offset_s = offset

    def now(self) -> datetime:
        self._reload()
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def write_offset(path: Path, seconds: float) -> None:
    """Set the shared offset (a test's side of `OffsetClock`): atomically, never backwards."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("the clock offset is a finite number of seconds ahead")
    if path.exists() and _read_offset(path) > seconds:
        raise ValueError("the shared clock does not run backwards")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{seconds!r}\n", encoding="ascii")
    os.replace(tmp, path)


def clock_from_environment(environ: Mapping[str, str] | None = None) -> SystemClock | OffsetClock:
    """The process's clock: the system clock, unless FLEXBRIDGE_CLOCK_OFFSET_FILE names a
    shared offset file (tests only; unset in production, where this is one lookup at start)."""
    named = (os.environ if environ is None else environ).get(OFFSET_FILE_ENV)
    if not named:
        return SystemClock()
    clock = OffsetClock(Path(named))
    log.warning("the clock runs %.0f s ahead of the system clock, from %s", clock.offset_s, named)
    return clock


# --- trusting the wall clock ----------------------------------------------------------------------

HIGH_WATER_KEY = "clock_high_water"


@dataclass
class ClockCheck:
    """Whether the wall clock can be trusted, from successive readings of it and of a
    monotonic clock. Pure: no I/O, so it is tested with any sequence of readings.

    Two signs of a wrong clock:

    - it reads earlier than `high_water`, the latest time it read while trusted (persisted by
      `ClockGuard`): a gateway without a hardware clock booted with an old time. Untrusted
      until it reads at least that late again (NTP set it right);
    - between two readings it moved more than `max_step_s` away from what the monotonic
      clock says passed (a step, either way). Untrusted for `settle_s` of monotonic time
      after the last step; then the new time is taken as right. Without a second time source
      this is the best the agent can tell: a step to a wrong time that then holds steady is
      accepted after `settle_s` (hence the unit waits for time synchronisation at boot).

    `rate` is how many clock seconds pass per monotonic second (1; the demo's ScaledClock
    runs faster).
    """

    max_step_s: float
    settle_s: float
    high_water: datetime | None = None
    rate: float = 1.0
    # NTP slews and may step back by a fraction of a second: that is no reason to stop.
    tolerance_s: float = 5.0
    _last: tuple[datetime, float] | None = None
    _stepped_at: float | None = None
    _step_s: float = 0.0

    def observe(self, wall: datetime, mono: float) -> str | None:
        """Take a reading; the reason not to trust the clock now, or None."""
        if self._last is not None:
            last_wall, last_mono = self._last
            step = (wall - last_wall).total_seconds() - (mono - last_mono) * self.rate
            if abs(step) > self.max_step_s:
                self._stepped_at, self._step_s = mono, step
        self._last = (wall, mono)
        if self.high_water is not None and wall < self.high_water - timedelta(
            seconds=self.tolerance_s
        ):
            return (
                f"the clock reads {wall.isoformat(timespec='seconds')}, earlier than "
                f"{self.high_water.isoformat(timespec='seconds')} it read before"
            )
        if self._stepped_at is not None and mono - self._stepped_at < self.settle_s:
            return f"the clock stepped by {self._step_s:+.0f} s"
        if self.high_water is None or wall > self.high_water:
            self.high_water = wall
        return None


class ClockGuard:
    """Service component: watches the wall clock and holds time-bound work while it is wrong.

    While the clock is not trusted (see `ClockCheck`), the agent sends no prognoses and no
    offers, handles no UFTP message (they wait in the inbox, and new ones are answered 503
    with Retry-After), runs no dispatch round and takes its dynamic profiles back off the
    chargers, which then run on their safe profile (it has no validTo, so a wrong clock
    cannot expire it). The clock fault is raised on every surface (agent.runtime.faults); when the
    clock is sane again, the fault clears and the work resumes.

    The high-water mark is persisted every `record_s` (once a minute by default: one small
    write, nothing for an SD card) and at stop, so the check also works across a reboot.
    """

    name = "clock-guard"

    def __init__(
        self,
        clock: Clock,
        check: ClockCheck,
        *,
        load: Callable[[], Awaitable[datetime | None]],
        save: Callable[[datetime], Awaitable[object]],
        on_change: Callable[[str | None], object] = lambda _reason: None,
        interval_s: float = 2.0,
        record_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.check = check
        self._load = load
        self._save = save
        self._on_change = on_change
        self.interval_s = interval_s
        self.record_s = record_s
        self._monotonic = monotonic
        self.reason: str | None = None
        self._saved: datetime | None = None
        self._saved_at = -math.inf
        self._loop: SupervisedLoop | None = None

    def hold(self) -> str | None:
        """Why time-bound work must wait now (None: go ahead)."""
        return self.reason

    async def start(self) -> None:
        stored = await self._load()
        if stored is not None:
            self.check.high_water = stored
            self._saved = stored
        await self.step()
        # Real seconds: the clock being watched is not the one to sleep on.
        self._loop = SupervisedLoop(
            "clock-guard",
            self.step,
            interval_s=self.interval_s,
            initial_delay_s=self.interval_s,
            logger=log,
        )
        self._loop.start()

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
            self._loop = None
        with contextlib.suppress(Exception):
            await self._record(force=True)

    async def step(self) -> None:
        """One reading; tells `on_change` when trust is lost, changes reason, or returns."""
        reason = self.check.observe(self.clock.now(), self._monotonic())
        if reason != self.reason:
            was, self.reason = self.reason, reason
            if reason is not None and was is None:
                log.error("clock not trusted; holding trading and dynamic limits: %s", reason)
            elif reason is None:
                log.warning("clock trusted again; resuming")
            self._on_change(reason)
        if reason is None:
            await self._record()

    async def _record(self, *, force: bool = False) -> None:
        mark = self.check.high_water
        if self.reason is not None or mark is None:
            return
        if self._saved is not None and mark <= self._saved:
            return
        now = self._monotonic()
        if not force and now - self._saved_at < self.record_s:
            return
        await self._save(mark)
        self._saved, self._saved_at = mark, now
