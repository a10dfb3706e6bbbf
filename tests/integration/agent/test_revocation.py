"""Revocation: an open offer whose flexibility disappears is revoked (the DSO can then no longer
order it), and an offer that was ordered is never revoked, whatever happens to the EVs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.storage import trades
from agent.trading.market import Market
from forecaster.flexibility import SessionSet
from tests.integration.agent.test_trade_flow import request_for
from tests.support.agent_env import TZ, connection, make_env, running_agent, seed_history
from tests.support.uftp import eventually
from uftp import store as uftp_store
from uftp.dso import Received
from uftp.models import FlexOffer, FlexOfferRevocation, FlexOrderResponse

pytestmark = pytest.mark.integration


def urgent(n: int) -> SessionSet:
    """Every ISP needs full power from 20 cars that leave soon: nothing left to move."""
    return SessionSet(
        np.zeros(20, dtype=np.int64),
        np.full(20, n, dtype=np.int64),
        np.full(20, 11_000 * n / 4.0),
        np.full(20, 4_140.0),
        np.full(20, 11_000.0),
    )


async def offered(dso: Any) -> FlexOffer:
    outcome = await dso.wait_handled(
        lambda o: isinstance(o, Received) and isinstance(o.message, FlexOffer), 60
    )
    assert isinstance(outcome, Received)
    assert outcome.accepted, outcome.rejections
    assert isinstance(outcome.message, FlexOffer)
    return outcome.message


async def test_an_offer_whose_flexibility_is_gone_is_revoked(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    market = Market(TZ, 15)
    tomorrow = market.today(datetime.now(UTC)) + timedelta(days=1)
    seed_history(env.config, tomorrow - timedelta(days=1))
    async with running_agent(env) as (agent, dso):
        await dso.send(request_for(tomorrow, range(37, 41)))
        offer = await offered(dso)

        async def gone(*_: Any, **__: Any) -> list[SessionSet]:
            return [urgent(market.count(tomorrow))]

        agent.forecaster.scenarios = gone  # type: ignore[method-assign]
        assert await agent.trader.housekeeping() == [offer.message_id]
        revocation = await dso.wait_handled(
            lambda o: isinstance(o, Received) and isinstance(o.message, FlexOfferRevocation), 30
        )
        assert isinstance(revocation, Received)
        assert revocation.accepted, revocation.rejections
        assert isinstance(revocation.message, FlexOfferRevocation)
        assert revocation.message.flex_offer_message_id == offer.message_id
        assert revocation.message.conversation_id == offer.conversation_id

        # An order crossing the revocation loses: "Reference message revoked".
        order = await dso.order_offer(offer, order_reference="ORD-LATE")

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
        assert "Reference message revoked" in (response.rejection_reason or "")
        conn = connection(env.config)
        try:
            row = trades.find_offer(conn, offer.message_id)
        finally:
            conn.close()
        assert row is not None
        assert row.status == "revoked"


async def test_an_ordered_offer_is_never_revoked(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    market = Market(TZ, 15)
    tomorrow = market.today(datetime.now(UTC)) + timedelta(days=1)
    seed_history(env.config, tomorrow - timedelta(days=1))
    async with running_agent(env) as (agent, dso):
        await dso.send(request_for(tomorrow, range(37, 41)))
        offer = await offered(dso)
        await dso.order_offer(offer, order_reference="ORD-KEPT")

        def status() -> str | None:
            conn = connection(env.config)
            try:
                row = trades.find_offer(conn, offer.message_id)
            finally:
                conn.close()
            return None if row is None else row.status

        await eventually(lambda: status() == "ordered", 30, "the offer ordered")

        async def gone(*_: Any, **__: Any) -> list[SessionSet]:
            return [urgent(market.count(tomorrow))]

        agent.forecaster.scenarios = gone  # type: ignore[method-assign]
        assert await agent.trader.housekeeping() == []
        revocations = await dso.database.read(
            lambda c: uftp_store.inbound_messages(c, message_type=FlexOfferRevocation.xml_name)
        )
        assert revocations == []
