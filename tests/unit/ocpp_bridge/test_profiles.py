"""Profile building: every payload is schema-valid and honours the charger's capabilities."""

from __future__ import annotations

import decimal
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.messages import get_validator

from ocpp_bridge import schemas
from ocpp_bridge.capabilities import ChargerCapabilities, Purpose, RateUnit
from ocpp_bridge.events import PowerPeriod, ProtocolVersion
from ocpp_bridge.profiles import (
    CLOCK_SKEW_MARGIN,
    DYNAMIC_PROFILE_ID_BASE,
    SAFE_PROFILE_ID,
    ElectricalData,
    Layer,
    ProfileError,
    ProfileTarget,
    build_dynamic_profile,
    build_safe_profile,
    limit_in_unit,
    plan_periods,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$")
ELECTRICAL = ElectricalData(
    phases=3, nominal_voltage_v=230.0, min_current_a=6.0, max_current_a=16.0
)
CAPS = ChargerCapabilities(
    rate_units=(RateUnit.AMPS, RateUnit.WATTS), max_stack_level=3, max_periods=24
)


def schema_valid(version: ProtocolVersion, payload: dict[str, Any]) -> None:
    """Both the library's jsonschema validator (with its 1.6 Decimal parsing) and ours."""
    if version is ProtocolVersion.OCPP16:
        validator = get_validator(2, "SetChargingProfile", "1.6", parse_float=decimal.Decimal)
        validator.validate(json.loads(json.dumps(payload), parse_float=decimal.Decimal))
    else:
        get_validator(2, "SetChargingProfile", "2.0.1").validate(payload)
    schemas.validate(version, "SetChargingProfile", payload, response=False)


def profile_of(version: ProtocolVersion, payload: dict[str, Any]) -> dict[str, Any]:
    return (
        payload["csChargingProfiles"]
        if version is ProtocolVersion.OCPP16
        else payload["chargingProfile"]
    )


def schedule_of(version: ProtocolVersion, payload: dict[str, Any]) -> dict[str, Any]:
    schedule = profile_of(version, payload)["chargingSchedule"]
    return schedule if version is ProtocolVersion.OCPP16 else schedule[0]


# --- conversions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("watts", "phases", "expected_a"),
    [
        (11_000, 3, 15),  # 15.94 A floors: never more than asked
        (11_040, 3, 16),  # exactly 16 A despite float noise
        (7_360, 1, 16),  # 32 A asked, clamped to the charger's 16 A maximum
        (4_140, 3, 6),  # exactly the minimum
        (4_000, 3, 0),  # below 6 A: pause rather than an unusable limit
        (0, 3, 0),
        (1e9, 3, 16),  # never above the maximum ("unlimited" cannot be asked for)
    ],
)
def test_watts_to_amps_per_phase(watts: float, phases: int, expected_a: int) -> None:
    electrical = ElectricalData(phases=phases, min_current_a=6.0, max_current_a=16.0)
    assert limit_in_unit(watts, RateUnit.AMPS, electrical) == expected_a


def test_single_phase_32_amps() -> None:
    electrical = ElectricalData(phases=1, min_current_a=6.0, max_current_a=32.0)
    assert limit_in_unit(7_360, RateUnit.AMPS, electrical) == 32


def test_watts_unit_is_whole_watts_within_bounds() -> None:
    assert limit_in_unit(7_000.9, RateUnit.WATTS, ELECTRICAL) == 7_000
    assert limit_in_unit(4_139, RateUnit.WATTS, ELECTRICAL) == 0  # below 6 A x 3 x 230 V
    assert limit_in_unit(50_000, RateUnit.WATTS, ELECTRICAL) == 11_040


def test_negative_is_zero_and_nan_is_an_error() -> None:
    assert limit_in_unit(-5, RateUnit.AMPS, ELECTRICAL) == 0
    with pytest.raises(ProfileError):
        limit_in_unit(float("nan"), RateUnit.AMPS, ELECTRICAL)


# --- the safe layer ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", list(ProtocolVersion))
def test_safe_profile_is_static_station_max_in_the_past(version: ProtocolVersion) -> None:
    built = build_safe_profile(
        version, ProfileTarget(Layer.SAFE, Purpose.STATION_MAX), CAPS, ELECTRICAL, 6_900, NOW, 42
    )
    schema_valid(version, built.payload)
    profile = profile_of(version, built.payload)
    schedule = schedule_of(version, built.payload)
    assert profile["stackLevel"] == 0
    assert profile["chargingProfileKind"] == "Absolute"
    assert "validTo" not in profile
    assert "duration" not in schedule
    assert datetime.fromisoformat(schedule["startSchedule"].replace("Z", "+00:00")) < NOW
    assert schedule["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 10, "numberPhases": 3}
    ]
    if version is ProtocolVersion.OCPP16:
        assert built.payload["connectorId"] == 0
        assert profile["chargingProfilePurpose"] == "ChargePointMaxProfile"
        assert profile["chargingProfileId"] == SAFE_PROFILE_ID
    else:
        assert built.payload["evseId"] == 0
        assert profile["chargingProfilePurpose"] == "ChargingStationMaxProfile"
        assert schedule["id"] == 42


def test_station_max_only_on_evse_zero_and_tx_needs_a_transaction() -> None:
    with pytest.raises(ProfileError):
        ProfileTarget(Layer.DYNAMIC, Purpose.STATION_MAX, evse_id=1)
    with pytest.raises(ProfileError):
        ProfileTarget(Layer.DYNAMIC, Purpose.TX, evse_id=1)
    with pytest.raises(ProfileError):
        ProfileTarget(Layer.DYNAMIC, Purpose.TX, evse_id=0, transaction_id="7")
    with pytest.raises(ProfileError):
        ProfileTarget(Layer.SAFE, Purpose.TX, evse_id=1, transaction_id="7")


# --- the dynamic layer -------------------------------------------------------------------------


def test_future_schedule_is_preceded_by_the_safe_limit() -> None:
    periods = [PowerPeriod(NOW + timedelta(minutes=10), 11_040)]
    start, offsets, valid_to = plan_periods(
        periods, NOW, NOW + timedelta(minutes=15), 24, RateUnit.AMPS, ELECTRICAL, fill_limit_w=4_140
    )
    assert start == NOW.replace(microsecond=0) - CLOCK_SKEW_MARGIN
    assert offsets[0] == (0, 6)
    assert offsets[1][1] == 16
    # A rise is rounded up to the next whole second, never earlier than asked.
    rise = start + timedelta(seconds=offsets[1][0])
    assert periods[0].start <= rise < periods[0].start + timedelta(seconds=1)
    assert valid_to == NOW + timedelta(minutes=15)


def test_past_periods_are_dropped_and_equal_neighbours_merge() -> None:
    periods = [
        PowerPeriod(NOW - timedelta(hours=2), 4_140),
        PowerPeriod(NOW - timedelta(minutes=5), 6_900),
        PowerPeriod(NOW + timedelta(minutes=5), 6_950),  # also 10 A
        PowerPeriod(NOW + timedelta(minutes=10), 0),
    ]
    _, offsets, _ = plan_periods(
        periods, NOW, NOW + timedelta(hours=1), 24, RateUnit.AMPS, ELECTRICAL, 4_140
    )
    assert [limit for _, limit in offsets] == [10, 0]
    assert offsets[0][0] == 0


def test_too_many_periods_end_the_profile_where_the_first_dropped_one_starts() -> None:
    periods = [PowerPeriod(NOW + timedelta(minutes=i), 4_140 + 690 * (i % 2)) for i in range(10)]
    caps = ChargerCapabilities(max_periods=3)
    built = build_dynamic_profile(
        ProtocolVersion.OCPP201,
        ProfileTarget(Layer.DYNAMIC, Purpose.TX_DEFAULT),
        caps,
        ELECTRICAL,
        periods,
        NOW,
        NOW + timedelta(hours=1),
        7,
        fill_limit_w=0,
    )
    assert len(schedule_of(ProtocolVersion.OCPP201, built.payload)["chargingSchedulePeriod"]) == 3
    assert built.valid_to is not None
    # Kept: the periods from NOW, NOW + 1 min, NOW + 2 min; the first dropped one starts at
    # NOW + 3 min, where the dynamic layer ends (to within the whole-second rounding).
    assert abs((built.valid_to - (NOW + timedelta(minutes=3))).total_seconds()) < 1.0


def test_dynamic_needs_a_stack_level_above_the_safe_one() -> None:
    with pytest.raises(ProfileError):
        build_dynamic_profile(
            ProtocolVersion.OCPP16,
            ProfileTarget(Layer.DYNAMIC, Purpose.STATION_MAX),
            ChargerCapabilities(max_stack_level=0),
            ELECTRICAL,
            [PowerPeriod(NOW, 5_000)],
            NOW,
            NOW + timedelta(minutes=15),
            1,
            fill_limit_w=0,
        )


def test_unit_the_charger_does_not_take_is_refused() -> None:
    with pytest.raises(ProfileError):
        build_safe_profile(
            ProtocolVersion.OCPP16,
            ProfileTarget(Layer.SAFE, Purpose.STATION_MAX),
            ChargerCapabilities(rate_units=(RateUnit.AMPS,)),
            ELECTRICAL,
            5_000,
            NOW,
            1,
            unit=RateUnit.WATTS,
        )


def test_1_6_tx_profile_carries_the_integer_transaction_id() -> None:
    built = build_dynamic_profile(
        ProtocolVersion.OCPP16,
        ProfileTarget(Layer.DYNAMIC, Purpose.TX, evse_id=2, transaction_id="981"),
        CAPS,
        ELECTRICAL,
        [PowerPeriod(NOW, 7_000)],
        NOW,
        NOW + timedelta(minutes=15),
        1,
        fill_limit_w=0,
    )
    schema_valid(ProtocolVersion.OCPP16, built.payload)
    assert built.payload["connectorId"] == 2
    assert built.payload["csChargingProfiles"]["transactionId"] == 981
    assert built.payload["csChargingProfiles"]["chargingProfileId"] == DYNAMIC_PROFILE_ID_BASE + 2


# --- properties --------------------------------------------------------------------------------

electricals = st.builds(
    lambda phases, volts, min_a, span: ElectricalData(phases, volts, min_a, min_a + span),
    st.sampled_from([1, 3]),
    st.sampled_from([110.0, 120.0, 230.0, 240.0]),
    st.floats(0, 10, allow_nan=False),
    st.floats(0, 60, allow_nan=False),
)
capabilities = st.builds(
    ChargerCapabilities,
    rate_units=st.sampled_from(
        [(RateUnit.AMPS,), (RateUnit.WATTS,), (RateUnit.AMPS, RateUnit.WATTS)]
    ),
    max_stack_level=st.integers(1, 10),
    max_periods=st.integers(1, 48),
)
limits = st.one_of(
    st.floats(0, 100_000, allow_nan=False), st.sampled_from([0.0, 1380.0, 4140.0, 1e12])
)


@st.composite
def schedules(draw: st.DrawFn) -> list[PowerPeriod]:
    count = draw(st.integers(1, 60))
    first = NOW + timedelta(seconds=draw(st.integers(-7200, 3600)))
    gaps = draw(
        st.lists(st.floats(0.001, 3600, allow_nan=False), min_size=count - 1, max_size=count - 1)
    )
    starts = [first]
    for gap in gaps:
        starts.append(starts[-1] + timedelta(seconds=gap))
    return [PowerPeriod(start, draw(limits)) for start in starts]


targets = st.one_of(
    st.builds(ProfileTarget, st.just(Layer.DYNAMIC), st.just(Purpose.STATION_MAX), st.just(0)),
    st.builds(
        ProfileTarget, st.just(Layer.DYNAMIC), st.just(Purpose.TX_DEFAULT), st.integers(0, 4)
    ),
    st.builds(
        ProfileTarget,
        st.just(Layer.DYNAMIC),
        st.just(Purpose.TX),
        st.integers(1, 4),
        st.integers(1, 2**31 - 1).map(str),
    ),
)


def check_payload_honours_capabilities(
    version: ProtocolVersion,
    payload: dict[str, Any],
    caps: ChargerCapabilities,
    electrical: ElectricalData,
) -> None:
    profile = profile_of(version, payload)
    schedule = schedule_of(version, payload)
    assert profile["stackLevel"] <= caps.max_stack_level
    assert profile["chargingProfileKind"] == "Absolute"
    assert TIMESTAMP.match(schedule["startSchedule"])  # EVerest K01.FR.40, CitrineOS precision
    for key in ("validFrom", "validTo"):
        if key in profile:
            assert TIMESTAMP.match(profile[key])
    assert schedule["chargingRateUnit"] in {u.value for u in caps.rate_units}
    periods = schedule["chargingSchedulePeriod"]
    assert 1 <= len(periods) <= caps.max_periods
    assert periods[0]["startPeriod"] == 0
    starts = [p["startPeriod"] for p in periods]
    assert starts == sorted(set(starts))
    unit = RateUnit(schedule["chargingRateUnit"])
    per = 1.0 if unit is RateUnit.AMPS else electrical.watts_per_amp
    for period in periods:
        limit = period["limit"]
        assert isinstance(limit, int)
        assert limit >= 0
        assert limit <= electrical.max_current_a * per + 1e-6  # never unbounded
        assert limit == 0 or limit >= electrical.min_current_a * per - 1e-6
        assert period["numberPhases"] == electrical.phases


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(list(ProtocolVersion)),
    caps=capabilities,
    electrical=electricals,
    periods=schedules(),
    target=targets,
    validity_s=st.integers(60, 3600),
    schedule_id=st.integers(1, 2**31 - 1),
)
def test_every_dynamic_payload_is_valid_and_within_capabilities(
    version: ProtocolVersion,
    caps: ChargerCapabilities,
    electrical: ElectricalData,
    periods: list[PowerPeriod],
    target: ProfileTarget,
    validity_s: int,
    schedule_id: int,
) -> None:
    valid_to = NOW + timedelta(seconds=validity_s)
    if all(p.start >= valid_to for p in periods):
        # The only refusal for a well-formed schedule: everything starts after validTo.
        with pytest.raises(ProfileError, match="after validTo"):
            build_dynamic_profile(
                version, target, caps, electrical, periods, NOW, valid_to, schedule_id, 4_140
            )
        return
    built = build_dynamic_profile(
        version, target, caps, electrical, periods, NOW, valid_to, schedule_id, fill_limit_w=4_140
    )
    schema_valid(version, built.payload)
    check_payload_honours_capabilities(version, built.payload, caps, electrical)
    assert built.valid_to is not None
    assert NOW < built.valid_to <= valid_to
    profile = profile_of(version, built.payload)
    assert profile["stackLevel"] >= 1  # above the safe layer
    if version is ProtocolVersion.OCPP201:
        assert schedule_of(version, built.payload)["id"] == schedule_id
    if target.purpose is Purpose.STATION_MAX:
        assert built.payload.get("connectorId", built.payload.get("evseId")) == 0


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from(list(ProtocolVersion)),
    caps=capabilities,
    electrical=electricals,
    limit_w=limits,
    purpose=st.sampled_from([Purpose.STATION_MAX, Purpose.TX_DEFAULT]),
)
def test_every_safe_payload_is_valid_and_static(
    version: ProtocolVersion,
    caps: ChargerCapabilities,
    electrical: ElectricalData,
    limit_w: float,
    purpose: Purpose,
) -> None:
    built = build_safe_profile(
        version, ProfileTarget(Layer.SAFE, purpose), caps, electrical, limit_w, NOW, 5
    )
    schema_valid(version, built.payload)
    check_payload_honours_capabilities(version, built.payload, caps, electrical)
    assert "validTo" not in profile_of(version, built.payload)
    assert profile_of(version, built.payload)["stackLevel"] == 0


@settings(max_examples=200, deadline=None)
@given(periods=schedules(), electrical=electricals)
def test_planned_limits_never_exceed_the_request_where_it_applies(
    periods: list[PowerPeriod], electrical: ElectricalData
) -> None:
    """At every kept start the sent limit (in W) is at most what was asked for then."""
    try:
        start, offsets, _ = plan_periods(
            periods, NOW, NOW + timedelta(hours=2), 1000, RateUnit.WATTS, electrical, 0.0
        )
    except ProfileError:
        return
    for offset, limit in offsets:
        moment = start + timedelta(seconds=offset)
        asked = [p.limit_w for p in periods if p.start <= max(moment, NOW)]
        wanted = asked[-1] if asked else 0.0
        assert limit <= max(0.0, wanted) + 1e-6 or limit == 0
