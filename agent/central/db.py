"""The aggregator's PostgreSQL store: connections, numbered migrations, the schema.

Every aggregator process (there may be two or more on one database) opens its own connections,
one per task that needs one (the endpoint, the UFTP handler, the outbox sender, the bus
consumer and publisher, the trading loops): a connection is never shared between tasks, so a
transaction is never interleaved with another task's statements, and no pool package is
needed for the handful of them.

Store functions take the caller's connection and never commit; a caller groups a business
step in `async with conn.transaction():`, so a FlexOrder's acceptance, its per-site commands
and its FlexOrderResponse commit together or not at all.

Migrations are numbered and only appended to. Each runs in one transaction with its version
bump, and the whole run holds a session advisory lock, so two processes starting together do
not both migrate: the second waits, then finds the schema current. A database whose schema is
newer than this code is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from agent.runtime.service import StartError

log = logging.getLogger(__name__)

# pg_advisory_lock keys (two int4): the first names flexbridge's aggregator, the second the
# purpose. Transaction-scoped locks per recipient/site use hashtext() as the second key.
LOCK_SPACE = 0x46_4C_58  # "FLX"
MIGRATION_LOCK = 1
OUTBOX_LOCK = 2
COMMAND_PUBLISH_LOCK = 3
REASSIGN_LOCK = 4
PROGNOSIS_LOCK = 5
METERING_LOCK = 6
REVOCATION_LOCK = 7

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


class DatabaseError(StartError):
    """The database cannot be used by this version (unreachable, schema too new)."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer flexbridge than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "portfolio, site inbox, site data, commands, UFTP inbox and outbox, trade records",
        """
CREATE TABLE congestion_point (
    ean                    TEXT PRIMARY KEY,
    dso_domain             TEXT NOT NULL,
    mutex_offers_supported BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE site (
    id               TEXT PRIMARY KEY,
    congestion_point TEXT NOT NULL REFERENCES congestion_point (ean),
    credentials_ref  TEXT,          -- where the site's NATS credentials are kept, never them
    added_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX site_by_congestion_point ON site (congestion_point);

-- Every upstream message a site sent, once: (site, msg_id) is the idempotency key.
CREATE TABLE site_inbox (
    id          BIGSERIAL PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES site (id),
    msg_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('forecast', 'flex', 'metering', 'ack', 'heartbeat')),
    payload     JSONB NOT NULL,
    sent_at     TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (site, msg_id)
);
CREATE TABLE site_forecast (
    inbox_id         BIGINT PRIMARY KEY REFERENCES site_inbox (id),
    site             TEXT NOT NULL REFERENCES site (id),
    congestion_point TEXT NOT NULL,
    made_at          TIMESTAMPTZ NOT NULL,
    start            TIMESTAMPTZ NOT NULL,
    p10_w            DOUBLE PRECISION[] NOT NULL,
    p50_w            DOUBLE PRECISION[] NOT NULL,
    p90_w            DOUBLE PRECISION[] NOT NULL
);
CREATE INDEX site_forecast_latest ON site_forecast (site, made_at DESC, inbox_id DESC);
CREATE TABLE site_flex (
    inbox_id         BIGINT PRIMARY KEY REFERENCES site_inbox (id),
    site             TEXT NOT NULL REFERENCES site (id),
    congestion_point TEXT NOT NULL,
    made_at          TIMESTAMPTZ NOT NULL,
    valid_until      TIMESTAMPTZ NOT NULL,
    start            TIMESTAMPTZ NOT NULL,
    baseline_w       DOUBLE PRECISION[] NOT NULL,
    min_w            DOUBLE PRECISION[] NOT NULL,
    max_w            DOUBLE PRECISION[] NOT NULL
);
CREATE INDEX site_flex_latest ON site_flex (site, made_at DESC, inbox_id DESC);
-- Measured energy per site and ISP; a later message for the same ISP replaces the value.
CREATE TABLE site_metering (
    site             TEXT NOT NULL REFERENCES site (id),
    isp_start        TIMESTAMPTZ NOT NULL,
    congestion_point TEXT NOT NULL,
    energy_wh        DOUBLE PRECISION NOT NULL,
    inbox_id         BIGINT NOT NULL REFERENCES site_inbox (id),
    PRIMARY KEY (site, isp_start)
);
CREATE TABLE site_status (
    site               TEXT PRIMARY KEY REFERENCES site (id),
    last_seen_at       TIMESTAMPTZ NOT NULL,
    last_heartbeat_at  TIMESTAMPTZ,
    chargers_connected INTEGER,
    power_w            DOUBLE PRECISION,
    safe_limit_w       DOUBLE PRECISION
);

-- The command outbox: a site's share of an order; a newer seq replaces an older one whole.
CREATE TABLE command (
    id               BIGSERIAL PRIMARY KEY,            -- publishing order
    order_id         TEXT NOT NULL,
    site             TEXT NOT NULL REFERENCES site (id),
    seq              INTEGER NOT NULL CHECK (seq >= 1),
    congestion_point TEXT NOT NULL,
    start            TIMESTAMPTZ NOT NULL,
    valid_until      TIMESTAMPTZ NOT NULL,
    payload          JSONB NOT NULL,                   -- the Command as published
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at     TIMESTAMPTZ,
    ack_outcome      TEXT CHECK (ack_outcome IN ('applied', 'superseded', 'expired')),
    acked_at         TIMESTAMPTZ,
    UNIQUE (order_id, site, seq)
);
CREATE INDEX command_unpublished ON command (id) WHERE published_at IS NULL;

-- UFTP, as uftp's SQLite tables (docs/uftp.md) but shared by every aggregator process.
CREATE TABLE uftp_inbox (
    id               BIGSERIAL PRIMARY KEY,            -- arrival order
    sender_domain    TEXT NOT NULL,
    sender_role      TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    message_type     TEXT NOT NULL,
    reference_id     TEXT,
    content_sha256   BYTEA NOT NULL,
    sealed           BYTEA NOT NULL,                   -- signature || inner XML, as received
    received_at      TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'processed', 'rejected')),
    rejection_reason TEXT,
    processed_at     TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_error       TEXT,
    UNIQUE (sender_domain, message_id)
);
CREATE INDEX uftp_inbox_pending ON uftp_inbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX uftp_inbox_reference ON uftp_inbox (reference_id);
CREATE TABLE uftp_outbox (
    id               BIGSERIAL PRIMARY KEY,
    message_id       TEXT NOT NULL UNIQUE,
    conversation_id  TEXT NOT NULL,
    message_type     TEXT NOT NULL,
    reference_id     TEXT,
    recipient_domain TEXT NOT NULL,
    recipient_role   TEXT NOT NULL,
    reply_to         BIGINT UNIQUE REFERENCES uftp_inbox (id),  -- at most one answer each
    result           TEXT,
    xml              BYTEA NOT NULL,
    body             BYTEA NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_error       TEXT,
    sent_at          TIMESTAMPTZ
);
CREATE INDEX uftp_outbox_pending ON uftp_outbox (recipient_domain, recipient_role, id)
    WHERE status = 'pending';
CREATE INDEX uftp_outbox_reference ON uftp_outbox (reference_id);

-- The AGR's trade records.
CREATE TABLE prognosis (
    id                 BIGSERIAL PRIMARY KEY,
    congestion_point   TEXT NOT NULL REFERENCES congestion_point (ean),
    period             DATE NOT NULL,
    revision           BIGINT NOT NULL,
    message_id         TEXT NOT NULL UNIQUE,
    power_w            BIGINT[] NOT NULL,
    substituted_sites  TEXT[] NOT NULL,    -- sites whose older forecast stood in somewhere
    missing_sites      TEXT[] NOT NULL,    -- sites without any value somewhere (left out)
    orders             TEXT[] NOT NULL,    -- the accepted FlexOrders this revision includes
    status             TEXT NOT NULL CHECK (status IN ('sent', 'accepted', 'rejected')),
    rejection_reason   TEXT,
    created_at         TIMESTAMPTZ NOT NULL,
    UNIQUE (congestion_point, period, revision)
);
CREATE TABLE flex_request (
    message_id       TEXT PRIMARY KEY,
    inbox_id         BIGINT NOT NULL UNIQUE REFERENCES uftp_inbox (id),
    dso_domain       TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    congestion_point TEXT NOT NULL,
    period           DATE NOT NULL,
    revision         INTEGER NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('todo', 'offered', 'declined', 'rejected')),
    note             TEXT,
    created_at       TIMESTAMPTZ NOT NULL
);
CREATE TABLE flex_offer (
    message_id          TEXT PRIMARY KEY,
    request_message_id  TEXT REFERENCES flex_request (message_id),
    dso_domain          TEXT NOT NULL,
    conversation_id     TEXT NOT NULL,
    congestion_point    TEXT NOT NULL,
    period              DATE NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    -- per option reference: each site's share of the change per ISP start, in W
    shares              JSONB NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('sent', 'accepted', 'rejected', 'ordered')),
    created_at          TIMESTAMPTZ NOT NULL
);
CREATE TABLE flex_order (
    message_id         TEXT PRIMARY KEY,
    inbox_id           BIGINT NOT NULL UNIQUE REFERENCES uftp_inbox (id),
    dso_domain         TEXT NOT NULL,
    offer_message_id   TEXT,
    congestion_point   TEXT NOT NULL,
    period             DATE NOT NULL,
    order_reference    TEXT NOT NULL,
    option_reference   TEXT,
    first_isp_start    TIMESTAMPTZ,
    status             TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
    rejection_reason   TEXT,
    price              NUMERIC,
    currency           TEXT,
    isps               JSONB,         -- [[start index, duration, power W]] as ordered
    -- each site's baseline and share of the change per ISP from first_isp_start
    allocation         JSONB,
    reassigned_at      TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX flex_order_reassign ON flex_order (first_isp_start)
    WHERE status = 'accepted' AND reassigned_at IS NULL;
CREATE TABLE flex_settlement (
    message_id     TEXT PRIMARY KEY,
    inbox_id       BIGINT NOT NULL UNIQUE REFERENCES uftp_inbox (id),
    dso_domain     TEXT NOT NULL,
    period_start   DATE NOT NULL,
    period_end     DATE NOT NULL,
    items          INTEGER NOT NULL,
    disputed       INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE metering_sent (
    congestion_point TEXT NOT NULL REFERENCES congestion_point (ean),
    period           DATE NOT NULL,
    revision         INTEGER NOT NULL,
    message_id       TEXT NOT NULL UNIQUE,
    created_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (congestion_point, period, revision)
);
""",
    ),
    Migration(
        2,
        "offers the aggregator revoked (FlexOfferRevocation)",
        """
ALTER TABLE flex_offer DROP CONSTRAINT flex_offer_status_check;
ALTER TABLE flex_offer ADD CONSTRAINT flex_offer_status_check
    CHECK (status IN ('sent', 'accepted', 'rejected', 'ordered', 'revoked'));
ALTER TABLE flex_offer ADD COLUMN revoked_at TIMESTAMPTZ;
ALTER TABLE flex_offer ADD COLUMN revocation_message_id TEXT UNIQUE;
-- why: the first ISP that fell short, what was offered and what was achievable there
ALTER TABLE flex_offer ADD COLUMN revocation_note TEXT;
""",
    ),
)


async def connect(dsn: str, *, application_name: str = "flexbridge-aggregator") -> Connection:
    """A connection in autocommit mode (transactions are explicit), on UTC: timestamps come back
    UTC-aware. Raises DatabaseError with the server's reason when it cannot connect."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            application_name=application_name,
            options="-c TimeZone=UTC",
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot connect to PostgreSQL: {reason}") from None
    return conn


async def schema_version(conn: Connection) -> int:
    cursor = await conn.execute("SELECT to_regclass('central_schema_version') IS NOT NULL")
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return 0
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM central_schema_version")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the schema to the newest version; returns it. Safe to run from several processes
    at once: the advisory lock makes the others wait, then they find nothing left to do."""
    known = len(migrations)
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise DatabaseError(f"migration {migration.version} is out of order (expected {index})")
    await conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS central_schema_version ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        if current > known:
            raise SchemaTooNew(
                f"the aggregator's schema version {current} is newer than this code knows "
                f"({known}); run the newer flexbridge or restore a backup"
            )
        for migration in migrations[current:]:
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO central_schema_version (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
            log.info(
                "migrated",
                extra={"version": migration.version, "description": migration.description},
            )
        return known
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))


async def try_xact_lock(conn: Connection, purpose: int, key: str | None = None) -> bool:
    """A transaction-scoped advisory lock (released at COMMIT/ROLLBACK), without waiting.
    With `key`, one lock per key (a recipient, a site) within the purpose."""
    if key is None:
        cursor = await conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_SPACE, purpose)
        )
    else:
        cursor = await conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (LOCK_SPACE + purpose, key)
        )
    row = await cursor.fetchone()
    return bool(row and row[0])


class Session:
    """One task's connection: opened on first use, opened again after it broke, and used by
    one transaction at a time (tasks that share a session, such as the endpoint's concurrent
    requests, queue on its lock; a transaction is never interleaved with another's statements).
    """

    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        self._name = name
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction():
                    yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._discard()
                raise

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """The connection without a transaction (for work that manages its own)."""
        async with self._lock:
            conn = await self._connection()
            try:
                yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await self._discard()
                raise

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await connect(self._dsn, application_name=f"flexbridge-{self._name}")
        return self._conn

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        async with self._lock:
            await self._discard()
