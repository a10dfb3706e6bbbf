"""Dispatch plans a relayed charger within its operator's CSMS's own profiles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.control.dispatch import Dispatcher
from ocpp_bridge.csms_profiles import CsmsProfiles
from ocpp_bridge.events import ProtocolVersion
from ocpp_bridge.profiles import ElectricalData

ISP = timedelta(minutes=15)
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
E = ElectricalData(phases=3, nominal_voltage_v=230.0)


class Bridge:
    """The CSMS's profiles per charger, as a `LocalController` keeps them."""

    def __init__(self, profiles: dict[str, CsmsProfiles]) -> None:
        self.profiles = profiles

    def csms_limit_w(
        self, charger_id: str, start: datetime, end: datetime, *, evse_id: int = 0, evses: int = 1
    ) -> float | None:
        profiles = self.profiles.get(charger_id)
        if profiles is None:
            return None
        return profiles.limit_w(start, end, E, evse_id=evse_id, evses=evses)


def tx_default(connector: int, periods: list[tuple[int, float]]) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "csChargingProfiles": {
            "chargingProfileId": 10 + connector,
            "stackLevel": 5,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": "2026-12-02T06:00:00Z",
                "duration": 3600,
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": s, "limit": a} for s, a in periods],
            },
        },
    }


def test_a_charger_plan_is_the_lower_of_ours_and_the_csms_limit_isp_by_isp() -> None:
    relayed = CsmsProfiles(ProtocolVersion.OCPP16)
    # 8 A for the first half hour, then 16 A; nothing after an hour.
    relayed.set(tx_default(0, [(0, 8.0), (1800, 16.0)]))
    two = CsmsProfiles(ProtocolVersion.OCPP16)
    two.set(tx_default(2, [(0, 6.0)]))
    dispatcher = SimpleNamespace(
        isp_seconds=900,
        bridge=Bridge({"LC": relayed, "TWO": two}),
        _evse_count=lambda cid: 2 if cid == "TWO" else 1,
    )
    grid = [T0 + k * ISP for k in range(6)]
    schedules = {
        "LC": np.full(6, 11_040.0),
        "DIRECT": np.full(6, 11_040.0),
        "TWO": np.full(6, 11_040.0),
    }
    per_evse = {("TWO", 1): np.full(6, 5_520.0), ("TWO", 2): np.full(6, 5_520.0)}
    Dispatcher._within_csms_limits(dispatcher, grid, schedules, per_evse)  # type: ignore[arg-type]
    assert schedules["LC"].tolist() == [5_520.0, 5_520.0, 11_040.0, 11_040.0, 11_040.0, 11_040.0]
    assert schedules["DIRECT"].tolist() == [11_040.0] * 6
    # EVSE 2 of TWO is held to 6 A by the CSMS; EVSE 1 and the station are not limited.
    assert schedules["TWO"].tolist() == [11_040.0] * 6
    assert per_evse[("TWO", 2)].tolist() == [6 * 690.0] * 4 + [5_520.0] * 2
    assert per_evse[("TWO", 1)].tolist() == [5_520.0] * 6
