"""The agent's forecast structure on a real SQLite store: chosen on the first day-ahead
forecast, stored in its own table, read back after a restart, re-chosen after a week and
after a regime change, and shown by the status API's info."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.site.forecasting import SiteForecaster, migrate
from agent.storage import store
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from tests.support.agent_env import CP, make_env
from uftp import store as uftp_store

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def seed(db_path: Path, zone: ZoneInfo, first: date, days: int, scale: float = 1.0) -> None:
    """Workplace-like energy per ISP on weekdays, little at weekends, every ISP covered by
    the agent's uptime (so quiet ISPs are zeros, not gaps)."""
    rng = np.random.default_rng(first.toordinal())
    conn = sqlite3.connect(db_path)
    start = datetime.combine(first, time(0), zone).astimezone(UTC)
    end = datetime.combine(first + timedelta(days=days), time(0), zone).astimezone(UTC)
    conn.execute("BEGIN")
    store.record_alive(conn, start, end)
    rows = []
    for d in range(days):
        day = first + timedelta(days=d)
        cars = rng.poisson((10 if day.weekday() < 5 else 2) * scale)
        for car in range(int(cars)):
            arrive = datetime.combine(day, time(7), zone).astimezone(UTC)
            arrive += timedelta(minutes=15 * int(rng.integers(0, 16)))
            for k in range(int(rng.integers(4, 16))):
                isp = int((arrive + timedelta(minutes=15 * k)).timestamp())
                rows.append((f"C{car}", isp, CP, 11_000 / 4))
    store.add_isp_energy(conn, rows)
    conn.execute("COMMIT")
    conn.close()


async def open_db(path: Path) -> Database:
    db = Database(path, SCHEMA, extra_migrations=[uftp_store.migrate, migrate])
    await db.start()
    return db


async def test_structure_is_chosen_stored_reloaded_and_reselected(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    config = env.config
    zone = ZoneInfo(config.site.timezone)
    today = date(2024, 5, 15)
    db = await open_db(config.storage.database_path)
    seed(config.storage.database_path, zone, today - timedelta(days=50), 50)
    now = datetime.combine(today, time(9), zone).astimezone(UTC)
    clock = Clock(now)
    tomorrow = datetime.combine(today + timedelta(days=1), time(0), zone).astimezone(UTC)
    targets = [tomorrow + timedelta(minutes=15 * i) for i in range(96)]
    forecaster = SiteForecaster(config, db, clock)
    bands = (await forecaster.forecast([CP], targets))[CP]
    assert len(bands.p50) == 96
    assert all(a <= b <= c for a, b, c in zip(bands.p10, bands.p50, bands.p90, strict=True))
    assert max(bands.p50) > 1000  # a weekday: cars in the morning
    view = forecaster.structure_views()[CP]
    assert view["reason"] == "first"
    assert view["heldout_nmae_pct"] <= min(view["baseline_nmae_pct"].values())  # type: ignore[attr-defined]
    rows = await db.read(lambda c: c.execute("SELECT * FROM forecast_structure").fetchall())
    assert len(rows) == 1
    await db.stop()

    # A restart reads the choice back instead of choosing again.
    db = await open_db(config.storage.database_path)
    later = SiteForecaster(config, db, Clock(now + timedelta(hours=1)))
    again = (await later.forecast([CP], targets))[CP]
    assert again.p50 == bands.p50
    assert later.structure_views()[CP]["selected_at"] == view["selected_at"]

    # A day on, with one more whole day in, it is chosen again.
    day = SiteForecaster(config, db, Clock(now + timedelta(days=1)))
    await day.forecast([CP], [t + timedelta(days=1) for t in targets])
    assert day.structure_views()[CP]["reason"] == "daily"
    assert day.structure_views()[CP]["selected_at"] != view["selected_at"]
    await db.stop()


async def test_a_collapse_in_demand_is_a_regime_change(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    config = env.config
    zone = ZoneInfo(config.site.timezone)
    today = date(2024, 5, 15)
    db = await open_db(config.storage.database_path)
    seed(config.storage.database_path, zone, today - timedelta(days=50), 46)
    seed(config.storage.database_path, zone, today - timedelta(days=4), 4, scale=0.05)
    first = SiteForecaster(
        config,
        db,
        Clock(datetime.combine(today - timedelta(days=4), time(9), zone).astimezone(UTC)),
    )
    day = datetime.combine(today - timedelta(days=3), time(0), zone).astimezone(UTC)
    await first.forecast([CP], [day + timedelta(minutes=15 * i) for i in range(96)])
    assert first.structure_views()[CP]["reason"] == "first"
    now = datetime.combine(today, time(9), zone).astimezone(UTC)
    after = SiteForecaster(config, db, Clock(now))
    tomorrow = datetime.combine(today + timedelta(days=1), time(0), zone).astimezone(UTC)
    await after.forecast([CP], [tomorrow + timedelta(minutes=15 * i) for i in range(96)])
    assert after.structure_views()[CP]["reason"] == "regime change"
    await db.stop()
