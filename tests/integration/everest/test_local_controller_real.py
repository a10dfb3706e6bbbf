"""Local-controller mode with real chargers: an EVerest libocpp station (1.6 and 2.0.1) ->
a real `flexbridge run` process with an ``[upstream]`` section -> the operator's CSMS, here
tests/peers/csms.js (npm ocpp-rpc RPCServer, strict schema validation both ways).

What the CSMS must see is exactly what the station said, once and in order, and nothing of
flexbridge's own: its profiles reach the station (read back from the station's own composite
schedule) while none of its ``fb-`` CALLs or their answers go upstream. A CSMS CALL reaches the
station and its answer comes back. With the autonomous policy, a CSMS outage mid-transaction
goes unnoticed by the station and the CSMS gets what it missed when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ocpp_bridge.timestamps import parse_timestamp
from tests.support.everest import (
    CONNECTED,
    PASSWORD,
    V16,
    V201,
    AgentSite,
    Frame,
    Station,
    composite_limit_a,
    stack_level,
    start_all,
)
from tests.support.node_csms import NodeCsms
from tests.support.uftp import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

WATTS_PER_AMP = 230.0 * 3  # the configured chargers: three phases at 230 V
START = {V16: "start_transaction", V201: "start"}
STOP = {V16: "stop_transaction", V201: "stop"}
# The station's transaction messages the CSMS must get, each once, in the station's order.
TRANSACTION = {
    V16: ("StartTransaction", "MeterValues", "StopTransaction"),
    V201: ("TransactionEvent",),
}
OUR_PREFIX = "fb-"


def started(frame: Frame) -> bool:
    return frame.sent and (
        frame.action == "StartTransaction"
        or (frame.action == "TransactionEvent" and frame.payload.get("eventType") == "Started")
    )


def ended(frame: Frame) -> bool:
    return frame.sent and (
        frame.action == "StopTransaction"
        or (frame.action == "TransactionEvent" and frame.payload.get("eventType") == "Ended")
    )


def ended_call(action: str, payload: dict[str, Any]) -> bool:
    return action == "StopTransaction" or (
        action == "TransactionEvent" and payload.get("eventType") == "Ended"
    )


def accepted(station: Station, call: Frame) -> bool:
    answer = station.answer_to(call)
    return answer is not None and answer.kind == 3 and answer.payload.get("status") == "Accepted"


@pytest.mark.parametrize("version", [V16, V201])
async def test_real_station_relayed_to_the_csms(
    version: str,
    csms: NodeCsms,
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """Boot, a metered transaction and a CSMS CALL through the relay, with flexbridge's safe and
    dynamic profiles on the station and none of its own traffic upstream."""
    charger_id = "LC16" if version == V16 else "LC201"
    site = site_factory(
        [charger_id],
        upstream_url=f"ws://127.0.0.1:{csms.port}/ocpp",
        upstream_toml='policy = "strict"',
    )
    site.start()
    [station] = stations(site, [charger_id], version)
    await start_all([station])

    await csms.wait_for_call(charger_id, "BootNotification")
    # Upstream under the station's identity and with its own Basic-auth password.
    connected = await csms.wait_for(
        lambda line: line.get("event") == "connected" and line.get("identity") == charger_id
    )
    assert connected["password"] == PASSWORD, connected
    assert connected["protocol"] == f"ocpp{version}", connected
    await site.eventually(
        lambda: site.charger(charger_id)["online"], timeout_s=60, what="station online"
    )

    # Our layers reach the station and it takes them: the safe layer (stack level 0) first.
    def both_layers_accepted() -> bool:
        profiles = station.calls("SetChargingProfile", sent=False)
        levels = {stack_level(call) for call in profiles if accepted(station, call)}
        return 0 in levels and any((level or 0) > 0 for level in levels)

    await eventually(both_layers_accepted, 90, "safe and dynamic profiles accepted")
    first = station.calls("SetChargingProfile", sent=False)[0]
    assert stack_level(first) == 0, first

    # A transaction started on the station's console, with meter values.
    since = station.mark()
    station.send(START[version])
    await station.wait_for_frame(started, since=since, timeout_s=30, what="transaction start")
    station.send("power 7000")

    def metered() -> bool:
        if version == V16:
            return len([a for a, _ in csms.calls(charger_id) if a == "MeterValues"]) >= 2
        return (
            len(
                [
                    p
                    for a, p in csms.calls(charger_id)
                    if a == "TransactionEvent" and p.get("eventType") == "Updated"
                ]
            )
            >= 2
        )

    await eventually(metered, 60, "meter values at the CSMS")

    # The station's own composite schedule (during the transaction: 2.0.1 TxDefault counts then)
    # equals the limit the agent keeps.
    async def composite_matches() -> bool:
        limit_w = site.charger(charger_id)["limit_w"]
        station_a = composite_limit_a((await station.composite(900))[0])
        return (
            limit_w is not None
            and station_a is not None
            and abs(station_a * WATTS_PER_AMP - limit_w) <= 0.5 * WATTS_PER_AMP
        )

    await eventually(composite_matches, 60, "composite matching the agent's limit")

    # A CSMS CALL reaches the station, its answer comes back.
    heartbeats = sum(1 for a, _ in csms.calls(charger_id) if a == "Heartbeat")
    result = await csms.call(charger_id, "TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert result["event"] == "result", result
    assert result["result"].get("status") == "Accepted", result
    triggers = [
        f
        for f in station.calls("TriggerMessage", sent=False)
        if f.payload.get("requestedMessage") == "Heartbeat"
    ]
    assert [f for f in triggers if not f.unique_id.startswith(OUR_PREFIX)], triggers
    await eventually(
        lambda: sum(1 for a, _ in csms.calls(charger_id) if a == "Heartbeat") > heartbeats,
        30,
        "the triggered Heartbeat at the CSMS",
    )

    since = station.mark()
    station.send(STOP[version])
    await station.wait_for_frame(ended, since=since, timeout_s=30, what="transaction end")
    await eventually(
        lambda: any(ended_call(a, p) for a, p in csms.calls(charger_id)),
        30,
        "the transaction's end at the CSMS",
    )
    await asyncio.sleep(1)  # anything late would show up below

    received = csms.frames(charger_id)
    calls = csms.calls(charger_id)
    # Boot once.
    assert [a for a, _ in calls].count("BootNotification") == 1, calls
    # Every transaction message of the station, once, in its order, as it sent it.
    wanted = TRANSACTION[version]
    sent = [(f.action, f.payload) for f in station.frames() if f.sent and f.action in wanted]
    got = [(a, p) for a, p in calls if a in wanted]
    assert got == sent, f"station sent:\n{sent}\nCSMS got:\n{got}"
    if version == V16:
        actions = [a for a, _ in got]
        assert actions[0] == "StartTransaction", actions
        assert actions[-1] == "StopTransaction", actions
        assert actions.count("StartTransaction") == actions.count("StopTransaction") == 1
    else:
        kinds = [p["eventType"] for _, p in got]
        assert kinds[0] == "Started", kinds
        assert kinds[-1] == "Ended", kinds
        assert kinds.count("Started") == kinds.count("Ended") == 1, kinds
        seq = [p["seqNo"] for _, p in got]
        assert seq == sorted(set(seq)), seq
    # Nothing of ours upstream: no fb- ids, and the only answers are to the CSMS's one CALL.
    assert not [m for m in received if str(m[1]).startswith(OUR_PREFIX)], received
    answers = [m for m in received if m[0] in (3, 4)]
    assert len(answers) == 1, answers
    assert answers[0][0] == 3, answers
    assert answers[0][2].get("status") == "Accepted", answers
    assert "SetChargingProfile" not in [a for a, _ in calls]
    assert csms.complaints() == []


def transaction_messages(
    version: str, calls: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, Any]]:
    return [(a, p) for a, p in calls if a in TRANSACTION[version]]


@pytest.mark.parametrize("version", [V16, V201])
async def test_real_station_keeps_charging_through_a_csms_outage_and_replays_in_order(
    version: str,
    node: str,
    csms: NodeCsms,
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """Autonomous policy: the CSMS dies mid-transaction; the station stays connected and keeps
    sending meter values, then stops; the CSMS comes back and gets every transaction message it
    missed, once, in the station's order (1.6: under the transactionId it gave; 2.0.1: marked
    ``offline``, as the CSMS did not hear of them when they happened)."""
    charger_id = "LCOUT16" if version == V16 else "LCOUT201"
    site = site_factory(
        [charger_id],
        upstream_url=f"ws://127.0.0.1:{csms.port}/ocpp",
        upstream_toml='policy = "autonomous"\nreconnect_initial_s = 0.5\nreconnect_max_s = 2',
    )
    site.start()
    [station] = stations(site, [charger_id], version)
    await start_all([station])
    await csms.wait_for_call(charger_id, "BootNotification")
    await station.wait_for_call("SetChargingProfile", sent=False, timeout_s=60)

    since = station.mark()
    station.send(START[version])
    await station.wait_for_frame(started, since=since, timeout_s=30, what="transaction start")
    station.send("power 7000")
    await eventually(
        lambda: len(transaction_messages(version, csms.calls(charger_id))) >= 2,
        60,
        "the transaction at the CSMS",
    )

    await csms.kill()
    outage = station.mark()

    def metered_offline() -> bool:
        frames = station.frames(since=outage)
        return len([f for f in frames if f.sent and f.action in TRANSACTION[version]]) >= 2

    await eventually(metered_offline, 60, "meter values while the CSMS is down")
    station.send(STOP[version])
    await station.wait_for_frame(ended, since=outage, timeout_s=30, what="transaction end")

    # The station never noticed: every CALL of the outage was answered (locally).
    def all_answered() -> bool:
        outage_calls = [
            f for f in station.frames(since=outage) if f.sent and f.action in TRANSACTION[version]
        ]
        answers = [station.answer_to(f) for f in outage_calls]
        return all(a is not None and a.kind == 3 for a in answers)

    await eventually(all_answered, 30, "every transaction message of the outage answered")
    assert station.log().count(CONNECTED[version]) == 1

    back = await NodeCsms.start(node, csms.port)
    try:
        await eventually(
            lambda: any(ended_call(a, p) for a, p in back.calls(charger_id)),
            60,
            "the transaction's end replayed to the CSMS",
        )
        await asyncio.sleep(1)  # anything sent twice would show up below
        sent = [
            (f.action, f.payload)
            for f in station.frames()
            if f.sent and f.action in TRANSACTION[version]
        ]
        first = transaction_messages(version, csms.calls(charger_id))
        replayed = transaction_messages(version, back.calls(charger_id))
        if version == V201:
            assert all(p.get("offline") is True for _, p in replayed), replayed
            # As the station wrote them, but for the mark.
            replayed = [(a, {**p, "offline": False}) for a, p in replayed]
        # Each once: a message the dead CSMS got but never answered may come again, at most
        # that one, at the seam.
        seam = 1 if first and replayed and first[-1] == replayed[0] else 0
        assert first + replayed[seam:] == sent, f"sent:\n{sent}\nfirst:\n{first}\nthen:\n{replayed}"
        assert ended_call(*replayed[-1]), replayed
        if version == V16:
            given = {p.get("transactionId") for a, p in first + replayed if a != "StartTransaction"}
            assert len(given) == 1, given
        assert back.complaints() == []
        # Replays are the relay's own CALLs upstream (answered locally before, so under new
        # ids); nothing else of ours: no answers to CALLs the CSMS never made.
        assert not [m for m in back.frames(charger_id) if m[0] != 2], back.frames(charger_id)
    finally:
        await back.stop()


CSMS_PROFILE_ID = 7  # the CSMS's small sequential ids, far from flexbridge's 9000100...
CSMS_STACK_LEVEL = 5  # above flexbridge's 0-2
CSMS_LIMITS_A = ((0, 10.0), (1800, 7.0))  # (seconds from its start, A)


def csms_tx_default(version: str, start: datetime) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "startSchedule": start.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": a} for s, a in CSMS_LIMITS_A],
    }
    profile: dict[str, Any] = {
        "stackLevel": CSMS_STACK_LEVEL,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
    }
    if version == V16:
        profile |= {"chargingProfileId": CSMS_PROFILE_ID, "chargingSchedule": schedule}
        return {"connectorId": 0, "csChargingProfiles": profile}
    profile |= {"id": CSMS_PROFILE_ID, "chargingSchedule": [{"id": 70, **schedule}]}
    return {"evseId": 0, "chargingProfile": profile}


def csms_limit_a(start: datetime, moment: datetime) -> float:
    offset = (moment - start).total_seconds()
    return [a for s, a in CSMS_LIMITS_A if s <= offset][-1]


def profile_of(call: Frame) -> dict[str, Any]:
    profile = call.payload.get("csChargingProfiles") or call.payload.get("chargingProfile")
    assert isinstance(profile, dict), call
    return profile


def periods_a(profile: dict[str, Any]) -> list[tuple[datetime, float]]:
    """(start, limit in A) of every period of a profile flexbridge sent (Absolute, one
    schedule)."""
    schedule = profile["chargingSchedule"]
    if isinstance(schedule, list):
        [schedule] = schedule
    start = parse_timestamp(schedule["startSchedule"])
    per_a = 1.0 if schedule["chargingRateUnit"] == "A" else WATTS_PER_AMP
    return [
        (start + timedelta(seconds=p["startPeriod"]), float(p["limit"]) / per_a)
        for p in schedule["chargingSchedulePeriod"]
    ]


@pytest.mark.parametrize("version", [V16, V201])
async def test_real_station_holds_the_csms_profiles_beside_ours_and_we_plan_within_them(
    version: str,
    csms: NodeCsms,
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """The CSMS sets its own TxDefault (10 A, then 7 A after half an hour) at its stack level
    and id; flexbridge's safe and dynamic profiles stay on the station beside it (both
    accepted), the agent's plan for the charger never exceeds the CSMS's limit, and the
    station's own composite schedule is the lower of the two."""
    charger_id = "LCPRO16" if version == V16 else "LCPRO201"
    site = site_factory(
        [charger_id],
        upstream_url=f"ws://127.0.0.1:{csms.port}/ocpp",
        upstream_toml='policy = "strict"',
    )
    site.start()
    [station] = stations(site, [charger_id], version)
    await start_all([station])
    await csms.wait_for_call(charger_id, "BootNotification")

    def ours(level: int) -> list[Frame]:
        return [
            call
            for call in station.calls("SetChargingProfile", sent=False)
            if call.unique_id.startswith(OUR_PREFIX)
            and stack_level(call) == level
            and accepted(station, call)
        ]

    await eventually(lambda: ours(0) and ours(1), 90, "our safe and dynamic profiles accepted")

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    answer = await csms.call(charger_id, "SetChargingProfile", csms_tx_default(version, start))
    assert answer.get("result") == {"status": "Accepted"}, answer

    since = station.mark()
    station.send(START[version])
    await station.wait_for_frame(started, since=since, timeout_s=30, what="transaction start")
    station.send("power 7000")

    # From the round the session start wakes on, every dynamic profile we send stays within
    # the CSMS's limit at each of its periods (the ISP's lowest).
    def planned_within() -> list[tuple[datetime, float]] | None:
        later = [call for call in ours(1) if call.offset >= since]
        if not later:
            return None
        periods = periods_a(profile_of(later[-1]))
        return periods if all(a <= csms_limit_a(start, t) for t, a in periods) else None

    try:
        plan = await site.eventually(
            planned_within, timeout_s=90, what="our plan within the CSMS's limit"
        )
    except AssertionError:
        last = [periods_a(profile_of(call)) for call in ours(1)][-1:]
        raise AssertionError(f"our last dynamic profile: {last}") from None
    assert plan[0][1] > 0, plan  # the EV charges
    limit_w = site.charger(charger_id)["limit_w"]
    assert limit_w is not None
    assert limit_w <= csms_limit_a(start, datetime.now(UTC)) * WATTS_PER_AMP, limit_w

    # Both sides' profiles are on the station: the CSMS's was never replaced by ours.
    taken = [c for c in station.calls("SetChargingProfile", sent=False) if accepted(station, c)]
    ids = {profile_of(c).get("chargingProfileId", profile_of(c).get("id")) for c in taken}
    assert CSMS_PROFILE_ID in ids, ids
    assert ids & {9_000_100, 9_000_200}, ids
    assert station.calls("ClearChargingProfile", sent=False) == [], "nobody cleared a profile"

    # The station's own composite for the EVSE: the lower of ours and the CSMS's, throughout.
    composite = (await station.composite(3600))[1]
    assert composite is not None, composite
    began = datetime.now(UTC)
    for period in composite["chargingSchedulePeriod"]:
        moment = began + timedelta(seconds=float(period["startPeriod"]))
        assert float(period["limit"]) <= csms_limit_a(start, moment) + 1e-9, composite
    ours_now = [a for t, a in plan if t <= began + timedelta(seconds=5)][-1]
    expected = min(ours_now, csms_limit_a(start, began))
    assert composite_limit_a(composite) == pytest.approx(expected, abs=1.0), (composite, plan)
    assert csms.complaints() == []


async def test_real_station_gets_our_profiles_back_after_the_csms_clears_them_all(
    csms: NodeCsms,
    site_factory: Callable[..., AgentSite],
    stations: Callable[..., list[Station]],
) -> None:
    """A CSMS's ClearChargingProfile without criteria removes every profile on a real 1.6
    station, our safe layer too: flexbridge puts the safe layer back at once (then the
    dynamic one), so the station is never left without its site-wide limit."""
    charger_id = "LCCLR16"
    site = site_factory(
        [charger_id],
        upstream_url=f"ws://127.0.0.1:{csms.port}/ocpp",
        upstream_toml='policy = "strict"',
    )
    site.start()
    [station] = stations(site, [charger_id], V16)
    await start_all([station])
    await csms.wait_for_call(charger_id, "BootNotification")

    def ours(level: int, since: int = 0) -> list[Frame]:
        return [
            call
            for call in station.calls("SetChargingProfile", sent=False, since=since)
            if call.unique_id.startswith(OUR_PREFIX)
            and stack_level(call) == level
            and accepted(station, call)
        ]

    await eventually(lambda: ours(0) and ours(1), 90, "our safe and dynamic profiles accepted")
    since = station.mark()
    answer = await csms.call(charger_id, "ClearChargingProfile", {})
    assert answer.get("result") == {"status": "Accepted"}, answer
    await eventually(lambda: ours(0, since), 30, "our safe profile put back")
    await eventually(lambda: ours(1, since), 60, "our dynamic profile put back")
    safe_again = ours(0, since)[0]
    dynamic_again = ours(1, since)[0]
    assert safe_again.offset < dynamic_again.offset  # the safe layer first
