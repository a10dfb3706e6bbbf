"""What one site flush costs the SD card: the WAL frames (pages) a flush of 20 chargers' energy
writes into a store with four weeks of history, and the migration that made it small."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from agent.storage import store
from agent.storage.db import apply_migrations, connect

CHARGERS = [f"CP-{i:02d}" for i in range(20)]
ISP = 900
DAY = 96


def seeded(path: Path, migrations: list[store.Migration]) -> sqlite3.Connection:
    conn = connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # keep every frame in the WAL to count
    apply_migrations(conn, "agent_schema", migrations)
    conn.execute("BEGIN")
    store.add_isp_energy(
        conn,
        [
            (cid, isp * ISP, "ean.1", 100.0)
            for isp in range(28 * DAY)
            for cid in CHARGERS
            if isp % DAY in range(32, 70)
        ],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return conn


def frames_of_one_flush(conn: sqlite3.Connection, path: Path) -> int:
    now_isp = (28 * DAY + 40) * ISP
    for _ in range(2):  # the first flush of an ISP inserts its rows; count the next one
        wal = Path(f"{path}-wal")
        before = wal.stat().st_size if wal.exists() else 0
        conn.execute("BEGIN")
        store.add_isp_energy(conn, [(cid, now_isp, "ean.1", 12.5) for cid in CHARGERS])
        conn.execute("COMMIT")
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return (wal.stat().st_size - max(before, 32)) // (page + 24)


def test_a_flush_of_twenty_chargers_writes_a_few_pages(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = seeded(path, store.SCHEMA)
    try:
        frames = frames_of_one_flush(conn, path)
    finally:
        conn.close()
    # Keyed by charger first, the same flush wrote one leaf page per charger (20+).
    assert frames <= 4, frames


def test_the_migration_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = seeded(path, store.SCHEMA[:1])
    try:
        before = conn.execute(
            "SELECT COUNT(*), SUM(energy_wh), MIN(isp_start), MAX(isp_start) FROM isp_energy"
        ).fetchone()
        apply_migrations(conn, "agent_schema", store.SCHEMA)
        after = conn.execute(
            "SELECT COUNT(*), SUM(energy_wh), MIN(isp_start), MAX(isp_start) FROM isp_energy"
        ).fetchone()
        assert tuple(after) == tuple(before)
        start, end = (datetime.fromtimestamp(n * ISP, UTC) for n in (32, 34))
        energy = store.charger_energy(conn, "CP-03", start, end)
        assert energy == {32 * ISP: 100.0, 33 * ISP: 100.0}
    finally:
        conn.close()
