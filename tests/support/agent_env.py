"""An agent wired to a simulated DSO on loopback, with history in its store.

The history is plain and known: every day the same EVs arrive in the morning and charge as soon
as they can, so forecasts, offers and settlements have something real to work from.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from nacl.signing import SigningKey

from agent.runtime.config import Config
from agent.runtime.service import Component
from agent.site.energy import split_energy
from agent.storage import store, trades
from agent.storage.db import connect
from agent.storage.store import SCHEMA
from tests.support.ports import free_port
from tests.support.uftp import peer, settings, url
from uftp import keys
from uftp import store as uftp_store
from uftp.dso import DsoParticipant, Received
from uftp.models import FlexRequest, FlexRequestResponse, Role
from uftp.settings import RetryPolicy

AGR = "agr.flexbridge-test.org"
DSO = "dso.flexbridge-test.org"
CP = "ean.871685900012636543"
TZ = "Europe/Amsterdam"
CHARGERS = [f"CP-{i:02d}" for i in range(1, 9)]
if TYPE_CHECKING:
    from agent.app import Agent
    from agent.runtime.clock import Clock

FAST_RETRY = RetryPolicy(first_delay_s=0.05, max_delay_s=0.5, request_timeout_s=5.0)


@dataclass
class Env:
    config: Config
    raw: dict[str, Any]  # the configuration as written (write_config makes it a file)
    dso_key: SigningKey
    agr_key: SigningKey
    dso_port: int
    agr_port: int
    dso_db: Path

    def dso(self, **kwargs: Any) -> DsoParticipant:
        agr = peer(AGR, Role.AGR, self.agr_key, self.agr_port)
        return DsoParticipant(
            settings(DSO, Role.DSO, self.dso_key, self.dso_port, [agr], retry=FAST_RETRY),
            self.dso_db,
            **kwargs,
        )


def make_env(tmp_path: Path, **overrides: Any) -> Env:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    key_file = state / "agr.key"
    keys.write_signing_key(key_file, agr_key)
    dso_port, agr_port, ocpp_port = free_port(), free_port(), free_port()
    raw: dict[str, Any] = {
        "site": {"id": "test", "timezone": TZ, "connection_capacity_w": 150_000},
        "ocpp": {
            "host": "127.0.0.1",
            "port": ocpp_port,
            "chargers": [{"id": c, "max_current_a": 16} for c in CHARGERS],
        },
        "uftp": {
            "domain": AGR,
            "signing_key_file": str(key_file),
            "host": "127.0.0.1",
            "port": agr_port,
            "market_timezone": TZ,
            "peers": [
                {
                    "domain": DSO,
                    "role": "DSO",
                    "public_keys": [keys.public_key_b64(dso_key)],
                    "endpoint": url(dso_port),
                }
            ],
        },
        "congestion_points": [{"entity_address": CP, "dso_domain": DSO}],
        "storage": {"state_directory": str(state)},
        "trading": {"offer_lead_time_min": 0, "offer_validity_min": 120},
        # The status page on its own free port: never the default 8080 another run may hold.
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Env(
        Config.model_validate(raw),
        raw,
        dso_key,
        agr_key,
        dso_port,
        agr_port,
        tmp_path / "dso.sqlite",
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(raw: dict[str, Any]) -> str:
    """A configuration dictionary as the TOML file an operator would write: a table per
    section, arrays of tables for lists of tables ([[ocpp.chargers]], [[uftp.peers]])."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any], array: bool) -> None:
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        nested: list[tuple[str, dict[str, Any], bool]] = []
        for key, value in body.items():
            if isinstance(value, dict):
                nested.append((f"{name}.{key}", value, False))
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                nested.extend((f"{name}.{key}", item, True) for item in value)
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for sub, item, sub_array in nested:
            table(sub, item, sub_array)

    for name, body in raw.items():
        for item in body if isinstance(body, list) else [body]:
            table(name, item, isinstance(body, list))
    return "\n".join(lines)


def write_config(env: Env, path: Path) -> Path:
    """The environment's configuration as a TOML file, for `flexbridge run --config`."""
    path.write_text(toml_text(env.raw))
    return path


def seed_history(
    config: Config,
    today: date,
    days: int = 28,
    first_arrival: time = time(8, 0),
    chargers: Sequence[str] = CHARGERS,
) -> None:
    """`days` of finished sessions and measured energy before `today`: each of `chargers`
    gets one EV at `first_arrival` + 15 min x its number, 20 kWh at 11 kW, leaving 8 h later."""
    zone = ZoneInfo(config.site.timezone)
    conn = connect(config.storage.database_path)
    from agent.storage.db import apply_migrations

    apply_migrations(conn, "agent_schema", SCHEMA)
    uftp_store.migrate(conn)
    first = today - timedelta(days=days)
    start = datetime.combine(first, time(0), zone).astimezone(UTC)
    end = datetime.combine(today, time(0), zone).astimezone(UTC)
    conn.execute("BEGIN")
    store.record_alive(conn, start, end)
    entries: list[tuple[str, int, str | None, float]] = []
    for d in range(days):
        day = first + timedelta(days=d)
        for n, charger in enumerate(chargers):
            arrive = datetime.combine(day, first_arrival, zone).astimezone(UTC) + timedelta(
                minutes=15 * n
            )
            leave = arrive + timedelta(hours=8)
            energy, power = 20_000.0, 11_040.0
            store.upsert_session(
                conn,
                store.SessionRow(
                    session_id=f"{charger}/{day.isoformat()}",
                    charger_id=charger,
                    evse_id=1,
                    congestion_point=CP,
                    started_at=arrive,
                    ended_at=leave,
                    energy_wh=energy,
                    requested_energy_wh=None,
                    departure_at=None,
                    soc_percent=None,
                    id_token_hash=None,
                    stop_reason="EVDisconnected",
                ),
                leave,
            )
            charged = arrive + timedelta(hours=energy / power)
            entries += [
                (charger, int(isp.timestamp()), CP, wh)
                for isp, wh in split_energy(arrive, charged, energy, 900)
            ]
    store.add_isp_energy(conn, entries)
    conn.execute("COMMIT")
    conn.close()


def order_row(
    period: date,
    isps: list[list[int]],
    *,
    received_at: datetime,
    reference: str = "ORD-1",
    price: str = "3.0000",
    baseline_message_id: str | None = None,
    message_id: str | None = None,
) -> trades.OrderRow:
    """An accepted FlexOrder of the test DSO for the test congestion point, as stored;
    `isps`: [[start, duration, W]] (negative W: a reduction)."""
    message_id = message_id or str(uuid.uuid4())
    return trades.OrderRow(
        message_id=message_id,
        conversation_id=str(uuid.uuid4()),
        offer_message_id=None,
        dso_domain=DSO,
        congestion_point=CP,
        period=period,
        order_reference=reference,
        option_reference="A",
        activation_factor=1.0,
        price=price,
        currency="EUR",
        isps=isps,
        baseline_message_id=baseline_message_id,
        received_at=received_at,
        status="accepted",
        reason=None,
    )


async def request_answered(
    dso: DsoParticipant, request: FlexRequest, timeout_s: float = 60
) -> FlexRequestResponse:
    """The agent's FlexRequestResponse to `request`, once the DSO has it."""
    answered = await dso.wait_handled(
        lambda o: (
            isinstance(o, Received)
            and isinstance(o.message, FlexRequestResponse)
            and o.message.flex_request_message_id == request.message_id
        ),
        timeout_s,
    )
    assert isinstance(answered, Received)
    assert isinstance(answered.message, FlexRequestResponse)
    return answered.message


def connection(config: Config) -> sqlite3.Connection:
    return connect(config.storage.database_path)


@contextlib.asynccontextmanager
async def running_agent(
    env: Env,
    clock: Clock | None = None,
    prepare: Callable[[Agent], None] | None = None,
) -> AsyncIterator[tuple[Agent, DsoParticipant]]:
    """The simulated DSO and the whole agent started in order; stopped in reverse.
    `prepare` tunes the built agent (test intervals) before anything starts."""
    from agent.app import build_agent

    dso = env.dso()
    await dso.start()
    agent = build_agent(env.config, clock)
    if prepare is not None:
        prepare(agent)
    started: list[Component] = []
    try:
        for component in agent.components:
            await component.start()
            started.append(component)
        yield agent, dso
    finally:
        for component in reversed(started):
            await component.stop()
        await dso.stop()
