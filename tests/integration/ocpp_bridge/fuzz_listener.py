"""The OCPP listener in a process of its own, for the frame fuzzer.

The agent runs `CentralSystem` in its own process; so does this, so the fuzzer's and the
neighbour charger's work in the test process never counts against the listener, and its memory
is its own. Protocol on stdio: prints ``PORT <n>`` once listening; on ``QUIT`` (or end of
stdin) stops and prints ``FAILURES <n>``, the number of log records that carry a traceback (a
connection handler or task that raised) or are CRITICAL. Log records go to stderr.

    python -m tests.integration.ocpp_bridge.fuzz_listener FUZZ GOOD
"""

from __future__ import annotations

import asyncio
import logging
import sys

from ocpp_bridge.events import Event
from ocpp_bridge.server import CentralSystem
from ocpp_bridge.settings import BridgeSettings, ChargerRecord, InMemoryRegistry
from tests.integration.ocpp_bridge.conftest import test_hash


class _CountFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.CRITICAL:
            self.count += 1


async def _consume(event: Event) -> None:
    return None


async def main(identities: list[str]) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    failures = _CountFailures()
    logging.getLogger().addHandler(failures)
    registry = InMemoryRegistry([ChargerRecord(identity, test_hash()) for identity in identities])
    # The agent's defaults (frame limit, message budget, pings), on a free loopback port.
    system = CentralSystem(BridgeSettings(host="127.0.0.1", port=0), registry, on_event=_consume)
    await system.start()
    print(f"PORT {system.port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "QUIT":
            break
    await system.stop()
    print(f"FAILURES {failures.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
