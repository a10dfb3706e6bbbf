"""systemd integration: READY/STATUS/STOPPING notifications and a health-gated watchdog.

The unit runs with ``Type=notify`` and ``WatchdogSec=``. We speak the sd_notify datagram protocol
directly (a few lines over an AF_UNIX socket; no extra dependency). The watchdog ping is sent from
a task on the event loop and only after every health check passed, so systemd restarts the agent
when the loop hangs (no pings at all) or when a vital part is broken (OCPP listener gone,
database not answering) even though the process is still alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent.runtime.service import cancel_and_wait

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[str | None]]
"""Returns None when healthy, else a short reason ("database not answering")."""


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; a no-op when not run by systemd."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        if path:
            # An abstract-namespace socket is given with a leading '@'.
            self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines, e.g. ``send(READY="1", STATUS="running")``."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                # Non-blocking: sends happen on the event loop, and a notify socket nobody
                # drains (its queue holds a handful of datagrams) must cost a message, never
                # the loop. A full queue is an OSError (EAGAIN) like any other failed send.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's WatchdogSec, if the watchdog is meant for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


@dataclass(frozen=True)
class NamedProbe:
    name: str
    probe: HealthProbe


class SystemdWatchdog:
    """Service component: READY once everything before it started, then gated pings."""

    name = "systemd"

    def __init__(
        self,
        probes: Sequence[NamedProbe] = (),
        notifier: Notifier | None = None,
        interval_s: float | None = None,
        probe_timeout_s: float = 5.0,
    ) -> None:
        self.notifier = notifier or Notifier()
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self.probes = list(probes)
        self.probe_timeout_s = probe_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.last_problems: list[str] = []

    async def start(self) -> None:
        self.notifier.send(READY="1", STATUS="running", MAINPID=str(os.getpid()))
        if self.interval_s is not None:
            self._task = asyncio.create_task(self._ping_loop(), name="systemd-watchdog")

    async def stop(self) -> None:
        self.notifier.send(STOPPING="1", STATUS="stopping")
        await cancel_and_wait(self._task)
        self._task = None
        self.notifier.close()

    async def check(self) -> list[str]:
        """Run every probe; the reasons of those that failed or did not answer in time."""
        problems: list[str] = []
        for named in self.probes:
            try:
                reason = await asyncio.wait_for(named.probe(), self.probe_timeout_s)
            except TimeoutError:
                reason = f"no answer within {self.probe_timeout_s:g} s"
            except Exception as exc:
                reason = f"probe failed: {exc}"
            if reason:
                problems.append(f"{named.name}: {reason}")
        return problems

    async def _ping_loop(self) -> None:
        assert self.interval_s is not None
        while True:
            problems = await self.check()
            if problems != self.last_problems:
                if problems:
                    log.error("unhealthy; withholding watchdog pings: %s", "; ".join(problems))
                else:
                    log.info("healthy again")
            self.last_problems = problems
            if problems:
                self.notifier.send(STATUS="unhealthy: " + "; ".join(problems))
            else:
                self.notifier.send(WATCHDOG="1", STATUS="running")
            await asyncio.sleep(self.interval_s)
