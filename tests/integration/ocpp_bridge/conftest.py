"""A real CentralSystem on a loopback port, with its events collected for assertions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from ocpp_bridge.events import Event
from ocpp_bridge.passwords import ScryptParameters, hash_password
from ocpp_bridge.server import CentralSystem
from ocpp_bridge.settings import BridgeSettings, ChargerRecord, InMemoryRegistry

# Real scrypt, cheap parameters: the cost is not what these tests are about.
TEST_SCRYPT = ScryptParameters(n=2**10)
PASSWORD = "test-password-0123"

E = TypeVar("E")


def test_hash() -> str:
    """A real scrypt hash of PASSWORD with cheap parameters."""
    return hash_password(PASSWORD, TEST_SCRYPT)


test_hash.__test__ = False  # type: ignore[attr-defined]


@dataclass
class EventLog:
    events: list[Event] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[E], **match: Any) -> list[E]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())
        ]

    async def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kinds = [type(e).__name__ for e in self.events[-20:]]
                raise AssertionError(f"{what} not met in {timeout_s} s; last events: {kinds}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


@dataclass
class RunningBridge:
    system: CentralSystem
    registry: InMemoryRegistry
    log: EventLog

    @property
    def url(self) -> str:
        scheme = "wss" if self.system.settings.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.system.port}/ocpp"


@contextlib.asynccontextmanager
async def run_bridge(
    settings: BridgeSettings | None = None,
    records: list[ChargerRecord] | None = None,
    registry: InMemoryRegistry | None = None,
    clock: Any = None,
) -> AsyncIterator[RunningBridge]:
    """`clock`: an `agent.runtime.clock` clock (now/sleep) for the bridge's whole time base."""
    log = EventLog()
    registry = registry or InMemoryRegistry(records or [])
    timing: dict[str, Any] = {} if clock is None else {"clock": clock.now, "sleep": clock.sleep}
    system = CentralSystem(
        settings or BridgeSettings(host="127.0.0.1", port=0),
        registry,
        on_event=log.record,
        **timing,
    )
    await system.start()
    try:
        yield RunningBridge(system, registry, log)
    finally:
        await system.stop()


@pytest.fixture
def bridge_factory() -> Callable[..., Any]:
    return run_bridge
