"""A ten-minute CSMS outage in the middle of charging sessions, with real EVerest stations.

A libocpp 1.6 charge point and a 2.0.1 station are relayed by `flexbridge run` (autonomous
policy) to the strict ocpp-rpc CSMS of tests/peers/csms.js. Both start a transaction and meter
every 5-10 s; the CSMS then dies for ten minutes (connections to it are refused) while the
sessions go on, and comes back on the same port. The stations never notice, and the CSMS gets
every transaction message it missed, once, in the stations' order, before anything new.

Marked `long`: `make test` runs it in a pytest process of its own beside the rest of the suite,
so its ten minutes of wall-clock time overlap the others' instead of adding to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.integration.everest.test_local_controller_real import (
    START,
    STOP,
    TRANSACTION,
    ended,
    ended_call,
    started,
    transaction_messages,
)
from tests.support.everest import CONNECTED, V16, V201, AgentSite, Station, start_all
from tests.support.node_csms import NodeCsms
from tests.support.ports import free_port
from tests.support.uftp import eventually

# A real outage of ten minutes; the test's own bound is that plus a few minutes of set-up.
OUTAGE_S = 600.0
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.long,
    pytest.mark.timeout(OUTAGE_S + 420),
]
IDS = {V16: "LCLONG16", V201: "LCLONG201"}


@pytest.fixture
async def csms(node: str) -> AsyncIterator[NodeCsms]:
    """On a port below the kernel's ephemeral range (`free_port`): no outgoing connection on
    the machine takes it while the CSMS is away for ten minutes, so it comes back on it."""
    server = await NodeCsms.start(node, free_port())
    yield server
    await server.stop()


def sent_transaction(station: Station, since: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f.action, f.payload)
        for f in station.frames(since)
        if f.sent and f.action in TRANSACTION[station.version]
    ]


async def test_a_ten_minute_csms_outage_mid_session_is_replayed_once_and_in_order(
    node: str,
    csms: NodeCsms,
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    site = site_factory(
        list(IDS.values()),
        upstream_url=f"ws://127.0.0.1:{csms.port}/ocpp",
        upstream_toml='policy = "autonomous"\nreconnect_initial_s = 0.5\nreconnect_max_s = 5',
    )
    site.start()
    station16 = stations(site, [IDS[V16]], V16)[0]
    station201 = stations(site, [IDS[V201]], V201)[0]
    both = [station16, station201]
    await start_all(both)
    for station in both:
        await csms.wait_for_call(station.charger_id, "BootNotification")
        await station.wait_for_call("SetChargingProfile", sent=False, timeout_s=60)
        since = station.mark()
        station.send(START[station.version])
        await station.wait_for_frame(started, since=since, timeout_s=30, what="transaction start")
        station.send("power 7000")
    for station in both:
        await eventually(
            lambda s=station: len(transaction_messages(s.version, csms.calls(s.charger_id))) >= 2,
            60,
            f"{station.charger_id}'s transaction at the CSMS",
        )

    await csms.kill()
    outage = {station.charger_id: station.mark() for station in both}
    # Ten minutes of charging without the CSMS; the stations end their sessions at the end.
    await asyncio.sleep(OUTAGE_S - 30)
    for station in both:
        station.send(STOP[station.version])
        await station.wait_for_frame(
            ended, since=outage[station.charger_id], timeout_s=30, what="transaction end"
        )
    await asyncio.sleep(25)

    for station in both:
        during = sent_transaction(station, outage[station.charger_id])
        # Meter values all along (the stations sample every 5 to 10 s; some may be late on a
        # loaded machine).
        assert len(during) >= OUTAGE_S / 10 * 0.8, (station.charger_id, len(during))
        # The station never noticed: every CALL it made was answered with a CALLRESULT, and it
        # never reconnected.
        calls = [
            f
            for f in station.frames(outage[station.charger_id])
            if f.sent and f.kind == 2 and f.action in TRANSACTION[station.version]
        ]
        answers = [station.answer_to(f) for f in calls]
        assert all(a is not None and a.kind == 3 for a in answers), station.charger_id
        assert station.log().count(CONNECTED[station.version]) == 1, station.charger_id

    back = await NodeCsms.start(node, csms.port)
    try:
        for station in both:
            await eventually(
                lambda s=station: any(ended_call(a, p) for a, p in back.calls(s.charger_id)),
                120,
                f"{station.charger_id}'s transaction end replayed",
            )
        await asyncio.sleep(2)  # anything sent twice would show up below
        for station in both:
            cid, version = station.charger_id, station.version
            sent = sent_transaction(station)
            first = transaction_messages(version, csms.calls(cid))
            replayed = transaction_messages(version, back.calls(cid))
            if version == V201:
                assert all(p.get("offline") is True for _, p in replayed), replayed[:3]
                replayed = [(a, {**p, "offline": False}) for a, p in replayed]
            # Each once, in order: only a message the dead CSMS got but never answered may come
            # again, at the seam.
            seam = 1 if first and replayed and first[-1] == replayed[0] else 0
            assert first + replayed[seam:] == sent, (
                f"{cid}: sent {len(sent)}, first {len(first)}, replayed {len(replayed)}"
            )
            assert ended_call(*replayed[-1]), replayed[-1]
            if version == V16:
                given = {p["transactionId"] for a, p in first + replayed if a != "StartTransaction"}
                assert len(given) == 1, given
            else:
                seq = [p["seqNo"] for _, p in first + replayed[seam:]]
                assert seq == sorted(set(seq)), seq
            # Nothing but the replays: no answers to CALLs the CSMS never made.
            assert not [m for m in back.frames(cid) if m[0] != 2]
        assert back.complaints() == []
    finally:
        await back.stop()
