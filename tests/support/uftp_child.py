"""A UFTP AGR as a separate process, for crash tests: ``python -m tests.support.uftp_child``.

``enqueue N``: store N D-Prognosis revisions in one transaction, print "stored", deliver.
``resume``: only deliver what an earlier (killed) run left in the outbox.
Both print "all sent" once the outbox is empty, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from tests.support import uftp as build
from uftp import calendar, keys, store
from uftp.models import Role
from uftp.participant import AgrParticipant
from uftp.settings import ParticipantSettings, PeerSettings, RetryPolicy


async def run(args: argparse.Namespace) -> None:
    settings = ParticipantSettings(
        domain=build.AGR,
        role=Role.AGR,
        signing_key=keys.load_signing_key(Path(args.key)),
        port=args.port,
        peers=(PeerSettings(build.DSO, Role.DSO, (args.peer_key,), args.peer_url),),
        market=build.MARKET,
        # A long request timeout: the test holds a response and kills us while we wait.
        retry=RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, request_timeout_s=120),
    )
    agr = AgrParticipant(settings, Path(args.database))
    await agr.start()
    if args.mode == "enqueue":
        now = agr.now()
        period = calendar.today(build.TZ, now) + timedelta(days=1)
        prepared = [
            agr.prepare(build.d_prognosis(now, time_stamp=now, period=period, revision=revision))
            for revision in range(1, args.count + 1)
        ]
        await agr.database.write(lambda c: [store.enqueue_outbound(c, p, now) for p in prepared])
        print("stored", flush=True)
        agr.wake_outbox()

    async def outbox_empty() -> bool:
        pending = await agr.database.read(
            lambda c: store.outbound_messages(c, status=store.OutboundStatus.PENDING)
        )
        return not pending

    await build.eventually(outbox_empty, timeout_s=120)
    print("all sent", flush=True)
    await agr.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["enqueue", "resume"])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--database", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--peer-url", required=True)
    parser.add_argument("--peer-key", required=True)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
