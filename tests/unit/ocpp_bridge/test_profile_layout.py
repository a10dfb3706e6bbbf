"""Our profiles' stack levels and ids as settings (`profiles.ProfileLayout`), so they can stay
apart from another CSMS's on a shared charger (local-controller mode)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpp_bridge.capabilities import Purpose
from ocpp_bridge.events import PowerPeriod, ProtocolVersion
from ocpp_bridge.profiles import (
    DEFAULT_LAYOUT,
    DYNAMIC_PROFILE_ID_BASE,
    MAX_EVSE_ID,
    SAFE_PROFILE_ID,
    STATION_SPLIT_PROFILE_ID_BASE,
    Layer,
    ProfileError,
    ProfileLayout,
    ProfileTarget,
    build_dynamic_profile,
    build_safe_profile,
)
from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT
from tests.unit.ocpp_bridge.test_profiles import CAPS, ELECTRICAL, NOW, profile_of, schema_valid

SHARED = ProfileLayout(
    safe_stack_level=1,
    station_dynamic_stack_level=2,
    evse_dynamic_stack_level=3,
    safe_profile_id=5_000,
    dynamic_profile_id_base=6_000,
    station_split_profile_id_base=7_000,
)


def test_the_default_layout_is_the_direct_mode_one() -> None:
    assert DEFAULT_LAYOUT.safe_profile_id == SAFE_PROFILE_ID
    assert DEFAULT_LAYOUT.dynamic_profile_id_base == DYNAMIC_PROFILE_ID_BASE
    assert DEFAULT_LAYOUT.station_split_profile_id_base == STATION_SPLIT_PROFILE_ID_BASE
    assert (DEFAULT_LAYOUT.safe_stack_level, DEFAULT_LAYOUT.evse_dynamic_stack_level) == (0, 2)
    # Local-controller mode keeps the levels and moves the ids away from a CSMS's own.
    assert LOCAL_CONTROLLER_LAYOUT.profile_ids().isdisjoint(range(1, 1_000_000))


@pytest.mark.parametrize("version", list(ProtocolVersion))
def test_profiles_are_built_with_the_layout(version: ProtocolVersion) -> None:
    safe = build_safe_profile(
        version,
        ProfileTarget(Layer.SAFE, Purpose.STATION_MAX),
        CAPS,
        ELECTRICAL,
        6_900,
        NOW,
        1,
        layout=SHARED,
    )
    schema_valid(version, safe.payload)
    profile = profile_of(version, safe.payload)
    assert (safe.profile_id, safe.stack_level, profile["stackLevel"]) == (5_000, 1, 1)
    periods = [PowerPeriod(NOW, 7_000.0)]
    for evse, (profile_id, level) in {0: (6_000, 2), 2: (6_002, 3)}.items():
        purpose = Purpose.STATION_MAX if evse == 0 else Purpose.TX_DEFAULT
        built = build_dynamic_profile(
            version,
            ProfileTarget(Layer.DYNAMIC, purpose, evse),
            CAPS,
            ELECTRICAL,
            periods,
            NOW,
            NOW + timedelta(minutes=15),
            2,
            fill_limit_w=6_900,
            layout=SHARED,
        )
        schema_valid(version, built.payload)
        assert (built.profile_id, built.stack_level) == (profile_id, level)
        assert profile_of(version, built.payload)["stackLevel"] == level


@pytest.mark.parametrize(
    "fields",
    [
        {"safe_stack_level": 2},  # not below the dynamic levels
        {"station_dynamic_stack_level": 2, "evse_dynamic_stack_level": 2},
        {"safe_profile_id": 250},  # inside the dynamic range 200..299
        {"dynamic_profile_id_base": 290},  # overlaps the split range from 300
        {"safe_profile_id": 0},
        {"station_split_profile_id_base": 2**31 - 10},
    ],
)
def test_layouts_that_collide_with_themselves_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ProfileError):
        ProfileLayout(**fields)


@given(
    st.integers(0, 5),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 10**9),
    st.integers(1, 10**9),
    st.integers(1, 10**9),
)
def test_an_accepted_layout_never_gives_two_layers_one_id_or_level(
    safe_level: int, up1: int, up2: int, safe_id: int, dynamic_base: int, split_base: int
) -> None:
    try:
        layout = ProfileLayout(
            safe_stack_level=safe_level,
            station_dynamic_stack_level=safe_level + up1,
            evse_dynamic_stack_level=safe_level + up1 + up2,
            safe_profile_id=safe_id,
            dynamic_profile_id_base=dynamic_base,
            station_split_profile_id_base=split_base,
        )
    except ProfileError:
        return
    evses = range(MAX_EVSE_ID + 1)
    ids = [safe_id] + [dynamic_base + e for e in evses] + [split_base + e for e in evses]
    assert len(set(ids)) == len(ids)
    assert layout.profile_ids() == frozenset(ids)


@pytest.mark.parametrize(
    ("version", "payload", "ours"),
    [
        # "Clear everything": the safe layer goes with it.
        (ProtocolVersion.OCPP16, {}, True),
        (ProtocolVersion.OCPP201, {}, True),
        (ProtocolVersion.OCPP16, {"chargingProfilePurpose": "TxDefaultProfile"}, True),
        (ProtocolVersion.OCPP201, {"chargingProfileCriteria": {"evseId": 1}}, True),
        # One of our ids or stack levels.
        (ProtocolVersion.OCPP16, {"id": LOCAL_CONTROLLER_LAYOUT.safe_profile_id}, True),
        (
            ProtocolVersion.OCPP201,
            {"chargingProfileId": LOCAL_CONTROLLER_LAYOUT.dynamic_profile_id_base + 1},
            True,
        ),
        (ProtocolVersion.OCPP16, {"stackLevel": LOCAL_CONTROLLER_LAYOUT.safe_stack_level}, True),
        # The CSMS keeping to its own ids and stack levels leaves ours alone.
        (ProtocolVersion.OCPP16, {"id": 7}, False),
        (ProtocolVersion.OCPP201, {"chargingProfileId": 7}, False),
        (ProtocolVersion.OCPP16, {"stackLevel": 5, "chargingProfilePurpose": "TxProfile"}, False),
        (
            ProtocolVersion.OCPP201,
            {"chargingProfileCriteria": {"stackLevel": 5, "chargingProfilePurpose": "TxProfile"}},
            False,
        ),
    ],
)
def test_which_clears_of_another_csms_may_remove_ours(
    version: ProtocolVersion, payload: dict[str, Any], ours: bool
) -> None:
    assert LOCAL_CONTROLLER_LAYOUT.clear_may_remove_ours(version, payload) is ours
