"""The aggregator's UFTP inbox on PostgreSQL: one effect per MessageID, whatever the number of
POSTs and of aggregator processes on the database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import psycopg
import pytest

from tests.integration.central.conftest import Fleet, eventually
from tests.support import uftp as build
from uftp.models import FlexRequest, Role, utc_now

pytestmark = pytest.mark.integration


def request(fleet: Fleet, revision: int = 1) -> FlexRequest:
    now = utc_now()
    return build.flex_request(
        now,
        time_stamp=now,
        period=fleet.tomorrow(),
        revision=revision,
        expiration_date_time=now + timedelta(hours=4),
    )


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(
        url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"}
    ) as response:
        return response.status


async def counts(dsn: str, message_id: str) -> tuple[int, int, int, int]:
    """(inbox rows, processed, answers queued, offers) for one inbound MessageID."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT (SELECT count(*) FROM uftp_inbox WHERE message_id = %(m)s), "
                "(SELECT count(*) FROM uftp_inbox WHERE message_id = %(m)s "
                " AND status = 'processed' AND attempts = 0), "
                "(SELECT count(*) FROM uftp_outbox WHERE reference_id = %(m)s "
                " AND message_type = 'FlexRequestResponse'), "
                "(SELECT count(*) FROM flex_offer WHERE request_message_id = %(m)s)",
                {"m": message_id},
            )
        ).fetchone()
        assert row is not None
        return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


async def test_duplicate_posts_from_the_dso_have_one_effect(fleet: Fleet) -> None:
    first = await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    second = await fleet.start_aggregator()
    await fleet.push_flex()
    await eventually(
        lambda: len([d for d in fleet.bus.delivered if d.outcome == "ack"]) == 3,
        what="envelopes recorded",
    )
    message = request(fleet)
    body = build.signed_body(message, fleet.dso_key, build.DSO, Role.DSO)
    async with aiohttp.ClientSession() as session:
        # The same POST four times at once, to both aggregator processes, then once more.
        statuses = await asyncio.gather(
            post(session, first.uftp.url, body),
            post(session, second.uftp.url, body),
            post(session, first.uftp.url, body),
            post(session, second.uftp.url, body),
        )
        assert statuses == [200, 200, 200, 200]
        await eventually(
            lambda: asyncio.ensure_future(counts(fleet.dsn, message.message_id)),
            what="handled",
        )

        async def handled() -> bool:
            return (await counts(fleet.dsn, message.message_id))[1] == 1

        await eventually(handled, what="the request handled")
        assert await post(session, first.uftp.url, body) == 200
    await asyncio.to_thread(fleet.dso.wait_for, "FlexOffer")
    await asyncio.sleep(1.0)  # time for a second effect to show, if there were one
    assert await counts(fleet.dsn, message.message_id) == (1, 1, 1, 1)
    kinds = [k for k, _ in fleet.dso.all_received]
    assert kinds.count("FlexRequestResponse") == 1
    assert kinds.count("FlexOffer") == 1
    # One order, one command per CP_A site.
    await eventually(lambda: len(fleet.bus.commands()) == 2, what="commands")
    await asyncio.sleep(0.5)
    assert len(fleet.bus.commands()) == 2


async def test_two_aggregators_handle_every_message_exactly_once(fleet: Fleet) -> None:
    one = await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    two = await fleet.start_aggregator()
    messages = [request(fleet, revision=1 + i) for i in range(30)]
    bodies = [build.signed_body(m, fleet.dso_key, build.DSO, Role.DSO) for m in messages]
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(
            *(
                post(session, (one if i % 2 else two).uftp.url, body)
                for i, body in enumerate(bodies)
            )
        )
    assert set(statuses) == {200}

    async def all_handled() -> bool:
        async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
            row = await (
                await conn.execute("SELECT count(*) FROM uftp_inbox WHERE status = 'pending'")
            ).fetchone()
            return row is not None and row[0] == 0

    await eventually(all_handled, what="every message handled")
    await asyncio.sleep(0.5)  # a D-prognosis response may still be in flight
    await eventually(all_handled, what="every message handled")
    for message in messages:
        inbox, processed, answers, _ = await counts(fleet.dsn, message.message_id)
        assert (inbox, processed, answers) == (1, 1, 1), message.message_id
    # Every handling the two processes did is one processed row (the requests, and the DSO's
    # answers to the D-prognoses they sent): none was handled twice.
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*), sum(attempts) FROM uftp_inbox WHERE status = 'processed'"
            )
        ).fetchone()
    assert row is not None
    assert one.uftp.handled + two.uftp.handled == row[0]
    assert row[1] == 0
    responses = await eventually(
        lambda: (
            len([k for k, _ in fleet.dso.all_received if k == "FlexRequestResponse"])
            == len(messages)
        ),
        what="every answer delivered",
    )
    assert responses
    await asyncio.sleep(0.5)
    answered = [
        m.flex_request_message_id for k, m in fleet.dso.all_received if k == "FlexRequestResponse"
    ]
    assert sorted(answered) == sorted(m.message_id for m in messages)


async def test_the_same_message_id_with_other_content_is_a_duplicate_identifier(
    fleet: Fleet,
) -> None:
    aggregator = await fleet.start_aggregator(port=fleet.agr_port)  # type: ignore[attr-defined]
    original = request(fleet, revision=1)
    forged = original.model_copy(update={"revision": 2})
    async with aiohttp.ClientSession() as session:
        for message in (original, forged):
            body = build.signed_body(message, fleet.dso_key, build.DSO, Role.DSO)
            assert await post(session, aggregator.uftp.url, body) == 200

    def answers() -> list[tuple[str, str | None]]:
        return [
            (m.result, m.rejection_reason)
            for k, m in fleet.dso.all_received
            if k == "FlexRequestResponse" and m.flex_request_message_id == original.message_id
        ]

    await eventually(lambda: len(answers()) == 2, what="both answered")
    assert sorted(answers(), key=lambda a: a[0]) == [
        ("Accepted", None),
        (
            "Rejected",
            f"Duplicate Identifier: MessageID {original.message_id} was already used for other "
            "content",
        ),
    ]
    async with await psycopg.AsyncConnection.connect(fleet.dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT count(*), max(revision) FROM flex_request WHERE message_id = %s",
                (original.message_id,),
            )
        ).fetchone()
    assert rows == (1, 1)  # the original stands
