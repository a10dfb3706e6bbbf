"""The asyncio service: start components in order, run until a signal, stop them in reverse.

A component is anything with ``name``, ``async start()`` and ``async stop()``. `start` returns
once the component is serving (listener bound, database open); long-running work runs in tasks
the component owns. A component that fails at start stops the ones already started, so a bad
port or an unwritable state directory ends the process with a clear error instead of a
half-running agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StartError(RuntimeError):
    """A component cannot start for a reason the operator can fix (the message says how);
    reported as one line, without a traceback."""


# Expected at start-up: the environment, not a bug (a port in use, a file not readable).
EXPECTED_START_ERRORS = (StartError, OSError)


class ServiceError(RuntimeError):
    """A component could not start; `component` names it, `__cause__` is what it raised."""

    def __init__(self, message: str, component: str = "") -> None:
        super().__init__(message)
        self.component = component


class Service:
    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        self._started: list[Component] = []
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        for component in self.components:
            try:
                await component.start()
            except Exception as exc:
                if not isinstance(exc, EXPECTED_START_ERRORS):
                    log.error(
                        "component failed to start",
                        extra={"component": component.name},
                        exc_info=True,
                    )
                await self.stop()
                raise ServiceError(
                    f"{component.name} failed to start: {exc}", component.name
                ) from exc
            self._started.append(component)
            log.debug("component started", extra={"component": component.name})

    async def stop(self) -> None:
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception:
                log.exception("component failed to stop", extra={"component": component.name})

    async def run(self) -> None:
        """Start, wait for `request_stop` (SIGTERM/SIGINT), stop."""
        await self.start()
        log.info("flexbridge running", extra={"components": len(self._started)})
        try:
            await self._stop.wait()
        finally:
            log.info("flexbridge stopping")
            await self.stop()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Stop a component's background task and wait until it has unwound."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def install_signal_handlers(stop: Callable[[int], object]) -> None:
    """SIGTERM and SIGINT call `stop(signal number)` on the event loop. Set explicitly, so
    they work also where SIGINT was ignored when the process started (a shell starts
    background jobs that way, and Python then leaves Ctrl-C ignored)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop, sig)


async def serve(components: Sequence[Component]) -> None:
    service = Service(components)
    install_signal_handlers(lambda _signal: service.request_stop())
    await service.run()
