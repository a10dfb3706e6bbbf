"""The demo's embedded defaults: the site's configuration, its history and the simulated DSO.

Shared by `flexbridge demo` (agent.demo.scenario), the end-to-end tests and the benchmarks, so
they all run the agent on the same site. The simulation is imported where it is used: loading
this module for a configuration does not load numpy and the station simulator.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from agent.runtime.config import Config
from agent.storage import store
from agent.storage.db import apply_migrations, connect
from agent.storage.store import SCHEMA
from uftp import keys

DEMO_AGR_DOMAIN = "agr.flexbridge-demo.org"
DEMO_DSO_DOMAIN = "dso.flexbridge-demo.org"
DEMO_CONGESTION_POINT = "ean.871685900012636543"
DEMO_TIMEZONE = "Europe/Amsterdam"
DEMO_CHARGERS = 20
HISTORY_DAYS = 28
CAPACITY_W = 150_000
SAFE_LIMIT_W = 100_000


def fleet(meter_interval_s: float = 120.0) -> list[Any]:
    """The demo's stations (`agent.demo.simulation.default_fleet`)."""
    from agent.demo.simulation import default_fleet

    return default_fleet(DEMO_CHARGERS, meter_interval_s=meter_interval_s)


def demo_config(
    state_dir: Path,
    ocpp_port: int = 0,
    uftp_port: int = 0,
    dso_port: int = 0,
    dso_key: SigningKey | None = None,
    http_port: int = 0,
) -> Config:
    """The demo site: 20 stations behind a 150 kW connection, one (simulated) DSO peer."""
    from agent.demo.simulation import DEFAULT_PASSWORD, charger_config

    state_dir.mkdir(parents=True, exist_ok=True)
    agr_key_file = state_dir / "agr-signing.key"
    if not agr_key_file.exists():
        keys.write_signing_key(agr_key_file, keys.generate_signing_key())
    dso_key = dso_key or keys.generate_signing_key()
    return Config.model_validate(
        {
            "site": {
                "id": "demo",
                "name": "flexbridge demo site",
                "timezone": DEMO_TIMEZONE,
                "connection_capacity_w": CAPACITY_W,
                "safe_limit_w": SAFE_LIMIT_W,
            },
            "ocpp": {
                "host": "127.0.0.1",
                "port": ocpp_port or 9000,
                "security_profile": 1,
                "unknown_chargers": "reject",
                # Hours of simulated time pass in seconds; refreshes keep up on the same clock.
                "dynamic_profile_validity_s": 900,
                "chargers": charger_config(fleet(), DEFAULT_PASSWORD),
            },
            "uftp": {
                "domain": DEMO_AGR_DOMAIN,
                "signing_key_file": str(agr_key_file),
                "host": "127.0.0.1",
                "port": uftp_port or 8443,
                "market_timezone": DEMO_TIMEZONE,
                "peers": [
                    {
                        "domain": DEMO_DSO_DOMAIN,
                        "role": "DSO",
                        "public_keys": [keys.public_key_b64(dso_key)],
                        "endpoint": f"http://127.0.0.1:{dso_port or 8444}"
                        "/shapeshifter/api/v3/message",
                    }
                ],
            },
            "congestion_points": [
                {"entity_address": DEMO_CONGESTION_POINT, "dso_domain": DEMO_DSO_DOMAIN}
            ],
            "storage": {"state_directory": str(state_dir)},
            # Simulated time runs fast and skips the night: no wall clock to guard.
            "clock": {"guard": False},
            "trading": {"offer_validity_min": 90, "offer_lead_time_min": 15},
            "http": {"host": "127.0.0.1", "port": http_port or 8080},
        }
    )


def simulated_dso(
    domain: str,
    key: SigningKey,
    agr_domain: str,
    agr_key: SigningKey,
    agr_port: int,
    port: int,
    database: Path,
    *,
    time_zone: str = DEMO_TIMEZONE,
    clock: Callable[[], datetime] | None = None,
) -> Any:
    """`uftp`'s simulated DSO, peered with one AGR on loopback (the demo, benchmarks)."""
    from uftp.dso import DsoParticipant
    from uftp.models import Role
    from uftp.settings import MarketSettings, ParticipantSettings, PeerSettings

    settings = ParticipantSettings(
        domain=domain,
        role=Role.DSO,
        signing_key=key,
        peers=(
            PeerSettings(
                agr_domain,
                Role.AGR,
                (keys.public_key_b64(agr_key),),
                f"http://127.0.0.1:{agr_port}/shapeshifter/api/v3/message",
            ),
        ),
        market=MarketSettings(time_zone, 15),
        port=port,
    )
    if clock is None:
        return DsoParticipant(settings, database)
    return DsoParticipant(settings, database, clock=clock)


def demo_state_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="flexbridge-demo-"))


def numba_cache_dir() -> Path:
    """Kernels compiled once per machine for the demo, not once per (temporary) run."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "flexbridge" / "numba-cache"


# --- the site's history -----------------------------------------------------------------------


def seed_history(
    config: Config,
    generator: Any,
    today: date,
    days: int = HISTORY_DAYS,
    congestion_point: str = DEMO_CONGESTION_POINT,
) -> int:
    """Write `days` of uncontrolled charging before `today` into the store: finished sessions
    (for calibration and offer scenarios), energy per ISP per charger and the uptime that says
    those ISPs were measured. Returns the number of sessions."""
    from agent.demo.simulation import drawn_power_w

    first = today - timedelta(days=days)
    plan = generator.plan(first, days)
    # A fleet site has no [uftp]: its grid is the fleet's 15-minute ISP.
    isp_min = 15 if config.fleet is not None else config.uftp.isp_duration_min
    history = generator.power_history(first, days, isp_min)
    isp_s = isp_min * 60
    start = history.start
    end = start + timedelta(seconds=isp_s * history.values.shape[1])
    cp = congestion_point
    specs = {spec.charger_id: spec for spec in generator.fleet}
    conn = connect(config.storage.database_path)
    try:
        apply_migrations(conn, "agent_schema", SCHEMA)
        from uftp import store as uftp_store

        uftp_store.migrate(conn)
        conn.execute("BEGIN")
        store.record_alive(conn, start, end)
        entries = []
        origin = int(start.timestamp())
        for row, spec in enumerate(generator.fleet):
            for t, power in enumerate(history.values[row]):
                if power > 0:
                    entries.append((spec.charger_id, origin + t * isp_s, cp, power * isp_s / 3600))
        store.add_isp_energy(conn, entries)
        count = 0
        for s in plan.sessions:
            if s.departure > end:
                continue
            delivered = min(
                s.energy_needed_wh,
                drawn_power_w(specs[s.charger_id], s)
                * (s.departure - s.arrival).total_seconds()
                / 3600,
            )
            store.upsert_session(
                conn,
                store.SessionRow(
                    session_id=f"{s.charger_id}/hist-{s.id_token}-{int(s.arrival.timestamp())}",
                    charger_id=s.charger_id,
                    evse_id=s.evse_id,
                    congestion_point=cp,
                    started_at=s.arrival,
                    ended_at=s.departure,
                    energy_wh=delivered,
                    requested_energy_wh=s.requested_energy_wh,
                    departure_at=s.stated_departure,
                    soc_percent=None,
                    id_token_hash=store.token_hash(s.id_token),
                    stop_reason="EVDisconnected",
                ),
                s.departure,
            )
            count += 1
        conn.execute("COMMIT")
    finally:
        conn.close()
    return count
