"""The site model: live state from bridge events, energy per ISP, sessions in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.runtime.clock import Clock
from agent.runtime.config import Config
from agent.site.model import Site
from agent.storage import store
from agent.storage.db import Database
from agent.storage.store import SCHEMA
from ocpp_bridge import (
    BootInfo,
    ChargerConnected,
    ChargerDisconnected,
    ChargerSeen,
    ConnectorStatus,
    EvseStatusChanged,
    MeterSample,
    ProtocolVersion,
    SessionEnded,
    SessionInfo,
    SessionStarted,
)

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
CP = "ean.871685900012636543"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.moment = now

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(3600)  # the flush loop waits; tests flush by hand


def boot(cid: str, at: datetime = T0) -> ChargerConnected:
    return ChargerConnected(cid, at, BootInfo("Lab", "Sim", "SN1", "1.0", ProtocolVersion.OCPP16))


def session(cid: str, tx: str, **kw: object) -> SessionInfo:
    return SessionInfo(
        session_id=f"{cid}/{tx}",
        charger_id=cid,
        evse_id=1,
        transaction_id=tx,
        id_token="04A1B2C3",
        started_at=T0,
        **kw,  # type: ignore[arg-type]
    )


def meter(cid: str, at: datetime, wh: float, w: float, evse: int = 1) -> MeterSample:
    return MeterSample(cid, evse, at, f"{cid}/1" if evse else None, w, energy_wh=wh)


async def test_live_state_follows_events(config: Config, db: Database) -> None:
    clock: Clock = FixedClock(T0)
    site = Site(config, db, clock)
    site.apply(boot("DEMO-001"))
    site.apply(EvseStatusChanged("DEMO-001", 1, 1, ConnectorStatus.CHARGING, T0))
    site.apply(SessionStarted(session("DEMO-001", "1"), T0))
    site.apply(meter("DEMO-001", T0, 1000, 7000))
    assert site.chargers["DEMO-001"].online
    assert site.power_w() == 7000
    assert site.power_w(CP) == 7000
    assert [s.info.session_id for s in site.active_sessions(CP)] == ["DEMO-001/1"]
    site.apply(ChargerDisconnected("DEMO-001", T0, "closed"))
    assert site.power_w() == 0


async def test_energy_per_isp_and_sessions_reach_the_store(config: Config, db: Database) -> None:
    site = Site(config, db, FixedClock(T0))
    site.apply(boot("DEMO-001"))
    site.apply(SessionStarted(session("DEMO-001", "7", requested_energy_wh=20_000), T0))
    site.apply(meter("DEMO-001", T0 + timedelta(minutes=10), 10_000, 6000))
    site.apply(meter("DEMO-001", T0 + timedelta(minutes=20), 11_000, 6000))
    await site.flush()
    energy = await db.read(
        lambda c: store.congestion_point_energy(c, CP, T0, T0 + timedelta(hours=1))
    )
    start = int(T0.timestamp())
    assert energy == {start: pytest.approx(500.0), start + 900: pytest.approx(500.0)}
    rows = await db.read(store.open_sessions)
    assert [(r.session_id, r.requested_energy_wh) for r in rows] == [("DEMO-001/7", 20_000)]
    assert rows[0].id_token_hash is not None
    assert "04A1" not in rows[0].id_token_hash
    chargers = await db.read(store.chargers)
    assert [(c.charger_id, c.vendor) for c in chargers] == [("DEMO-001", "Lab")]

    ended = session("DEMO-001", "7", ended_at=T0 + timedelta(minutes=30), energy_wh=1000.0)
    site.apply(SessionEnded(ended, T0 + timedelta(minutes=30)))
    await site.flush()
    assert await db.read(store.open_sessions) == []
    assert site.active_sessions() == []


async def test_main_meter_is_not_counted_twice(config: Config, db: Database) -> None:
    site = Site(config, db, FixedClock(T0))
    for minutes, wh in ((0, 0), (15, 1000)):
        at = T0 + timedelta(minutes=minutes)
        site.apply(meter("DEMO-002", at, 50_000 + wh, 4000, evse=0))
        site.apply(meter("DEMO-002", at, 10_000 + wh, 4000, evse=1))
    await site.flush()
    energy = await db.read(lambda c: store.charger_energy(c, "DEMO-002", T0, T0 + timedelta(1)))
    assert sum(energy.values()) == pytest.approx(1000.0)


async def test_restart_keeps_the_register_baseline(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite"
    db = Database(path, SCHEMA)
    await db.start()
    site = Site(config, db, FixedClock(T0))
    await site.start()
    site.apply(SessionStarted(session("DEMO-003", "1"), T0))
    site.apply(meter("DEMO-003", T0, 5_000, 7000))
    await site.stop()
    await db.stop()

    db = Database(path, SCHEMA)  # a new process: nothing in memory
    await db.start()
    site = Site(config, db, FixedClock(T0 + timedelta(minutes=30)))
    await site.start()
    assert [s.info.session_id for s in site.active_sessions()] == ["DEMO-003/1"]
    site.apply(meter("DEMO-003", T0 + timedelta(minutes=30), 8_000, 7000))
    await site.stop()
    energy = await db.read(lambda c: store.charger_energy(c, "DEMO-003", T0, T0 + timedelta(1)))
    assert sum(energy.values()) == pytest.approx(3_000.0)  # counted across the restart
    assert len(energy) == 2
    await db.stop()


async def test_failed_flush_keeps_the_data(config: Config, db: Database) -> None:
    site = Site(config, db, FixedClock(T0))
    site.apply(meter("DEMO-004", T0, 0, 1000))
    site.apply(meter("DEMO-004", T0 + timedelta(minutes=5), 100, 1000))
    real = db.transaction

    async def broken(fn: object) -> object:
        raise OSError("disk full")

    db.transaction = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(OSError, match="disk full"):
        await site.flush()
    db.transaction = real  # type: ignore[method-assign]
    await site.flush()
    energy = await db.read(lambda c: store.charger_energy(c, "DEMO-004", T0, T0 + timedelta(1)))
    assert sum(energy.values()) == pytest.approx(100.0)


async def test_sessions_resume_with_their_start_register(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "resume.sqlite"
    db = Database(path, SCHEMA)
    await db.start()
    site = Site(config, db, FixedClock(T0))
    await site.start()
    site.apply(SessionStarted(session("DEMO-005", "3", meter_start_wh=1234.0), T0))
    await site.stop()
    await db.stop()

    db = Database(path, SCHEMA)
    await db.start()
    site = Site(config, db, FixedClock(T0 + timedelta(minutes=5)))
    handed: list[SessionInfo] = []
    site.resume_into = handed.extend
    await site.start()
    assert [(s.session_id, s.meter_start_wh) for s in handed] == [("DEMO-005/3", 1234.0)]
    await site.stop()
    await db.stop()


async def test_last_seen_follows_any_sign_of_life(config: Config, db: Database) -> None:
    site = Site(config, db, FixedClock(T0))
    site.apply(boot("DEMO-006"))
    later = T0 + timedelta(minutes=3)
    site.apply(ChargerSeen("DEMO-006", later))
    assert site.chargers["DEMO-006"].last_seen == later
    site.apply(EvseStatusChanged("DEMO-006", 1, 1, ConnectorStatus.OCCUPIED, later + timedelta(1)))
    assert site.chargers["DEMO-006"].last_seen == later + timedelta(1)
    site.apply(ChargerSeen("DEMO-006", later))  # never backwards
    assert site.chargers["DEMO-006"].last_seen == later + timedelta(1)


async def test_the_store_keeps_no_session_the_live_model_does_not_have(
    config: Config, db: Database
) -> None:
    site = Site(config, db, FixedClock(T0))
    site.apply(SessionStarted(session("DEMO-007", "1"), T0))
    await site.flush()

    def orphan(conn: object) -> None:
        store.upsert_session(
            conn,  # type: ignore[arg-type]
            store.SessionRow(
                "DEMO-007/0", "DEMO-007", 1, CP, T0, None, 10.0, None, None, None, None, None
            ),
            T0,
        )

    await db.transaction(orphan)
    await site.flush()
    rows = await db.read(store.open_sessions)
    assert [r.session_id for r in rows] == ["DEMO-007/1"]


async def test_a_late_end_of_an_older_session_leaves_the_new_one(
    config: Config, db: Database
) -> None:
    site = Site(config, db, FixedClock(T0))
    site.apply(SessionStarted(session("DEMO-008", "2"), T0))
    site.apply(meter("DEMO-008", T0, 100, 7000))
    late = session("DEMO-008", "1", ended_at=T0, energy_wh=500.0, stop_reason="Local")
    site.apply(SessionEnded(late, T0))
    assert site.chargers["DEMO-008"].evses[1].session_id == "DEMO-008/2"
    assert [s.info.session_id for s in site.active_sessions()] == ["DEMO-008/2"]
