"""The AGR end to end over real sockets: prognosis, request, offer, order, new revision,
settlement, against our simulated DSO (the interop with shapeshifter-uftp has its own test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent.app import Agent
from agent.storage import store, trades
from agent.trading.market import Market
from tests.support.agent_env import (
    CP,
    DSO,
    TZ,
    Env,
    connection,
    make_env,
    order_row,
    running_agent,
    seed_history,
)
from tests.support.trade_history import flex_request
from tests.support.uftp import eventually
from uftp import calendar, reasons
from uftp import store as uftp_store
from uftp.dso import DsoParticipant, Received
from uftp.models import (
    ContractSettlement,
    ContractSettlementISP,
    ContractSettlementPeriod,
    DPrognosis,
    FlexOffer,
    FlexOrderResponse,
    FlexOrderSettlement,
    FlexOrderSettlementISP,
    FlexRequest,
    FlexSettlement,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Env, Agent, DsoParticipant]]:
    env = make_env(tmp_path)
    seed_history(env.config, calendar.today(TZ, datetime.now(UTC)))
    async with running_agent(env) as (agent, dso):
        yield env, agent, dso


def received(kind: type, **where: object):  # type: ignore[no-untyped-def]
    def match(outcome: object) -> bool:
        if not isinstance(outcome, Received) or not isinstance(outcome.message, kind):
            return False
        return all(getattr(outcome.message, k) == v for k, v in where.items())

    return match


def request_for(period, requested: range) -> FlexRequest:  # type: ignore[no-untyped-def]
    return flex_request(period, requested.start, requested.stop - 1)


async def test_request_offer_order_and_the_revision_that_includes_it(
    running: tuple[Env, Agent, DsoParticipant],
) -> None:
    env, _agent, dso = running
    now = datetime.now(UTC)
    market = Market(TZ, 15)
    today = market.today(now)
    tomorrow = today + timedelta(days=1)

    first = await dso.wait_handled(received(DPrognosis, period=today), 30)
    assert isinstance(first, Received)
    assert first.accepted, first.rejections
    prognosis = first.message
    assert isinstance(prognosis, DPrognosis)
    assert sum(i.duration for i in prognosis.isps) == market.count(today)

    # Congestion at 09:00-10:00 tomorrow, when the seeded EVs charge.
    request = request_for(tomorrow, range(37, 41))
    await dso.send(request)
    outcome = await dso.wait_handled(received(FlexOffer), 60)
    assert isinstance(outcome, Received)
    offer = outcome.message
    assert isinstance(offer, FlexOffer)
    assert outcome.accepted, outcome.rejections
    assert offer.flex_request_message_id == request.message_id
    assert offer.conversation_id == request.conversation_id
    option = offer.offer_options[0]
    # The request's exact (Start, Duration) and a reduction within its bounds.
    assert [(i.start, i.duration) for i in option.isps] == [(37, 4)]
    assert -60_000 <= option.isps[0].power <= -5_000
    assert option.price == (Decimal("2.00") + Decimal("0.25") * abs(option.isps[0].power) / 1000)
    assert offer.d_prognosis_message_id is not None

    await dso.order_offer(offer, order_reference="ORD-42")
    revision = await dso.wait_handled(
        lambda o: (
            isinstance(o, Received)
            and isinstance(o.message, DPrognosis)
            and o.message.period == tomorrow
            and o.message.revision >= 2
        ),
        60,
    )
    assert isinstance(revision, Received)
    assert revision.accepted
    assert isinstance(revision.message, DPrognosis)
    powers = calendar.expand_runs((i.start, i.duration, i.power) for i in revision.message.isps)

    conn = connection(env.config)
    try:
        orders = trades.accepted_orders(conn, period=tomorrow)
        base = trades.prognosis_by_message(conn, orders[0].baseline_message_id or "")
        latest = trades.latest_prognosis(conn, CP, tomorrow)
    finally:
        conn.close()
    assert [o.order_reference for o in orders] == ["ORD-42"]
    assert base is not None
    assert latest is not None
    assert latest.reason == "order"
    for index in range(37, 41):
        assert powers[index] == max(0, base.power_w[index - 1] + option.isps[0].power)

    # The order took all there was in ISP 37: the revised prognosis has nothing left there.
    assert orders[0].isps == [[37, 4, option.isps[0].power]]
    assert powers[37] == 0

    # A second identical request finds the flexibility taken by the first order: no offer.
    second = request_for(tomorrow, range(37, 41)).model_copy(update={"revision": 2})
    await dso.send(second)

    def decided() -> trades.RequestRow | None:
        conn = connection(env.config)
        try:
            row = trades.find_request(conn, second.message_id)
        finally:
            conn.close()
        return row if row is not None and row.offer_state != "todo" else None

    await eventually(decided, 60, "the second request's offer decision")
    row = decided()
    assert row is not None
    assert row.status == "accepted"
    assert row.offer_state == "none"
    assert "does not reach the smallest change requested" in (row.reason or "")
    conn = connection(env.config)
    try:
        offers = trades.recent_offers(conn)
    finally:
        conn.close()
    assert [(o.request_message_id, o.status) for o in offers] == [(request.message_id, "ordered")]
    assert [o for o in dso.handled if received(FlexOffer)(o)] == [outcome]


def _settlement(period, actual: dict[int, int], reference: str) -> FlexSettlement:  # type: ignore[no-untyped-def]
    return FlexSettlement(
        sender_domain=DSO,
        recipient_domain="agr.flexbridge-test.org",
        period_start=period,
        period_end=period,
        currency="EUR",
        flex_order_settlements=[
            FlexOrderSettlement(
                order_reference=reference,
                period=period,
                congestion_point=CP,
                price=Decimal("3.25"),
                net_settlement=Decimal("3.25"),
                isps=[
                    FlexOrderSettlementISP(
                        start=i,
                        baseline_power=actual[i] + 5000,
                        ordered_flex_power=-5000,
                        actual_power=actual[i],
                        delivered_flex_power=-5000,
                    )
                    for i in range(37, 41)
                ],
            )
        ],
        contract_settlements=[
            ContractSettlement(
                contract_id="C-1",
                periods=[
                    ContractSettlementPeriod(
                        period=period, isps=[ContractSettlementISP(start=1, reserved_power=0)]
                    )
                ],
            )
        ],
    )


async def test_settlement_accepts_matching_items_and_disputes_contradicted_ones(
    running: tuple[Env, Agent, DsoParticipant],
) -> None:
    env, _agent, dso = running
    market = Market(TZ, 15)
    yesterday = market.today(datetime.now(UTC)) - timedelta(days=1)
    before = yesterday - timedelta(days=1)
    conn = connection(env.config)
    conn.execute("BEGIN")
    received = datetime.now(UTC) - timedelta(days=1)
    for period, reference in [(yesterday, "ORD-Y"), (before, "ORD-B")]:
        ordered = [[37, 4, -5000]]
        row = order_row(period, ordered, reference=reference, price="3.2500", received_at=received)
        trades.insert_order(conn, row)
    conn.execute("COMMIT")

    def actual(period) -> dict[int, int]:  # type: ignore[no-untyped-def]
        measured = store.congestion_point_energy(conn, CP, *market.bounds(period))
        starts = {i.index: i.start for i in market.isps(period)}
        return {i: round(measured.get(int(starts[i].timestamp()), 0.0) * 4) for i in range(37, 41)}

    agreed = _settlement(yesterday, actual(yesterday), "ORD-Y")
    contradicted = _settlement(before, {i: v + 7_000 for i, v in actual(before).items()}, "ORD-B")
    conn.close()
    await dso.send(agreed)
    await dso.send(contradicted)

    def settlements() -> list[dict[str, object]]:
        conn = connection(env.config)
        try:
            return trades.recent_settlements(conn)
        finally:
            conn.close()

    await eventually(lambda: len(settlements()) == 2, 20, "both settlements recorded")
    rows = settlements()
    by_id = {r["message_id"]: r for r in rows}
    ok = by_id[agreed.message_id]
    assert ok["result"] == "Accepted"
    assert ok["items"] == [
        {"order_reference": "ORD-Y", "disposition": "Accepted", "dispute_reason": None}
    ]  # type: ignore[comparison-overlap]
    disputed = by_id[contradicted.message_id]
    assert disputed["result"] == "Accepted"  # disputes are items, not a rejection
    (item,) = disputed["items"]  # type: ignore[misc]
    assert item["disposition"] == "Disputed"
    assert "ActualPower differs from the AGR's metering: ISP 37" in item["dispute_reason"]

    # The same period again: rejected as a whole, the DSO must not settle twice.
    again = _settlement(yesterday, actual_again := dict.fromkeys(range(37, 41), 0), "ORD-Y")
    del actual_again
    await dso.send(again)
    await eventually(lambda: len(settlements()) == 3, 20, "the repeated settlement recorded")
    third = {r["message_id"]: r for r in settlements()}[again.message_id]
    assert third["result"] == "Rejected"


async def test_an_order_for_an_offer_the_dso_rejected_is_rejected(
    running: tuple[Env, Agent, DsoParticipant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offer's record says "rejected" (the DSO's FlexOfferResponse); uftp's messages alone
    do not tell. An order for it is refused, and the record is not overwritten by "ordered"."""
    _env, agent, dso = running
    refusal = reasons.explain(reasons.REQUEST_MISMATCH, "not what was asked")
    monkeypatch.setattr("uftp.dso.check_flex_offer", lambda *_a, **_k: [refusal])
    tomorrow = Market(TZ, 15).today(datetime.now(UTC)) + timedelta(days=1)
    await dso.send(request_for(tomorrow, range(37, 41)))
    outcome = await dso.wait_handled(received(FlexOffer), 60)
    assert isinstance(outcome, Received)
    assert not outcome.accepted
    offer = outcome.message
    assert isinstance(offer, FlexOffer)

    async def offer_status() -> str | None:
        row = await agent.db.read(lambda c: trades.find_offer(c, offer.message_id))
        return None if row is None else row.status

    async def offer_rejected() -> bool:
        return await offer_status() == "rejected"

    await eventually(offer_rejected, 30, "the offer's record rejected")

    order = await dso.order_offer(offer, order_reference="ORD-AFTER-REJECTION")

    async def answers() -> list[uftp_store.InboundMessage]:
        return await dso.database.read(
            lambda c: uftp_store.inbound_messages(
                c, message_type=FlexOrderResponse.xml_name, reference_id=order.message_id
            )
        )

    await eventually(answers, 30, "the FlexOrderResponse")
    response = (await answers())[0].message()
    assert isinstance(response, FlexOrderResponse)
    assert not response.accepted
    assert reasons.reason_of(response.rejection_reason or "") == reasons.INVALID_MESSAGE
    assert "rejected by the DSO's FlexOfferResponse" in (response.rejection_reason or "")
    assert await offer_status() == "rejected"
    assert await agent.db.read(lambda c: trades.accepted_orders(c, period=tomorrow)) == []
