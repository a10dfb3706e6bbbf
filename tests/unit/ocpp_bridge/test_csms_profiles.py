"""The CSMS's own profiles on a relayed charger as a limit in W (`ocpp_bridge.csms_profiles`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_bridge import schemas
from ocpp_bridge.csms_profiles import CsmsProfiles
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.timestamps import format_timestamp

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
E = ElectricalData(phases=3, nominal_voltage_v=230.0)
W_PER_A = 690.0


def set16(
    profile_id: int,
    level: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    connector: int = 0,
    start: datetime | None = T0,
    kind: str = "Absolute",
    duration: int | None = None,
    unit: str = "A",
    **extra: Any,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods],
    }
    if start is not None:
        schedule["startSchedule"] = format_timestamp(start)
    if duration is not None:
        schedule["duration"] = duration
    payload = {
        "connectorId": connector,
        "csChargingProfiles": {
            "chargingProfileId": profile_id,
            "stackLevel": level,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind,
            "chargingSchedule": schedule,
            **extra,
        },
    }
    schemas.validate(V16, "SetChargingProfile", payload, response=False)
    return payload


def set201(profile_id: int, level: int, purpose: str, limit_a: float, evse: int = 0) -> Any:
    payload = {
        "evseId": evse,
        "chargingProfile": {
            "id": profile_id,
            "stackLevel": level,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [
                {
                    "id": 1,
                    "startSchedule": format_timestamp(T0),
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_a}],
                }
            ],
        },
    }
    schemas.validate(V201, "SetChargingProfile", payload, response=False)
    return payload


def limit(
    profiles: CsmsProfiles, start: datetime = T0, end: datetime = T0 + HOUR, **kw: Any
) -> Any:
    return profiles.limit_w(start, end, E, **kw)


def test_no_profiles_no_limit() -> None:
    assert limit(CsmsProfiles(V16)) is None


def test_a_station_wide_default_limits_every_evse_and_the_station_their_sum() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 10.0)]))
    assert limit(profiles) == 10 * W_PER_A
    assert limit(profiles, evse_id=2, evses=2) == 10 * W_PER_A
    assert limit(profiles, evses=2) == 2 * 10 * W_PER_A
    # The station maximum caps that sum.
    profiles.set(set16(2, 5, "ChargePointMaxProfile", [(0, 16.0)]))
    assert limit(profiles, evses=2) == 16 * W_PER_A
    assert limit(profiles, evses=1) == 10 * W_PER_A


def test_within_a_purpose_the_highest_stack_level_wins_even_when_it_allows_more() -> None:
    profiles = CsmsProfiles(V201)
    profiles.set(set201(1, 3, "TxDefaultProfile", 8.0))
    profiles.set(set201(2, 6, "TxDefaultProfile", 12.0))
    assert limit(profiles) == 12 * W_PER_A
    # An EVSE's own default beats the station-wide one; a TxProfile beats both.
    profiles.set(set201(3, 3, "TxDefaultProfile", 7.0, evse=1))
    assert limit(profiles) == 7 * W_PER_A


def test_watts_and_phases_as_the_profile_gives_them() -> None:
    profiles = CsmsProfiles(V16)
    payload = set16(1, 5, "TxDefaultProfile", [(0, 4000.0)], unit="W")
    profiles.set(payload)
    assert limit(profiles) == 4000.0
    one_phase = set16(2, 6, "TxDefaultProfile", [(0, 10.0)])
    one_phase["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0][
        "numberPhases"
    ] = 1
    profiles.set(one_phase)
    assert limit(profiles) == 10 * 230.0


def test_only_the_periods_within_the_interval_count() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 16.0), (1800, 6.0)], duration=3600))
    assert limit(profiles, T0, T0 + timedelta(minutes=15)) == 16 * W_PER_A
    assert limit(profiles, T0 + timedelta(minutes=15), T0 + HOUR) == 6 * W_PER_A
    # Before the start and after its duration the profile has nothing to say.
    assert limit(profiles, T0 - HOUR, T0) is None
    assert limit(profiles, T0 + HOUR, T0 + 2 * HOUR) is None


def test_validity_bounds_a_profile() -> None:
    profiles = CsmsProfiles(V16)
    valid_to = format_timestamp(T0 + timedelta(minutes=30))
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 8.0)], validTo=valid_to))
    assert limit(profiles, T0 + timedelta(minutes=20), T0 + timedelta(minutes=40)) == 8 * W_PER_A
    assert limit(profiles, T0 + timedelta(minutes=30), T0 + HOUR) is None


def test_a_daily_profile_recurs() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(
        set16(
            1,
            5,
            "TxDefaultProfile",
            [(0, 16.0), (3600, 6.0), (7200, 16.0)],
            kind="Recurring",
            recurrencyKind="Daily",
        )
    )
    later = T0 + timedelta(days=3)
    assert limit(profiles, later, later + HOUR) == 16 * W_PER_A
    assert limit(profiles, later + HOUR, later + 2 * HOUR) == 6 * W_PER_A


def test_a_profile_that_cannot_be_placed_counts_with_its_lowest_period() -> None:
    """Relative to a transaction start flexbridge does not place: never more than its lowest."""
    profiles = CsmsProfiles(V16)
    profiles.set(
        set16(1, 5, "TxDefaultProfile", [(0, 16.0), (600, 7.0)], kind="Relative", start=None)
    )
    assert limit(profiles, T0 + 10 * HOUR, T0 + 11 * HOUR) == 7 * W_PER_A


def test_same_id_replaces_and_in_16_same_level_and_purpose_replaces() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 8.0)]))
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 12.0)]))
    assert len(profiles) == 1
    profiles.set(set16(2, 5, "TxDefaultProfile", [(0, 9.0)]))
    assert len(profiles) == 1
    assert limit(profiles) == 9 * W_PER_A


def test_clear_by_id_or_criteria_and_tx_profiles_end_with_their_transaction() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 8.0)]))
    profiles.set(set16(2, 5, "ChargePointMaxProfile", [(0, 12.0)]))
    profiles.set(set16(3, 5, "TxProfile", [(0, 6.0)], connector=1, transactionId=42))
    assert limit(profiles) == 6 * W_PER_A
    profiles.transaction_ended("41")
    assert len(profiles) == 3
    profiles.transaction_ended("42")
    assert limit(profiles) == 8 * W_PER_A
    profiles.clear({"id": 1})
    assert limit(profiles) == 12 * W_PER_A
    profiles.clear({"chargingProfilePurpose": "ChargePointMaxProfile", "stackLevel": 5})
    assert limit(profiles) is None

    v201 = CsmsProfiles(V201)
    v201.set(set201(1, 3, "TxDefaultProfile", 8.0))
    v201.clear({"chargingProfileCriteria": {"evseId": 1}})
    assert len(v201) == 1
    v201.clear(
        {"chargingProfileCriteria": {"evseId": 0, "chargingProfilePurpose": "TxDefaultProfile"}}
    )
    assert len(v201) == 0


def test_kept_across_a_restart() -> None:
    profiles = CsmsProfiles(V16)
    profiles.set(set16(1, 5, "TxDefaultProfile", [(0, 8.0), (900, 10.0)], connector=1))
    again = CsmsProfiles(V16)
    again.restore(profiles.to_json())
    for start in (T0, T0 + timedelta(minutes=15)):
        end = start + timedelta(minutes=15)
        assert limit(again, start, end, evse_id=1) == limit(profiles, start, end, evse_id=1)


profile_rows = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=4),  # profile id
        st.integers(min_value=3, max_value=6),  # stack level
        st.sampled_from(["TxDefaultProfile", "ChargePointMaxProfile", "TxProfile"]),
        st.integers(min_value=0, max_value=2),  # connector
        st.integers(min_value=-120, max_value=120),  # start, s from T0
        st.lists(
            st.tuples(st.integers(0, 120), st.integers(0, 32)), min_size=1, max_size=4
        ),  # periods
        st.one_of(st.none(), st.integers(1, 200)),  # duration
        st.one_of(st.none(), st.integers(-60, 200)),  # validTo, s from T0
    ),
    max_size=5,
)


@settings(deadline=None, max_examples=200)
@given(rows=profile_rows, evses=st.integers(1, 2), evse_id=st.integers(0, 2))
def test_the_limit_over_an_interval_is_the_lowest_of_every_second_in_it(
    rows: list[Any], evses: int, evse_id: int
) -> None:
    """Profile edges fall on whole seconds: the limit over [T0-60 s, T0+240 s) is the lowest
    of the limits of each second in it, and a second's limit is what its instant says."""
    profiles = CsmsProfiles(V16)
    for profile_id, level, purpose, connector, start_s, periods, duration, valid_to in rows:
        if purpose == "ChargePointMaxProfile":
            connector = 0
        if purpose == "TxProfile" and connector == 0:
            connector = 1
        starts = sorted({s for s, _ in periods} | {0})
        limits = dict(periods)
        extra: dict[str, Any] = {}
        if valid_to is not None:
            extra["validTo"] = format_timestamp(T0 + timedelta(seconds=valid_to))
        if purpose == "TxProfile":
            extra["transactionId"] = 7
        profiles.set(
            set16(
                profile_id,
                level,
                purpose,
                [(s, float(limits.get(s, 16))) for s in starts],
                connector=connector,
                start=T0 + timedelta(seconds=start_s),
                duration=duration,
                **extra,
            )
        )
    begin = T0 - timedelta(seconds=60)
    seconds = [begin + timedelta(seconds=k) for k in range(300)]
    whole = limit(profiles, begin, begin + timedelta(seconds=300), evse_id=evse_id, evses=evses)
    each = [
        limit(profiles, s, s + timedelta(seconds=1), evse_id=evse_id, evses=evses) for s in seconds
    ]
    known = [value for value in each if value is not None]
    assert whole == (min(known) if known else None)
    # A second's limit does not change within it (no edge inside a second).
    for s, value in zip(seconds[::37], each[::37], strict=True):
        inner = limit(
            profiles,
            s + timedelta(milliseconds=500),
            s + timedelta(seconds=1),
            evse_id=evse_id,
            evses=evses,
        )
        assert inner == value
