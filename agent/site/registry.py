"""Who may connect as a charger, and with what wiring and safe limit.

Configured chargers come from the TOML file (their electrical data, safe share and password);
with ``unknown_chargers = "register"`` others are admitted on first contact and remembered in
the store with the password they presented (trust on first use).

A registered charger's safe limit comes out of what is left of the site's safe limit after
every other charger's share, never more than the minimum charging power: the invariant that the
safe profiles of all chargers together stay within the site's safe limit must hold however many
unknown chargers turn up. When nothing is left, it gets 0 W: it can charge while the agent's
dynamic limits allow it, and stops if the agent dies.
"""

from __future__ import annotations

import logging
import sqlite3

from agent.runtime.clock import Clock
from agent.runtime.config import ChargerConfig, Config
from agent.storage import store
from agent.storage.db import Database
from ocpp_bridge import ChargerRecord, ElectricalData, hash_password

log = logging.getLogger(__name__)


def electrical(charger: ChargerConfig) -> ElectricalData:
    return ElectricalData(
        phases=charger.phases,
        nominal_voltage_v=charger.nominal_voltage_v,
        min_current_a=charger.min_current_a,
        max_current_a=charger.max_current_a,
    )


DEFAULT_ELECTRICAL = ElectricalData()


class StoreRegistry:
    """`ocpp_bridge.ChargerRegistry` over the configuration and the agent's store."""

    def __init__(self, config: Config, db: Database, clock: Clock) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        self._configured: dict[str, ChargerRecord] = {}
        for charger in config.ocpp.chargers:
            password_hash = charger.password_hash
            if password_hash is None and charger.password is not None:
                # A plain password from the environment is hashed once, here, and never kept.
                password_hash = hash_password(charger.password.get_secret_value())
            self._configured[charger.id] = ChargerRecord(
                charger.id,
                password_hash=password_hash,
                electrical=electrical(charger),
                safe_power_w=float(config.safe_power_w(charger)),
            )
        self._configured_safe_w = sum(r.safe_power_w for r in self._configured.values())

    def configured(self) -> list[ChargerRecord]:
        return list(self._configured.values())

    async def lookup(self, charger_id: str) -> ChargerRecord | None:
        record = self._configured.get(charger_id)
        if record is not None:
            return record
        row = await self.db.read(lambda c: store.find_charger(c, charger_id))
        if row is None or row.safe_power_w is None:
            return None
        return ChargerRecord(
            charger_id,
            password_hash=row.password_hash,
            electrical=DEFAULT_ELECTRICAL,
            safe_power_w=row.safe_power_w,
        )

    async def register(self, charger_id: str, password_hash: str | None) -> ChargerRecord | None:
        if self.config.ocpp.unknown_chargers != "register":
            return None
        site_safe = float(self.config.site.effective_safe_limit_w)
        minimum = DEFAULT_ELECTRICAL.min_current_a * DEFAULT_ELECTRICAL.watts_per_amp
        now = self.clock.now()

        def admit(conn: sqlite3.Connection) -> float:
            promised = self._configured_safe_w + store.registered_safe_power_w(conn)
            share = max(0.0, min(minimum, site_safe - promised))
            store.register_charger(conn, charger_id, password_hash, share, now)
            row = store.find_charger(conn, charger_id)
            return share if row is None or row.safe_power_w is None else row.safe_power_w

        share = await self.db.transaction(admit)
        if share < minimum:
            log.warning(
                "registered charger gets a safe limit of %.0f W: the site's safe limit is "
                "already shared out",
                share,
                extra={"charger_id": charger_id},
            )
        return ChargerRecord(
            charger_id,
            password_hash=password_hash,
            electrical=DEFAULT_ELECTRICAL,
            safe_power_w=share,
        )
