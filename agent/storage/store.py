"""The agent's records in SQLite: the schema; chargers, sessions, energy per ISP.

Functions here take a `sqlite3.Connection` and never commit: callers run them inside
`Database.transaction` so that a business change, the UFTP message it causes (uftp's outbox) and
the inbound message it answers (uftp's inbox) commit together or not at all. That single rule is
what makes a ``kill -9`` at any moment safe: after a restart the database holds either the whole
step or none of it, and the step is simply taken again.

The AGR's trade records and their statuses are in `agent.storage.trades`; this module holds the
schema of both, the site's records (chargers, sessions, energy per ISP, uptime) and the shared
conversions.

Times are stored as UTC epoch seconds (REAL or INTEGER), periods as ISO dates, per-ISP values as
JSON lists in ISP order. The UFTP tables (prefix ``uftp_``) belong to `uftp.store` and are
migrated by it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from agent.storage.db import Migration

SCHEMA = [
    Migration(
        1,
        "chargers, sessions, energy per ISP, prognoses, requests, offers, orders, settlements",
        """
        CREATE TABLE charger (
            charger_id TEXT PRIMARY KEY,
            registered_at REAL NOT NULL,
            password_hash TEXT,
            -- registered chargers only (configured ones take theirs from the config)
            safe_power_w REAL,
            vendor TEXT, model TEXT, serial_number TEXT, firmware_version TEXT, protocol TEXT,
            last_seen REAL
        );
        CREATE TABLE charging_session (
            session_id TEXT PRIMARY KEY,
            charger_id TEXT NOT NULL,
            evse_id INTEGER NOT NULL,
            congestion_point TEXT,
            started_at REAL,
            ended_at REAL,
            energy_wh REAL,
            requested_energy_wh REAL,
            departure_at REAL,
            soc_percent REAL,
            -- a hash, not the token: an RFID UID identifies a person
            id_token_hash TEXT,
            stop_reason TEXT,
            updated_at REAL NOT NULL
        );
        CREATE INDEX charging_session_open ON charging_session (ended_at, charger_id);
        CREATE INDEX charging_session_time ON charging_session (started_at);
        CREATE TABLE isp_energy (
            charger_id TEXT NOT NULL,
            isp_start INTEGER NOT NULL,
            congestion_point TEXT,
            energy_wh REAL NOT NULL,
            PRIMARY KEY (charger_id, isp_start)
        ) WITHOUT ROWID;
        CREATE INDEX isp_energy_cp ON isp_energy (congestion_point, isp_start);
        CREATE TABLE prognosis (
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            revision INTEGER NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL,
            dso_domain TEXT NOT NULL,
            created_at REAL NOT NULL,
            reason TEXT NOT NULL,
            power_w TEXT NOT NULL,
            baseline_w TEXT NOT NULL,
            orders TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'sent',
            rejection_reason TEXT,
            PRIMARY KEY (congestion_point, period, revision)
        );
        CREATE TABLE flex_request (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            revision INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            received_at REAL NOT NULL,
            isps TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            offer_state TEXT NOT NULL DEFAULT 'none'
        );
        CREATE INDEX flex_request_todo ON flex_request (offer_state);
        CREATE TABLE flex_offer (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            request_message_id TEXT,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            currency TEXT NOT NULL,
            options TEXT NOT NULL,
            reserved_w TEXT NOT NULL,
            prognosis_message_id TEXT,
            status TEXT NOT NULL DEFAULT 'sent',
            reason TEXT,
            revocation_message_id TEXT
        );
        CREATE INDEX flex_offer_open ON flex_offer (status, congestion_point, period);
        CREATE TABLE flex_order (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            offer_message_id TEXT,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            order_reference TEXT NOT NULL,
            option_reference TEXT,
            activation_factor REAL NOT NULL,
            price TEXT NOT NULL,
            currency TEXT NOT NULL,
            isps TEXT NOT NULL,
            -- the D-prognosis the ordered changes are relative to (the DSO's baseline)
            baseline_message_id TEXT,
            received_at REAL NOT NULL,
            status TEXT NOT NULL,
            reason TEXT
        );
        CREATE INDEX flex_order_period ON flex_order (status, congestion_point, period);
        CREATE TABLE flex_settlement (
            message_id TEXT PRIMARY KEY,
            dso_domain TEXT NOT NULL,
            period_start TEXT NOT NULL,
            period_end TEXT NOT NULL,
            received_at REAL NOT NULL,
            result TEXT NOT NULL,
            items TEXT NOT NULL
        );
        CREATE TABLE metering_sent (
            ean TEXT NOT NULL,
            period TEXT NOT NULL,
            revision INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (ean, period, revision)
        );
        CREATE TABLE meter_baseline (
            meter TEXT PRIMARY KEY,
            at REAL NOT NULL,
            register_wh REAL NOT NULL
        );
        -- When the agent was running and measuring: an ISP inside these intervals without
        -- energy had zero load; outside them it is unknown (a gap for the forecaster).
        CREATE TABLE agent_uptime (started_at REAL PRIMARY KEY, alive_until REAL NOT NULL);
        CREATE TABLE agent_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
    Migration(
        2,
        "isp_energy keyed by ISP first: a flush updates one page, not one per charger",
        # Every site flush adds to the running ISP of every charger. Keyed by charger first,
        # those rows sat in as many B-tree pages as there are chargers, and each page went to
        # the WAL on every flush (most of the agent's SD-card writes, bench/wear.py).
        """
        CREATE TABLE isp_energy_by_isp (
            isp_start INTEGER NOT NULL,
            charger_id TEXT NOT NULL,
            congestion_point TEXT,
            energy_wh REAL NOT NULL,
            PRIMARY KEY (isp_start, charger_id)
        ) WITHOUT ROWID;
        INSERT INTO isp_energy_by_isp (isp_start, charger_id, congestion_point, energy_wh)
            SELECT isp_start, charger_id, congestion_point, energy_wh FROM isp_energy;
        DROP TABLE isp_energy;
        ALTER TABLE isp_energy_by_isp RENAME TO isp_energy;
        CREATE INDEX isp_energy_cp ON isp_energy (congestion_point, isp_start);
        """,
    ),
    Migration(
        3,
        "sessions: the charger's energy register at the start of the transaction",
        "ALTER TABLE charging_session ADD COLUMN meter_start_wh REAL;",
    ),
    Migration(
        4,
        "trade records: CHECK constraints on their statuses",
        # The statuses of agent.storage.records; SQLite adds a CHECK only by rebuilding a
        # table. Every row is copied as it is (the columns are those of migration 1).
        """
        CREATE TABLE prognosis_new (
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            revision INTEGER NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL,
            dso_domain TEXT NOT NULL,
            created_at REAL NOT NULL,
            reason TEXT NOT NULL,
            power_w TEXT NOT NULL,
            baseline_w TEXT NOT NULL,
            orders TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'sent'
                CHECK (status IN ('sent', 'accepted', 'rejected')),
            rejection_reason TEXT,
            PRIMARY KEY (congestion_point, period, revision)
        );
        INSERT INTO prognosis_new SELECT * FROM prognosis;
        DROP TABLE prognosis;
        ALTER TABLE prognosis_new RENAME TO prognosis;

        CREATE TABLE flex_request_new (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            revision INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            received_at REAL NOT NULL,
            isps TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
            reason TEXT,
            offer_state TEXT NOT NULL DEFAULT 'none'
                CHECK (offer_state IN ('todo', 'offered', 'none', 'n/a'))
        );
        INSERT INTO flex_request_new SELECT * FROM flex_request;
        DROP TABLE flex_request;
        ALTER TABLE flex_request_new RENAME TO flex_request;
        CREATE INDEX flex_request_todo ON flex_request (offer_state);

        CREATE TABLE flex_offer_new (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            request_message_id TEXT,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            currency TEXT NOT NULL,
            options TEXT NOT NULL,
            reserved_w TEXT NOT NULL,
            prognosis_message_id TEXT,
            status TEXT NOT NULL DEFAULT 'sent' CHECK (status IN
                ('sent', 'accepted', 'rejected', 'ordered', 'revoked', 'expired')),
            reason TEXT,
            revocation_message_id TEXT
        );
        INSERT INTO flex_offer_new SELECT * FROM flex_offer;
        DROP TABLE flex_offer;
        ALTER TABLE flex_offer_new RENAME TO flex_offer;
        CREATE INDEX flex_offer_open ON flex_offer (status, congestion_point, period);

        CREATE TABLE flex_order_new (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            offer_message_id TEXT,
            dso_domain TEXT NOT NULL,
            congestion_point TEXT NOT NULL,
            period TEXT NOT NULL,
            order_reference TEXT NOT NULL,
            option_reference TEXT,
            activation_factor REAL NOT NULL,
            price TEXT NOT NULL,
            currency TEXT NOT NULL,
            isps TEXT NOT NULL,
            baseline_message_id TEXT,
            received_at REAL NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
            reason TEXT
        );
        INSERT INTO flex_order_new SELECT * FROM flex_order;
        DROP TABLE flex_order;
        ALTER TABLE flex_order_new RENAME TO flex_order;
        CREATE INDEX flex_order_period ON flex_order (status, congestion_point, period);

        CREATE TABLE flex_settlement_new (
            message_id TEXT PRIMARY KEY,
            dso_domain TEXT NOT NULL,
            period_start TEXT NOT NULL,
            period_end TEXT NOT NULL,
            received_at REAL NOT NULL,
            result TEXT NOT NULL CHECK (result IN ('Accepted', 'Rejected')),
            items TEXT NOT NULL
        );
        INSERT INTO flex_settlement_new SELECT * FROM flex_settlement;
        DROP TABLE flex_settlement;
        ALTER TABLE flex_settlement_new RENAME TO flex_settlement;
        """,
    ),
    Migration(
        5,
        "fleet mode: the site's outbox to the centre, its active commands and their outcomes",
        # agent.fleet.store reads and writes these. `seq` orders the outbox (a message queued
        # again keeps its place); `id` is the message's own id, its Nats-Msg-Id.
        """
        CREATE TABLE fleet_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_at REAL NOT NULL,
            published_at REAL
        );
        CREATE INDEX fleet_outbox_pending ON fleet_outbox (published_at, seq);
        CREATE TABLE fleet_commands (
            order_id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL CHECK (seq >= 1),
            valid_until REAL NOT NULL,
            congestion_point TEXT NOT NULL,
            start INTEGER NOT NULL,
            isp_s INTEGER NOT NULL,
            caps TEXT NOT NULL,
            applied_at REAL NOT NULL
        );
        CREATE TABLE fleet_command_log (
            order_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'superseded', 'expired')),
            at REAL NOT NULL,
            UNIQUE (order_id, seq)
        );
        """,
    ),
]


def ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the agent stores UTC instants only")
    return moment.timestamp()


def dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def token_hash(id_token: str | None) -> str | None:
    """A stable pseudonym for an id token (enough to tell sessions of one card apart)."""
    if not id_token:
        return None
    return hashlib.sha256(b"flexbridge-id-token\0" + id_token.encode()).hexdigest()[:16]


# --- chargers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargerRow:
    charger_id: str
    registered_at: datetime
    password_hash: str | None
    safe_power_w: float | None
    vendor: str | None
    model: str | None
    serial_number: str | None
    firmware_version: str | None
    protocol: str | None
    last_seen: datetime | None


def _charger(row: sqlite3.Row) -> ChargerRow:
    return ChargerRow(
        charger_id=row["charger_id"],
        registered_at=dt(row["registered_at"]) or datetime.fromtimestamp(0, UTC),
        password_hash=row["password_hash"],
        safe_power_w=row["safe_power_w"],
        vendor=row["vendor"],
        model=row["model"],
        serial_number=row["serial_number"],
        firmware_version=row["firmware_version"],
        protocol=row["protocol"],
        last_seen=dt(row["last_seen"]),
    )


def find_charger(conn: sqlite3.Connection, charger_id: str) -> ChargerRow | None:
    row = conn.execute("SELECT * FROM charger WHERE charger_id = ?", (charger_id,)).fetchone()
    return None if row is None else _charger(row)


def chargers(conn: sqlite3.Connection) -> list[ChargerRow]:
    return [_charger(r) for r in conn.execute("SELECT * FROM charger ORDER BY charger_id")]


def register_charger(
    conn: sqlite3.Connection,
    charger_id: str,
    password_hash: str | None,
    safe_power_w: float,
    now: datetime,
) -> None:
    """Admit a charger met on first contact (policy "register"), or set its password if a
    boot recorded it before any password was known."""
    conn.execute(
        "INSERT INTO charger (charger_id, registered_at, password_hash, safe_power_w) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (charger_id) DO UPDATE SET "
        "password_hash = COALESCE(password_hash, excluded.password_hash), "
        "safe_power_w = COALESCE(safe_power_w, excluded.safe_power_w)",
        (charger_id, ts(now), password_hash, safe_power_w),
    )


def registered_safe_power_w(conn: sqlite3.Connection, exclude: Iterable[str] = ()) -> float:
    """Safe power already promised to registered chargers (not in `exclude`)."""
    excluded = list(exclude)
    marks = ",".join("?" * len(excluded))
    where = f"WHERE charger_id NOT IN ({marks})" if excluded else ""
    row = conn.execute(f"SELECT COALESCE(SUM(safe_power_w), 0) FROM charger {where}", excluded)
    return float(row.fetchone()[0])


def record_boot(
    conn: sqlite3.Connection,
    charger_id: str,
    now: datetime,
    *,
    vendor: str,
    model: str,
    serial_number: str | None,
    firmware_version: str | None,
    protocol: str,
) -> None:
    conn.execute(
        "INSERT INTO charger (charger_id, registered_at, vendor, model, serial_number, "
        "firmware_version, protocol, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (charger_id) DO UPDATE SET vendor = excluded.vendor, "
        "model = excluded.model, serial_number = excluded.serial_number, "
        "firmware_version = excluded.firmware_version, protocol = excluded.protocol, "
        "last_seen = excluded.last_seen",
        (charger_id, ts(now), vendor, model, serial_number, firmware_version, protocol, ts(now)),
    )


# --- sessions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    charger_id: str
    evse_id: int
    congestion_point: str | None
    started_at: datetime | None
    ended_at: datetime | None
    energy_wh: float | None
    requested_energy_wh: float | None
    departure_at: datetime | None
    soc_percent: float | None
    id_token_hash: str | None
    stop_reason: str | None
    # The charger's register at the transaction's start: session energy after a restart is
    # the register then minus this, as the charger itself counts it.
    meter_start_wh: float | None = None


def _session(row: sqlite3.Row) -> SessionRow:
    return SessionRow(
        session_id=row["session_id"],
        charger_id=row["charger_id"],
        evse_id=row["evse_id"],
        congestion_point=row["congestion_point"],
        started_at=dt(row["started_at"]),
        ended_at=dt(row["ended_at"]),
        energy_wh=row["energy_wh"],
        requested_energy_wh=row["requested_energy_wh"],
        departure_at=dt(row["departure_at"]),
        soc_percent=row["soc_percent"],
        id_token_hash=row["id_token_hash"],
        stop_reason=row["stop_reason"],
        meter_start_wh=row["meter_start_wh"],
    )


def upsert_session(conn: sqlite3.Connection, s: SessionRow, now: datetime) -> None:
    """Insert or update; a field that is None now keeps what an earlier event told."""
    conn.execute(
        """
        INSERT INTO charging_session (session_id, charger_id, evse_id, congestion_point,
            started_at, ended_at, energy_wh, requested_energy_wh, departure_at, soc_percent,
            id_token_hash, stop_reason, updated_at, meter_start_wh)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (session_id) DO UPDATE SET
            congestion_point = COALESCE(excluded.congestion_point, congestion_point),
            started_at = COALESCE(started_at, excluded.started_at),
            ended_at = COALESCE(excluded.ended_at, ended_at),
            energy_wh = COALESCE(excluded.energy_wh, energy_wh),
            requested_energy_wh = COALESCE(excluded.requested_energy_wh, requested_energy_wh),
            departure_at = COALESCE(excluded.departure_at, departure_at),
            soc_percent = COALESCE(excluded.soc_percent, soc_percent),
            id_token_hash = COALESCE(excluded.id_token_hash, id_token_hash),
            stop_reason = COALESCE(excluded.stop_reason, stop_reason),
            updated_at = excluded.updated_at,
            meter_start_wh = COALESCE(meter_start_wh, excluded.meter_start_wh)
        """,
        (
            s.session_id,
            s.charger_id,
            s.evse_id,
            s.congestion_point,
            None if s.started_at is None else ts(s.started_at),
            None if s.ended_at is None else ts(s.ended_at),
            s.energy_wh,
            s.requested_energy_wh,
            None if s.departure_at is None else ts(s.departure_at),
            s.soc_percent,
            s.id_token_hash,
            s.stop_reason,
            ts(now),
            s.meter_start_wh,
        ),
    )


def open_sessions(conn: sqlite3.Connection) -> list[SessionRow]:
    rows = conn.execute("SELECT * FROM charging_session WHERE ended_at IS NULL")
    return [_session(r) for r in rows]


def close_stale_sessions(
    conn: sqlite3.Connection, keep: Iterable[str], now: datetime, reason: str
) -> int:
    """End open sessions the chargers no longer report (they ended while we were down)."""
    keep = set(keep)
    stale = [s.session_id for s in open_sessions(conn) if s.session_id not in keep]
    for session_id in stale:
        conn.execute(
            "UPDATE charging_session SET ended_at = ?, stop_reason = COALESCE(stop_reason, ?), "
            "updated_at = ? WHERE session_id = ?",
            (ts(now), reason, ts(now), session_id),
        )
    return len(stale)


def finished_sessions(
    conn: sqlite3.Connection, since: datetime, until: datetime
) -> list[SessionRow]:
    rows = conn.execute(
        "SELECT * FROM charging_session WHERE ended_at IS NOT NULL AND started_at >= ? "
        "AND started_at < ? ORDER BY started_at",
        (ts(since), ts(until)),
    )
    return [_session(r) for r in rows]


# --- energy per ISP ------------------------------------------------------------------------------


def add_isp_energy(
    conn: sqlite3.Connection,
    entries: Iterable[tuple[str, int, str | None, float]],
) -> None:
    """Add (charger, ISP start epoch s, congestion point, Wh) to the running totals."""
    conn.executemany(
        "INSERT INTO isp_energy (charger_id, isp_start, congestion_point, energy_wh) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (isp_start, charger_id) DO UPDATE SET "
        "energy_wh = energy_wh + excluded.energy_wh",
        list(entries),
    )


def congestion_point_energy(
    conn: sqlite3.Connection, congestion_point: str, start: datetime, end: datetime
) -> dict[int, float]:
    """Wh per ISP start (epoch s) in [start, end) for one congestion point."""
    rows = conn.execute(
        "SELECT isp_start, SUM(energy_wh) FROM isp_energy WHERE congestion_point = ? "
        "AND isp_start >= ? AND isp_start < ? GROUP BY isp_start",
        (congestion_point, int(ts(start)), int(ts(end))),
    )
    return {int(r[0]): float(r[1]) for r in rows}


def charger_energy(
    conn: sqlite3.Connection, charger_id: str, start: datetime, end: datetime
) -> dict[int, float]:
    rows = conn.execute(
        "SELECT isp_start, energy_wh FROM isp_energy WHERE charger_id = ? "
        "AND isp_start >= ? AND isp_start < ?",
        (charger_id, int(ts(start)), int(ts(end))),
    )
    return {int(r[0]): float(r[1]) for r in rows}


def save_meter_baselines(
    conn: sqlite3.Connection, baselines: Iterable[tuple[str, datetime, float]]
) -> None:
    conn.executemany(
        "INSERT INTO meter_baseline (meter, at, register_wh) VALUES (?, ?, ?) "
        "ON CONFLICT (meter) DO UPDATE SET at = excluded.at, register_wh = excluded.register_wh",
        [(m, ts(at), wh) for m, at, wh in baselines],
    )


def meter_baselines(conn: sqlite3.Connection) -> list[tuple[str, datetime, float]]:
    rows = conn.execute("SELECT meter, at, register_wh FROM meter_baseline")
    return [(r[0], datetime.fromtimestamp(r[1], UTC), float(r[2])) for r in rows]


def record_alive(conn: sqlite3.Connection, started_at: datetime, now: datetime) -> None:
    conn.execute(
        "INSERT INTO agent_uptime (started_at, alive_until) VALUES (?, ?) "
        "ON CONFLICT (started_at) DO UPDATE SET alive_until = excluded.alive_until",
        (ts(started_at), ts(now)),
    )


def uptime(
    conn: sqlite3.Connection, since: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    rows = conn.execute(
        "SELECT started_at, alive_until FROM agent_uptime WHERE alive_until >= ? "
        "AND started_at < ? ORDER BY started_at",
        (ts(since), ts(until)),
    )
    return [(datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC)) for a, b in rows]


# --- meta ----------------------------------------------------------------------------------------


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM agent_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO agent_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def period_text(period: date) -> str:
    return period.isoformat()
