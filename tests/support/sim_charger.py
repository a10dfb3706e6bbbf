"""Simulated chargers on the `ocpp` library (client side), for what ocpp-rpc cannot show.

They keep the profiles they accept and compute their composite schedule the way OCPP
describes it (1.6 §3.13.2/§3.13.4, 2.0.1 K08): per purpose the valid profile with the
highest stack level, validity from validFrom/validTo, composite = min(station max, TxProfile
or else TxDefault). That is what the fail-safe test asserts on: after validTo the dynamic
layer drops out and the safe layer rules.

They are written independently of `ocpp_bridge` (they import nothing from it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201.enums import Action as A201

MAX_PURPOSES = {"ChargePointMaxProfile", "ChargingStationMaxProfile"}
VOLTS = 230.0
# What a charger with no profile at all would allow (EVerest: CompositeScheduleDefaultLimitAmps).
DEFAULT_LIMIT_A = 48.0


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class StoredProfile:
    profile_id: int
    evse_id: int
    stack_level: int
    purpose: str
    valid_from: datetime | None
    valid_to: datetime | None
    start: datetime
    unit: str
    periods: list[tuple[int, float, int]]  # (startPeriod, limit, numberPhases)
    transaction_id: str | None = None

    def valid_at(self, moment: datetime) -> bool:
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return not (self.valid_to is not None and moment >= self.valid_to)

    def limit_a_at(self, moment: datetime) -> float | None:
        offset = (moment - self.start).total_seconds()
        if offset < 0:
            return None
        current: tuple[int, float, int] | None = None
        for period in self.periods:
            if period[0] <= offset:
                current = period
        if current is None:
            return None
        _, limit, phases = current
        return limit if self.unit == "A" else limit / (VOLTS * phases)


@dataclass
class ProfileStore:
    """The charger's installed profiles and the rules that combine them."""

    profiles: list[StoredProfile] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def install(self, profile: StoredProfile) -> None:
        # Same id, or same stack level + purpose + EVSE, replaces (1.6 §3.13.2, K01.FR.05).
        self.profiles = [
            p
            for p in self.profiles
            if p.profile_id != profile.profile_id
            and not (
                p.stack_level == profile.stack_level
                and p.purpose == profile.purpose
                and p.evse_id == profile.evse_id
            )
        ]
        self.profiles.append(profile)

    def clear(self, profile_id: int | None = None) -> bool:
        before = len(self.profiles)
        self.profiles = [
            p for p in self.profiles if profile_id is not None and p.profile_id != profile_id
        ]
        return len(self.profiles) != before

    def _winner(self, purposes: set[str], evse_id: int, moment: datetime) -> float | None:
        candidates = [
            p
            for p in self.profiles
            if p.purpose in purposes
            and p.evse_id in ({0, evse_id} if evse_id else {0})
            and p.valid_at(moment)
            and p.limit_a_at(moment) is not None
        ]
        if not candidates:
            return None
        best = max(candidates, key=lambda p: (p.stack_level, p.evse_id))
        return best.limit_a_at(moment)

    def limit_a_at(self, moment: datetime, evse_id: int = 0) -> float:
        station = self._winner(MAX_PURPOSES, 0, moment)
        tx = self._winner({"TxProfile"}, evse_id, moment) if evse_id else None
        if tx is None:
            tx = self._winner({"TxDefaultProfile"}, evse_id, moment)
        limits = [x for x in (station, tx) if x is not None]
        return min(limits) if limits else DEFAULT_LIMIT_A

    def composite(
        self, start: datetime, duration_s: int, evse_id: int = 0
    ) -> list[tuple[int, float]]:
        end = start + timedelta(seconds=duration_s)
        moments = {start}
        for p in self.profiles:
            for m in (p.valid_from, p.valid_to):
                if m is not None and start < m < end:
                    moments.add(m)
            for offset, _, _ in p.periods:
                m = p.start + timedelta(seconds=offset)
                if start < m < end:
                    moments.add(m)
        periods: list[tuple[int, float]] = []
        for m in sorted(moments):
            limit = round(self.limit_a_at(m, evse_id), 1)
            if not periods or periods[-1][1] != limit:
                periods.append((int((m - start).total_seconds()), limit))
        return periods


def stored_profile(
    profile: dict[str, Any], schedule: dict[str, Any], profile_id: int, evse_id: int
) -> StoredProfile:
    """A received profile (snake_case, as the library hands it over) as the store keeps it."""
    transaction_id = profile.get("transaction_id")
    return StoredProfile(
        profile_id=profile_id,
        evse_id=evse_id,
        stack_level=profile["stack_level"],
        purpose=profile["charging_profile_purpose"],
        valid_from=parse(profile["valid_from"]) if profile.get("valid_from") else None,
        valid_to=parse(profile["valid_to"]) if profile.get("valid_to") else None,
        start=parse(schedule["start_schedule"]),
        unit=schedule["charging_rate_unit"],
        periods=[
            (p["start_period"], float(p["limit"]), p.get("number_phases", 3))
            for p in schedule["charging_schedule_period"]
        ],
        transaction_id=None if transaction_id is None else str(transaction_id),
    )


class _Sim:
    store: ProfileStore
    refuse_purposes: set[str]
    calls_received: list[str]

    def _init_sim(self, refuse_purposes: set[str] | None) -> None:
        self.store = ProfileStore()
        self.refuse_purposes = set(refuse_purposes or ())
        self.calls_received = []


class SimCharger16(_Sim, CP16):  # type: ignore[misc]
    def __init__(
        self, charger_id: str, connection: Any, refuse_purposes: set[str] | None = None
    ) -> None:
        CP16.__init__(self, charger_id, connection, response_timeout=10)
        self._init_sim(refuse_purposes)
        self.configuration = {
            "ChargeProfileMaxStackLevel": "5",
            "ChargingScheduleAllowedChargingRateUnit": "Current",
            "ChargingScheduleMaxPeriods": "24",
            "MaxChargingProfilesInstalled": "10",
        }

    @on(A16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        self.calls_received.append("GetConfiguration")
        from ocpp.v16 import call_result

        wanted = key or list(self.configuration)
        known = [
            {"key": k, "readonly": True, "value": self.configuration[k]}
            for k in wanted
            if k in self.configuration
        ]
        unknown = [k for k in wanted if k not in self.configuration]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown)

    @on(A16.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **kwargs: Any
    ) -> Any:
        from ocpp.v16 import call_result

        self.calls_received.append("SetChargingProfile")
        profile = cs_charging_profiles
        self.store.history.append(profile)
        purpose = profile["charging_profile_purpose"]
        if purpose in self.refuse_purposes:
            return call_result.SetChargingProfile(status="NotSupported")
        self.store.install(
            stored_profile(
                profile,
                profile["charging_schedule"],
                profile["charging_profile_id"],
                connector_id,
            )
        )
        return call_result.SetChargingProfile(status="Accepted")

    @on(A16.clear_charging_profile)
    def on_clear_charging_profile(self, id: int | None = None, **kwargs: Any) -> Any:
        from ocpp.v16 import call_result

        self.calls_received.append("ClearChargingProfile")
        found = self.store.clear(id)
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A16.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id: int, duration: int, **kwargs: Any) -> Any:
        from ocpp.v16 import call_result

        self.calls_received.append("GetCompositeSchedule")
        now = datetime.now(UTC).replace(microsecond=0)
        periods = self.store.composite(now, duration, connector_id)
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=ts(now),
            charging_schedule={
                "duration": duration,
                "startSchedule": ts(now),
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": o, "limit": limit} for o, limit in periods
                ],
            },
        )

    async def boot(self) -> Any:
        return await self.call(
            c16.BootNotification(charge_point_vendor="Sim", charge_point_model="Sim16")
        )

    async def status(self, connector_id: int, status: str) -> None:
        await self.call(
            c16.StatusNotification(connector_id=connector_id, error_code="NoError", status=status)
        )

    async def start_transaction(self, connector_id: int, meter_start: int) -> int:
        result = await self.call(
            c16.StartTransaction(
                connector_id=connector_id,
                id_tag="TAG1",
                meter_start=meter_start,
                timestamp=ts(datetime.now(UTC)),
            )
        )
        return int(result.transaction_id)

    async def meter_values(self, connector_id: int, transaction_id: int, wh: int, w: int) -> None:
        await self.call(
            c16.MeterValues(
                connector_id=connector_id,
                transaction_id=transaction_id,
                meter_value=[
                    {
                        "timestamp": ts(datetime.now(UTC)),
                        "sampledValue": [
                            {
                                "value": str(wh),
                                "measurand": "Energy.Active.Import.Register",
                                "unit": "Wh",
                            },
                            {"value": str(w), "measurand": "Power.Active.Import", "unit": "W"},
                        ],
                    }
                ],
            )
        )

    async def stop_transaction(self, transaction_id: int, meter_stop: int) -> None:
        await self.call(
            c16.StopTransaction(
                meter_stop=meter_stop,
                timestamp=ts(datetime.now(UTC)),
                transaction_id=transaction_id,
                reason="EVDisconnected",
            )
        )


class SimCharger201(_Sim, CP201):  # type: ignore[misc]
    def __init__(
        self, charger_id: str, connection: Any, refuse_purposes: set[str] | None = None
    ) -> None:
        CP201.__init__(self, charger_id, connection, response_timeout=10)
        self._init_sim(refuse_purposes)
        self.variables = {
            "RateUnit": "A,W",
            "ProfileStackLevel": "4",
            "PeriodsPerSchedule": "24",
            "IgnoredProfilePurposesOffline": "",
        }

    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        from ocpp.v201 import call_result

        self.calls_received.append("GetVariables")
        results = []
        for item in get_variable_data:
            name = item["variable"]["name"]
            result: dict[str, Any] = {
                "attributeStatus": "Accepted" if name in self.variables else "UnknownVariable",
                "component": {"name": item["component"]["name"]},
                "variable": {"name": name},
            }
            if name in self.variables:
                result["attributeValue"] = self.variables[name]
            results.append(result)
        return call_result.GetVariables(get_variable_result=results)

    @on(A201.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **kwargs: Any
    ) -> Any:
        from ocpp.v201 import call_result

        self.calls_received.append("SetChargingProfile")
        profile = charging_profile
        self.store.history.append(profile)
        purpose = profile["charging_profile_purpose"]
        if purpose in self.refuse_purposes:
            return call_result.SetChargingProfile(
                status="Rejected", status_info={"reasonCode": "UnsupportedPurpose"}
            )
        self.store.install(
            stored_profile(profile, profile["charging_schedule"][0], profile["id"], evse_id)
        )
        return call_result.SetChargingProfile(status="Accepted")

    @on(A201.clear_charging_profile)
    def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, **kwargs: Any
    ) -> Any:
        from ocpp.v201 import call_result

        self.calls_received.append("ClearChargingProfile")
        found = self.store.clear(charging_profile_id)
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A201.get_composite_schedule)
    def on_get_composite_schedule(self, duration: int, evse_id: int, **kwargs: Any) -> Any:
        from ocpp.v201 import call_result

        self.calls_received.append("GetCompositeSchedule")
        now = datetime.now(UTC).replace(microsecond=0)
        periods = self.store.composite(now, duration, evse_id)
        return call_result.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evseId": evse_id,
                "duration": duration,
                "scheduleStart": ts(now),
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": o, "limit": limit} for o, limit in periods
                ],
            },
        )

    async def boot(self) -> Any:
        return await self.call(
            c201.BootNotification(
                charging_station={"model": "Sim201", "vendor_name": "Sim"}, reason="PowerUp"
            )
        )

    async def status(self, evse_id: int, status: str) -> None:
        await self.call(
            c201.StatusNotification(
                timestamp=ts(datetime.now(UTC)),
                connector_status=status,
                evse_id=evse_id,
                connector_id=1,
            )
        )

    async def transaction_event(
        self, event_type: str, transaction_id: str, seq_no: int, wh: float, evse_id: int = 1
    ) -> Any:
        return await self.call(
            c201.TransactionEvent(
                event_type=event_type,
                timestamp=ts(datetime.now(UTC)),
                trigger_reason="MeterValuePeriodic"
                if event_type == "Updated"
                else "CablePluggedIn",
                seq_no=seq_no,
                transaction_info={"transaction_id": transaction_id},
                evse={"id": evse_id, "connector_id": 1},
                meter_value=[
                    {
                        "timestamp": ts(datetime.now(UTC)),
                        "sampled_value": [
                            {"value": wh, "measurand": "Energy.Active.Import.Register"}
                        ],
                    }
                ],
            )
        )


def basic_auth_header(identity: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def running(
    sim_class: type[SimCharger16] | type[SimCharger201],
    url: str,
    identity: str,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    refuse_purposes: set[str] | None = None,
) -> Any:
    """A connected simulated charger serving its socket in a task; closed on exit."""
    subprotocol = "ocpp1.6" if sim_class is SimCharger16 else "ocpp2.0.1"
    headers = basic_auth_header(identity, password) if password is not None else None
    ws = await websockets.connect(
        f"{url}/{identity}",
        subprotocols=[websockets.Subprotocol(subprotocol)],
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=30,
    )
    sim = sim_class(identity, ws, refuse_purposes)
    task = asyncio.create_task(sim.start())
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await task
        await ws.close()
