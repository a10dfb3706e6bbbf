"""A site link in a process of its own, for crash tests: `python -m tests.support.fleet_link_child
<database> <command file>` puts the command (as the centre published it) on an in-memory bus,
runs a `SiteLink` over the database until the command's stream message is acked and the outbox
is empty, then prints "done". With FLEXBRIDGE_FAILPOINT set it dies where the failpoint says."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.fleet import protocol
from agent.fleet import store as fleet_store
from agent.fleet.link import SiteLink
from agent.runtime.clock import SystemClock
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from tests.support.fleet_memory_bus import MemoryBus


async def main(database: Path, data: bytes) -> None:
    site = protocol.decode_command(data).site
    durable = protocol.site_consumer(site)
    db = Database(database, SCHEMA)
    await db.start()
    bus = MemoryBus()
    bus.add_consumer(protocol.CMD_STREAM, durable, protocol.cmd_subject(site))
    bus.put(protocol.cmd_subject(site), data)
    link = SiteLink(db, bus, site, SystemClock(), lambda: print("changed", flush=True))
    await link.start()
    while True:  # polled: one of the two conditions is in the database
        if await settled(bus, db, durable):
            break
        await asyncio.sleep(0.01)
    await link.stop()
    await db.stop()
    for published in bus.on("fleet.up"):
        print("published", published.msg_id, flush=True)
    print("done", flush=True)


async def settled(bus: MemoryBus, db: Database, durable: str) -> bool:
    if bus.states(protocol.CMD_STREAM, durable) != ["acked"]:
        return False
    return not await db.read(lambda c: fleet_store.pending(c, 1))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()))
