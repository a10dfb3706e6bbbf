"""A site of real EVerest libocpp chargers, three OCPP 1.6 and three OCPP 2.0.1 stations, run
against the real `flexbridge run` process: boot, sessions with meter values, profiles read
back with the stations' own composite schedule, kill -9 of the agent and restart.

Each test drives all six stations at once (one agent), so both versions are covered in the
same wall time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.everest import (
    CONNECTED,
    V16,
    V201,
    AgentSite,
    Frame,
    Station,
    abandoned_connects,
    composite_limit_a,
    connect_offsets,
    energy_register_wh,
    per_connect,
    stack_level,
    start_all,
    transaction_id_of,
)
from tests.support.uftp import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

IDS16 = ["EV16-1", "EV16-2", "EV16-3"]
IDS201 = ["EV201-1", "EV201-2", "EV201-3"]
WATTS_PER_AMP = 230.0 * 3  # the configured chargers: three phases at 230 V
START = {V16: "start_transaction", V201: "start"}
STOP = {V16: "stop_transaction", V201: "stop"}
SiteFactory = Callable[..., AgentSite]
StationFactory = Callable[..., list[Station]]


async def bring_up(
    site_factory: SiteFactory, stations: StationFactory, **options: Any
) -> tuple[AgentSite, list[Station]]:
    site = site_factory(IDS16 + IDS201, **options)
    site.start()
    fleet = stations(site, IDS16, V16) + stations(site, IDS201, V201)
    await start_all(fleet)
    await site.eventually(
        lambda: all(site.charger(s.charger_id)["online"] for s in fleet),
        timeout_s=60,
        what="every station online in the API",
    )
    # Past boot on both sides: the agent's set-up reached the station. (libocpp 1.6 drops a
    # CALL that arrives while it still handles the BootNotification answer, and a console
    # command given then is lost with it.)
    await asyncio.gather(
        *(s.wait_for_call("SetChargingProfile", sent=False, timeout_s=60) for s in fleet)
    )
    return site, fleet


async def start_sessions(stations: list[Station], power_w: int) -> None:
    """A transaction on each station drawing `power_w`, once the station reports it."""

    def started(frame: Frame) -> bool:
        return frame.sent and (
            frame.action == "StartTransaction"
            or (frame.action == "TransactionEvent" and frame.payload.get("eventType") == "Started")
        )

    def reacted(frame: Frame) -> bool:
        return frame.sent and frame.action in ("Authorize", "StartTransaction", "TransactionEvent")

    async def one(station: Station) -> None:
        since = station.mark()
        station.send(START[station.version])
        # libocpp 1.6 sometimes loses a console command it reads while it still answers the
        # agent's set-up calls after boot: the station then says nothing at all. Only then is
        # the command given again (a start while a transaction runs is ignored anyway).
        try:
            await station.wait_for_frame(reacted, since=since, timeout_s=15, what="any reaction")
        except AssertionError:
            station.send(START[station.version])
        await station.wait_for_frame(started, since=since, timeout_s=30, what="transaction start")
        station.send(f"power {power_w}")

    await asyncio.gather(*(one(s) for s in stations))


def session_of(site: AgentSite, charger_id: str) -> dict[str, Any] | None:
    sessions = site.charger(charger_id)["sessions"]
    return sessions[0] if sessions else None


def accepted(station: Station, call: Frame) -> bool:
    answer = station.answer_to(call)
    return answer is not None and answer.kind == 3 and answer.payload.get("status") == "Accepted"


def last_register(station: Station) -> tuple[float, Frame] | None:
    """The station's latest energy register sent to the CSMS (Wh), with its frame."""
    latest: tuple[float, Frame] | None = None
    for frame in station.frames():
        if frame.sent and frame.action in ("MeterValues", "TransactionEvent", "StopTransaction"):
            found = energy_register_wh(frame)
            if found is not None:
                latest = (found[0], frame)
    return latest


def start_register(station: Station, transaction_id: str) -> float:
    """The register at the transaction's start, as the station reported it: 1.6 meterStart,
    2.0.1 the Transaction.Begin reading of TransactionEvent Started."""
    if station.version == V16:
        for frame in station.calls("StartTransaction", sent=True):
            return float(frame.payload["meterStart"])
        raise AssertionError("no StartTransaction")
    for frame in station.calls("TransactionEvent", sent=True):
        if frame.payload.get("eventType") == "Started" and transaction_id_of(frame) == (
            transaction_id
        ):
            found = energy_register_wh(frame)
            assert found is not None, "Started without a register"
            return found[0]
    raise AssertionError(f"no TransactionEvent Started for {transaction_id}")


def agent_log(site: AgentSite, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in site.output() if regex.search(line)]


async def test_boot_sessions_meter_values_and_composite(
    site_factory: SiteFactory, stations: StationFactory
) -> None:
    """Boot, a session with meter values on every station, the limit the agent keeps read back
    from the station's own composite schedule, stop; the agent logs all of it at info level
    (boot, session start/stop, disconnect) and `last_seen` follows every message."""
    site, fleet = await bring_up(site_factory, stations, heartbeat_interval_s=6)

    # Profiles: the station's own composite schedule equals the limit the agent reports.
    async def composite_matches(station: Station) -> None:
        async def check() -> bool:
            limit_w = site.charger(station.charger_id)["limit_w"]
            station_a = composite_limit_a((await station.composite(900))[0])
            return (
                limit_w is not None
                and station_a is not None
                and abs(station_a * WATTS_PER_AMP - limit_w) <= 0.5 * WATTS_PER_AMP
            )

        await eventually(check, 60, f"{station.charger_id}: composite matching the agent's limit")

    # Sessions with meter values on every station.
    await start_sessions(fleet, 9000)
    await site.eventually(
        lambda: all(
            (s := session_of(site, st.charger_id)) is not None and (s["energy_wh"] or 0) > 5
            for st in fleet
        ),
        timeout_s=90,
        what="every station in a session with energy counted",
    )
    for station in fleet:
        charger = site.charger(station.charger_id)
        assert charger["evses"], charger
        evse = next(e for e in charger["evses"] if e["evse_id"] == 1)
        assert evse["status"] == "charging", charger
        assert 8000 <= charger["power_w"] <= 10000, charger
    # During a transaction, so 2.0.1 TxDefault/Tx profiles count too (README pitfall 1).
    await asyncio.gather(*(composite_matches(s) for s in fleet))

    for station in fleet:
        station.send(STOP[station.version])
    await site.eventually(
        lambda: all(session_of(site, s.charger_id) is None for s in fleet),
        timeout_s=60,
        what="every session ended",
    )
    await site.eventually(
        lambda: (
            len(site.query("SELECT 1 FROM charging_session WHERE ended_at IS NOT NULL"))
            == len(fleet)
        ),
        timeout_s=30,
        what="every session ended in the store",
    )

    # last_seen: with the stations idle, their Heartbeats (every 6 s) alone move it on.
    await asyncio.sleep(2)
    before = {s.charger_id: site.charger(s.charger_id)["last_seen"] for s in fleet}
    marks = {s.charger_id: s.mark() for s in fleet}
    for station in fleet:
        await station.wait_for_call(
            "Heartbeat", sent=True, since=marks[station.charger_id], timeout_s=30
        )
    await site.eventually(
        lambda: all(site.charger(s.charger_id)["last_seen"] > before[s.charger_id] for s in fleet),
        timeout_s=20,
        what="last_seen moved on by Heartbeats",
    )
    await fleet[-1].stop()
    await site.eventually(
        lambda: not site.charger(fleet[-1].charger_id)["online"], what="station gone"
    )

    # Info level: boot, session start and stop, disconnect.
    for station in fleet:
        cid = re.escape(station.charger_id)
        assert agent_log(site, rf"level=info.*charger {cid} online"), station.charger_id
        assert agent_log(site, rf"level=info.*session {cid}/\S+ started"), station.charger_id
        assert agent_log(site, rf"level=info.*session {cid}/\S+ ended"), station.charger_id
    assert agent_log(site, rf"level=info.*charger {re.escape(fleet[-1].charger_id)} disconnected")


async def test_safe_layer_first_on_every_connect(
    site_factory: SiteFactory, stations: StationFactory
) -> None:
    """On every connect, the safe layer (stack level 0) is accepted before any other profile
    reaches the charger: first boot, two kill -9 + restarts of the agent (reconnect without
    BootNotification) and a restart of each station (new boot)."""
    site, fleet = await bring_up(site_factory, stations)

    async def settled(connects: int) -> None:
        async def ready(station: Station) -> None:
            def dynamic_on_this_connect() -> bool:
                return len(connect_offsets(station)) >= connects and any(
                    f.action == "SetChargingProfile" and (stack_level(f) or 0) > 0
                    for f in per_connect(station)[-1]
                )

            try:
                await eventually(dynamic_on_this_connect, 150)
            except AssertionError:
                raise AssertionError(
                    f"{station.charger_id}: no dynamic profile on connect {connects}:\n"
                    + station.log()[-3000:]
                ) from None

        await asyncio.gather(*(ready(s) for s in fleet))

    await settled(1)
    for connects in (2, 3):
        site.restart()
        await settled(connects)
    await asyncio.gather(*(s.restart() for s in fleet))
    await settled(4)

    for station in fleet:
        segments = per_connect(station)
        # A start the harness restarted (libocpp dropped its boot answer) is one connect more.
        gave_up = abandoned_connects(station)
        assert len(segments) - len(gave_up) >= 4, station.charger_id
        for number, segment in enumerate(segments, 1):
            profiles = [f for f in segment if f.action == "SetChargingProfile" and not f.sent]
            safe_accepted = False
            for call in profiles:
                level = stack_level(call)
                if level == 0 and accepted(station, call):
                    safe_accepted = True
                assert level == 0 or safe_accepted, (
                    f"{station.charger_id} connect {number}: stack level {level} "
                    f"({call.payload}) before the safe layer was accepted"
                )
            assert safe_accepted or number - 1 in gave_up, (
                f"{station.charger_id} connect {number}: no safe layer"
            )


async def test_energy_and_status_after_agent_kill9(
    site_factory: SiteFactory, stations: StationFactory
) -> None:
    """kill -9 of the agent during sessions, restart: session energy goes on from the
    charger's own register relative to the transaction's start, and the stations, which
    reconnect without BootNotification, are asked for status and meter values."""
    site, fleet = await bring_up(site_factory, stations)
    charging = [s for s in fleet if s.charger_id in ("EV16-1", "EV16-2", "EV201-1", "EV201-2")]
    await start_sessions(charging, 22000)
    # Until the sessions are in the store (the agent persists in batches) with energy counted.
    await site.eventually(
        lambda: (
            len(
                site.query(
                    "SELECT 1 FROM charging_session WHERE ended_at IS NULL AND energy_wh > 20"
                )
            )
            == len(charging)
        ),
        timeout_s=90,
        what="sessions with energy in the store",
    )
    before = {s.charger_id: session_of(site, s.charger_id) for s in charging}
    site.kill9()
    await asyncio.sleep(8)  # the stations go on metering while the agent is away
    marks = {s.charger_id: s.mark() for s in fleet}
    site.start()
    await asyncio.gather(
        *(
            s.wait_for_log(
                re.escape(CONNECTED[s.version]), since=marks[s.charger_id], timeout_s=150
            )
            for s in fleet
        )
    )

    # libocpp reconnects without BootNotification; the agent asks what it does not know.
    for station in fleet:
        since = marks[station.charger_id]
        await site.eventually(
            lambda st=station: site.charger(st.charger_id)["online"], what="online again"
        )
        assert not station.calls("BootNotification", sent=True, since=since), (
            f"{station.charger_id} booted again: this test is about a reconnect"
        )
        await station.wait_for_frame(
            lambda f: (
                f.action == "TriggerMessage"
                and not f.sent
                and f.payload.get("requestedMessage") == "StatusNotification"
            ),
            since=since,
            timeout_s=60,
            what="TriggerMessage StatusNotification from the agent",
        )
        expected = "charging" if station in charging else "available"
        await site.eventually(
            lambda st=station, want=expected: any(
                e["evse_id"] == 1 and e["status"] == want
                for e in site.charger(st.charger_id)["evses"]
            ),
            timeout_s=30,
            what=f"{station.charger_id} EVSE 1 {expected} after the restart",
        )

    # Energy: the charger's register minus the transaction's start register.
    for station in charging:
        old = before[station.charger_id]
        assert old is not None
        transaction_id = old["id"].rpartition("/")[2]
        begin = start_register(station, transaction_id)
        since = marks[station.charger_id]
        await station.wait_for_frame(
            lambda f: f.sent and energy_register_wh(f) is not None,
            since=since,
            timeout_s=30,
            what="a meter value after the restart",
        )

        def continuous(
            st: Station = station, begin: float = begin, tx: str = transaction_id
        ) -> bool:
            session = session_of(site, st.charger_id)
            latest = last_register(st)
            if session is None or latest is None or session["energy_wh"] is None:
                return False
            expected = latest[0] - begin
            return bool(
                session["id"].endswith(f"/{tx}") and abs(session["energy_wh"] - expected) <= 200
            )

        await site.eventually(
            continuous,
            timeout_s=30,
            what=f"{station.charger_id}: session energy = register - start register "
            f"(api {session_of(site, station.charger_id)}, register {last_register(station)}, "
            f"start {begin}, before kill {old['energy_wh']})",
        )
        after = session_of(site, station.charger_id)
        assert after is not None
        assert after["energy_wh"] >= old["energy_wh"], (old, after)


async def test_ghost_and_silent_sessions_are_closed(
    site_factory: SiteFactory, stations: StationFactory
) -> None:
    """A transaction whose end message was lost (the station lost its state while the agent
    was down) is closed on reconnect with a recorded reason (1.6: the connector is
    Available; 2.0.1: GetTransactionStatus says not ongoing); a session with no sign of
    life for `session_silence_s` is closed and no longer planned for."""
    site, fleet = await bring_up(site_factory, stations, ocpp_toml="session_silence_s = 25")
    ghosts = [s for s in fleet if s.charger_id in ("EV16-1", "EV201-1")]
    silent = [s for s in fleet if s.charger_id in ("EV16-2", "EV201-2")]
    await start_sessions(ghosts + silent, 7000)
    await site.eventually(
        lambda: (
            len(site.query("SELECT 1 FROM charging_session WHERE ended_at IS NULL"))
            == len(ghosts + silent)
        ),
        timeout_s=90,
        what="sessions in the store",
    )
    ghost_sessions = {s.charger_id: session_of(site, s.charger_id) for s in ghosts}

    # The agent dies; the ghost stations lose their state (their end messages with it).
    site.kill9()
    for station in ghosts:
        station.kill()
    site.start()
    await asyncio.gather(*(s.start(fresh=True) for s in ghosts))
    # The silent stations vanish without a word.
    for station in silent:
        station.kill()

    for station in ghosts:
        old = ghost_sessions[station.charger_id]
        assert old is not None
        await site.eventually(
            lambda sid=old["id"]: site.query(
                "SELECT stop_reason FROM charging_session WHERE session_id = ? "
                "AND ended_at IS NOT NULL",
                sid,
            ),
            timeout_s=60,
            what=f"{old['id']} closed in the store",
        )
        reason = site.query(
            "SELECT stop_reason FROM charging_session WHERE session_id = ?", old["id"]
        )[0]["stop_reason"]
        expected = "ReconciledAvailable" if station.version == V16 else "ReconciledNotOngoing"
        assert reason == expected, (station.charger_id, reason)
        assert session_of(site, station.charger_id) is None
    ghost201 = next(s for s in ghosts if s.version == V201)
    assert ghost201.calls("GetTransactionStatus", sent=False)

    for station in silent:
        await site.eventually(
            lambda st=station: session_of(site, st.charger_id) is None,
            timeout_s=120,
            what=f"{station.charger_id}'s silent session closed",
        )
    await site.eventually(
        lambda: not site.query("SELECT 1 FROM charging_session WHERE ended_at IS NULL"),
        timeout_s=40,
        what="no session left open in the store",
    )
    rows = site.query(
        "SELECT charger_id, stop_reason FROM charging_session WHERE charger_id IN (?, ?)",
        *[s.charger_id for s in silent],
    )
    assert {r["stop_reason"] for r in rows} == {"NoSignOfLife"}, [dict(r) for r in rows]
