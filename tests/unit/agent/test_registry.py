"""Charger registry: configured chargers, registration on first contact, the safe budget."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from agent.runtime.config import Config
from agent.site.registry import StoreRegistry
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from ocpp_bridge import verify_password


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 6, 1, tzinfo=UTC)

    async def sleep(self, seconds: float) -> None:
        return None


async def test_configured_chargers_carry_their_wiring_and_share(
    config: Config, db: Database
) -> None:
    registry = StoreRegistry(config, db, Clock())
    record = await registry.lookup("DEMO-001")
    assert record is not None
    assert record.electrical.phases == 3
    assert record.safe_power_w == config.safe_power_w(config.ocpp.chargers[0])
    assert await registry.lookup("NOBODY") is None


async def test_plain_password_from_the_environment_is_hashed(config: Config, db: Database) -> None:
    first = config.ocpp.chargers[0].model_copy(update={"password": SecretStr("0123456789abcdef")})
    ocpp = config.ocpp.model_copy(update={"chargers": [first, *config.ocpp.chargers[1:]]})
    registry = StoreRegistry(config.model_copy(update={"ocpp": ocpp}), db, Clock())
    record = await registry.lookup("DEMO-001")
    assert record is not None
    assert record.password_hash is not None
    assert "0123456789abcdef" not in record.password_hash
    assert verify_password("0123456789abcdef", record.password_hash)


async def test_registration_shares_what_is_left_of_the_safe_limit(
    config: Config, tmp_path: Path
) -> None:
    # 20 configured chargers share the 100 kW safe limit: nothing is left for strangers.
    config = config.model_copy(
        update={"ocpp": config.ocpp.model_copy(update={"unknown_chargers": "register"})}
    )
    db = Database(tmp_path / "r.sqlite", SCHEMA)
    await db.start()
    registry = StoreRegistry(config, db, Clock())
    record = await registry.register("STRANGER-1", None)
    assert record is not None
    assert record.safe_power_w == 0.0
    again = await registry.lookup("STRANGER-1")
    assert again is not None
    assert again.safe_power_w == 0.0

    # With room left (20 x 4 kW of 100 kW promised), a stranger gets the minimum charging power.
    modest = [c.model_copy(update={"safe_power_w": 4_000}) for c in config.ocpp.chargers]
    roomy = config.model_copy(update={"ocpp": config.ocpp.model_copy(update={"chargers": modest})})
    registry = StoreRegistry(roomy, db, Clock())
    share = (await registry.register("STRANGER-2", None)).safe_power_w  # type: ignore[union-attr]
    assert share == 6 * 230 * 3
    await db.stop()


async def test_reject_policy_registers_nobody(config: Config, db: Database) -> None:
    strict = config.model_copy(
        update={"ocpp": config.ocpp.model_copy(update={"unknown_chargers": "reject"})}
    )
    assert await StoreRegistry(strict, db, Clock()).register("X", None) is None
