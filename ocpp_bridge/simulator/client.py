"""Opening a station's websocket (``<url>/<identity>``, one subprotocol, Basic auth) and
`running`: one bare connection for tests that send what they want themselves."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

from ocpp_bridge.simulator.common import ProtocolName, SimClock
from ocpp_bridge.simulator.v16 import SimCharger16
from ocpp_bridge.simulator.v201 import SimCharger201

SimCharger = SimCharger16 | SimCharger201


def basic_auth_header(identity: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def open_connection(
    url: str,
    identity: str,
    protocol: ProtocolName,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout_s: float = 30.0,
) -> Any:
    """The websocket a station opens: ``<url>/<identity>``, one subprotocol, Basic auth
    when a password is given (security profile 1/2, A00.FR.2xx)."""
    headers = basic_auth_header(identity, password) if password is not None else None
    return await websockets.connect(
        f"{url.rstrip('/')}/{identity}",
        subprotocols=[websockets.Subprotocol(protocol.value)],
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=open_timeout_s,
    )


@contextlib.asynccontextmanager
async def running(
    sim_class: type[SimCharger16] | type[SimCharger201],
    url: str,
    identity: str,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refuse_purposes: set[str] | None = None,
    clock: SimClock | None = None,
) -> AsyncIterator[Any]:
    """One bare connection serving its socket in a task; the caller sends what it wants.
    `sim_class` may be a subclass of either version (a charger that answers differently)."""
    ws = await open_connection(url, identity, sim_class.protocol, password, ssl_context)
    sim = sim_class(identity, ws, refuse_purposes, clock=clock)
    task = asyncio.create_task(sim.start())
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await task
        await ws.close()
