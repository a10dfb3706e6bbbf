"""What every part of the simulator shares: the protocol names, the clock, timestamps, the
typed routing decorators of the `ocpp` library, and the loggers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast

from ocpp.routing import after as _library_after
from ocpp.routing import on as _library_on

# One logger for the whole package, named as it was when the simulator was one module.
log = logging.getLogger("ocpp_bridge.simulator")
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def on(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@on`` with types (the library ships none)."""
    return cast(Callable[[_Handler], _Handler], _library_on(action))


def after(action: str) -> Callable[[_Handler], _Handler]:
    """The library's ``@after``: runs once the CALLRESULT is sent, so it may send CALLs."""
    return cast(Callable[[_Handler], _Handler], _library_after(action))


# The `ocpp` library logs every frame at INFO; a site of simulated stations would drown the
# demo's log. Frames stay available at DEBUG-level configuration of this logger.
frame_log = logging.getLogger(f"{log.name}.frames")
frame_log.setLevel(logging.WARNING)


class ProtocolName(StrEnum):
    """The OCPP-J subprotocols a simulated station speaks."""

    OCPP16 = "ocpp1.6"
    OCPP201 = "ocpp2.0.1"


# --- time ------------------------------------------------------------------------------------


class SimClock(Protocol):
    """`agent.clock.Clock` by shape: stations accept the agent's clocks without importing it."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def ts(moment: datetime) -> str:
    """UTC with at most millisecond precision (CitrineOS-style validators reject more)."""
    utc = moment.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.isoformat(timespec=spec).replace("+00:00", "Z")


def parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
