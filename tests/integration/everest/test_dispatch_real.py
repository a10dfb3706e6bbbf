"""Dispatch against real EVerest libocpp stations (OCPP 1.6 and 2.0.1) and a real
`flexbridge run`: plan boundaries never pause an EV, a refused profile is retried with back-off
by one stream, and the operator's dispatch endpoint answers rounds that push."""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.runtime.configfile import load_config
from agent.storage import store
from agent.storage.db import apply_migrations, connect
from tests.support.everest import V16, V201, AgentSite, Station, stack_level
from uftp import store as uftp_store

pytestmark = pytest.mark.integration

TOKEN = "operator-token-for-everest-tests-0123"
SAFE_PER_CHARGER_W = 6_900  # 10 A on three phases: below the 16 A the chargers can take


def post_dispatch(site: AgentSite) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{site.http_port}/api/dispatch",
        method="POST",
        data=b"",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def seed_short_sessions(site: AgentSite, charger_ids: list[str]) -> None:
    """A history in which every EV took 1 kWh: the forecaster then expects a new EV to need
    about that much, so its allocation is done within the first ISP and the plan has no
    energy for it from the next ISP boundary on."""
    config = load_config(site.config_file, {})
    conn = connect(config.storage.database_path)
    try:
        apply_migrations(conn, "agent_schema", store.SCHEMA)
        uftp_store.migrate(conn)
        now = datetime.now(UTC)
        conn.execute("BEGIN")
        store.record_alive(conn, now - timedelta(days=14), now - timedelta(minutes=5))
        for day in range(1, 14):
            for n, cid in enumerate(charger_ids):
                arrive = now - timedelta(days=day, hours=n + 1)
                leave = arrive + timedelta(hours=1)
                store.upsert_session(
                    conn,
                    store.SessionRow(
                        session_id=f"{cid}/seed-{day}",
                        charger_id=cid,
                        evse_id=1,
                        congestion_point="ean.871685900012636543",
                        started_at=arrive,
                        ended_at=leave,
                        energy_wh=1_000.0,
                        requested_energy_wh=None,
                        departure_at=None,
                        soc_percent=None,
                        id_token_hash=None,
                        stop_reason="EVDisconnected",
                    ),
                    leave,
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


def start_transaction(station: Station, power_w: int) -> None:
    if station.version == V16:
        station.send("start_transaction", f"power {power_w}")
    else:
        station.send("start", f"power {power_w}")


def limits_a(schedule: Any) -> list[float]:
    return [float(p["limit"]) for p in (schedule or {}).get("chargingSchedulePeriod") or ()]


@pytest.mark.parametrize("version", [V16, V201])
async def test_an_ev_is_not_paused_at_the_plan_boundary_nor_after_the_agent_died(
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
    version: str,
) -> None:
    """The plan has energy for the EV in the current ISP only. The station's own composite
    schedule must still never reach 0 A while the EV is plugged in, and the dynamic profile
    must end on a level the safe layer allows, also once the agent is killed."""
    ids = ["EV-DISPATCH-1", "EV-DISPATCH-2"]
    site = site_factory(ids, env={"FLEXBRIDGE_SITE__SAFE_LIMIT_W": str(2 * SAFE_PER_CHARGER_W)})
    seed_short_sessions(site, ids)
    site.start()
    (station,) = stations(site, ids[:1], version)
    await station.start()
    await site.eventually(lambda: site.charger(ids[0])["online"], what="online")
    since = station.mark()
    start_transaction(station, 11_000)
    # The dispatch round the session start causes pushes the EV's own schedule.
    await station.wait_for_frame(
        lambda f: f.action == "SetChargingProfile" and not f.sent and (stack_level(f) or 0) > 0,
        since=since,
        what="a dynamic profile after the session start",
    )
    await site.eventually(lambda: site.charger(ids[0])["session_active"], what="session")
    await asyncio.sleep(3)
    safe_a = SAFE_PER_CHARGER_W / 690
    composite = await station.composite(1800)
    limits = limits_a(composite[1])
    assert limits, composite
    assert min(limits) > 0, f"the EV is paused by the plan: {composite[1]}"
    assert limits[-1] <= safe_a + 1e-6, composite[1]

    site.kill9()  # nobody refreshes: what the charger holds now is what rules
    await asyncio.sleep(1)
    composite = await station.composite(1800)
    limits = limits_a(composite[1])
    assert min(limits) > 0, f"a dead agent leaves the EV paused: {composite[1]}"
    assert limits[-1] <= safe_a + 1e-6, composite[1]


def purpose_of(frame: Any) -> str | None:
    profile = frame.payload.get("csChargingProfiles") or frame.payload.get("chargingProfile")
    return None if profile is None else str(profile.get("chargingProfilePurpose"))


async def test_a_refused_purpose_is_retried_with_back_off_by_one_stream(
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """A 1.6 charge point that takes no charging profile purpose at all: while its EV
    charges, the agent asks again after 5, 10, 20 s..., never every few seconds, and never
    twice at once for the one EVSE. (libocpp's 2.0.1 station cannot be made to refuse a
    purpose; the simulator shows that case.)"""
    ids = ["EV-REFUSE-1"]
    site = site_factory(ids)
    site.start()
    (station,) = stations(
        site, ids, V16, settings=["Internal.SupportedChargingProfilePurposeTypes=[]"]
    )
    await station.start()
    await site.eventually(lambda: site.charger(ids[0])["online"], what="online")
    since = station.mark()
    start_transaction(station, 7_000)
    await site.eventually(lambda: site.charger(ids[0])["session_active"], what="session")
    await asyncio.sleep(45)
    dynamic = [
        f
        for f in station.calls("SetChargingProfile", sent=False, since=since)
        if (stack_level(f) or 0) > 0
    ]
    answers = [station.answer_to(f) for f in dynamic]
    assert dynamic, "the agent tried a dynamic profile"
    assert all(a is not None and a.payload.get("status") != "Accepted" for a in answers)
    # Each attempt ends with the TxProfile on the transaction (the purposes refused before
    # it are remembered); attempts at about 0, 5, 15 and 35 s: at most four or five in 45 s
    # (every 5 s it would be ten, more with the dispatch rounds on top).
    attempts = [f for f in dynamic if purpose_of(f) == "TxProfile"]
    assert 2 <= len(attempts) <= 5, [f.payload for f in attempts]
    # One stream: an attempt is answered before the next one starts.
    for earlier, later in itertools.pairwise(dynamic):
        answer = station.answer_to(earlier)
        assert answer is not None
        assert answer.offset < later.offset
    assert site.charger(ids[0])["controllable"] is False


async def test_dispatch_endpoint_answers_rounds_that_push(
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """`POST /api/dispatch` with a 1.6 and a 2.0.1 station online answers with what its round
    pushed, keyed by charger. Both stations allow stack level 0 only: they hold the safe
    layer, but a dynamic limit needs a level above it, so every round asks again for theirs
    (the bridge answers from its back-off) and every round pushes something."""
    ids = ["EV-API-16", "EV-API-201"]
    site = site_factory(ids, env={"FLEXBRIDGE_HTTP__TOKEN": TOKEN})
    site.start()
    sixteen = stations(site, ids[:1], V16, settings=["SmartCharging.ChargeProfileMaxStackLevel=0"])
    two = stations(site, ids[1:], V201, settings=["SmartChargingCtrlr.ProfileStackLevel=0"])
    await asyncio.gather(*(s.start() for s in sixteen + two))
    await site.eventually(
        lambda: all(site.charger(i)["limit_source"] == "safe" for i in ids),
        what="both online on their safe layer",
    )
    for station in sixteen + two:  # the last purpose to try, a TxProfile, needs a transaction
        start_transaction(station, 7_000)
    await site.eventually(
        lambda: all(site.charger(i)["session_active"] for i in ids), what="both in a session"
    )
    for _ in range(3):
        status, body = await asyncio.to_thread(post_dispatch, site)
        assert status == 200, body
        assert body["chargers"] == 2
        assert body["pushed"] == dict.fromkeys(ids, "rejected"), body
