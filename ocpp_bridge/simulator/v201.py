"""One OCPP 2.0.1 connection of a simulated charging station."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from websockets.exceptions import ConnectionClosed

from ocpp_bridge.simulator.charger import SimChargerBase, meter_value
from ocpp_bridge.simulator.common import ProtocolName, after, on, ts
from ocpp_bridge.simulator.schedule import (
    MIN_CURRENT_A,
    ProfileStore,
    StoredProfile,
    StoreLimits,
    stored_profile,
)


class SimCharger201(SimChargerBase, CP201):  # type: ignore[misc]
    """One OCPP 2.0.1 connection of a simulated charging station."""

    _library_class = CP201
    protocol = ProtocolName.OCPP201
    variables: dict[str, str]

    @staticmethod
    def _default_store() -> ProfileStore:
        return ProfileStore(
            limits=StoreLimits(max_stack_level=4, units=frozenset({"A", "W"})), strict_2_0_1=True
        )

    def _advertise(self, limits: StoreLimits) -> None:
        self.variables = {
            "RateUnit": ",".join(sorted(limits.units)),
            "ProfileStackLevel": str(limits.max_stack_level),
            "PeriodsPerSchedule": str(limits.max_periods),
            "Entries": "0",  # the installed count, answered live
            "IgnoredProfilePurposesOffline": "",
        }

    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.calls_received.append("GetVariables")
        results = []
        for item in get_variable_data:
            name = item["variable"]["name"]
            result: dict[str, Any] = {
                "attributeStatus": "Accepted" if name in self.variables else "UnknownVariable",
                "component": {"name": item["component"]["name"]},
                "variable": {"name": name},
            }
            if name == "Entries":
                result["attributeValue"] = str(len(self.store.profiles))  # installed now
            elif name in self.variables:
                result["attributeValue"] = self.variables[name]
            results.append(result)
        return r201.GetVariables(get_variable_result=results)

    @on(A201.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **kwargs: Any
    ) -> Any:
        profile = charging_profile
        if not self._receive_profile(profile):
            return r201.SetChargingProfile(
                status="Rejected", status_info={"reasonCode": "UnsupportedPurpose"}
            )
        # More than one schedule needs ISO 15118 (K01.FR.34); the first one is what applies.
        stored = stored_profile(profile, profile["charging_schedule"][0], profile["id"], evse_id)
        refused = self._install(stored)
        if refused is None:
            return r201.SetChargingProfile(status="Accepted")
        return r201.SetChargingProfile(
            status="Rejected",
            status_info={"reasonCode": refused.reason[:20], "additionalInfo": str(refused)},
        )

    @on(A201.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("ClearChargingProfile")
        criteria = charging_profile_criteria or {}
        found = self._clear(
            profile_id=charging_profile_id,
            evse_id=criteria.get("evse_id"),
            purpose=criteria.get("charging_profile_purpose"),
            stack_level=criteria.get("stack_level"),
        )
        return r201.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A201.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("GetCompositeSchedule")
        composite = self._composite(evse_id, duration, charging_rate_unit)
        if composite is None:
            return r201.GetCompositeSchedule(
                status="Rejected", status_info={"reasonCode": "UnknownEVSE"}
            )
        return r201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evseId": evse_id,
                "duration": duration,
                "scheduleStart": ts(composite["start"]),
                "chargingRateUnit": composite["unit"],
                "chargingSchedulePeriod": composite["periods"],
            },
        )

    def _matching_profiles(
        self, evse_id: int | None, criteria: dict[str, Any]
    ) -> list[StoredProfile]:
        ids = criteria.get("charging_profile_id")
        sources = criteria.get("charging_limit_source")
        return [
            p
            for p in self.store.profiles
            if (evse_id is None or p.evse_id == evse_id)
            and (
                criteria.get("charging_profile_purpose") is None
                or p.purpose == criteria["charging_profile_purpose"]
            )
            and (criteria.get("stack_level") is None or p.stack_level == criteria["stack_level"])
            and (not ids or p.profile_id in ids)
            and (not sources or "CSO" in sources)
        ]

    @on(A201.get_charging_profiles)
    def on_get_charging_profiles(
        self,
        request_id: int,
        charging_profile: dict[str, Any],
        evse_id: int | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("GetChargingProfiles")
        found = self._matching_profiles(evse_id, charging_profile)
        return r201.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

    @after(A201.get_charging_profiles)
    async def report_charging_profiles(
        self,
        request_id: int,
        charging_profile: dict[str, Any],
        evse_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        """K09: the profiles follow in ReportChargingProfiles CALLs, one per EVSE."""
        found = self._matching_profiles(evse_id, charging_profile)
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for p in found:
            by_evse.setdefault(p.evse_id, []).append(p.payload)
        groups = sorted(by_evse.items())
        for index, (evse, payloads) in enumerate(groups):
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                await self.call(
                    c201.ReportChargingProfiles(
                        request_id=request_id,
                        # Profiles from a CSMS are CSO-sourced as the station sees them.
                        charging_limit_source="CSO",
                        charging_profile=payloads,
                        evse_id=evse,
                        tbc=index < len(groups) - 1 or None,
                    )
                )

    # --- messages the station sends --------------------------------------------------------

    @on(A201.trigger_message)
    def on_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("TriggerMessage")
        known = requested_message in ("StatusNotification", "TransactionEvent", "Heartbeat")
        return r201.TriggerMessage(status="Accepted" if known else "NotImplemented")

    @after(A201.trigger_message)
    def after_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """As in 1.6: the requested message follows the response (2.0.1 F06)."""
        if self.listener is not None:
            self.listener.triggered(requested_message, (evse or {}).get("id"))

    async def boot(self, vendor: str = "Sim", model: str = "Sim201", **extra: Any) -> Any:
        station = {"model": model, "vendor_name": vendor, **extra}
        return await self.call(c201.BootNotification(charging_station=station, reason="PowerUp"))

    async def heartbeat(self) -> Any:
        return await self.call(c201.Heartbeat())

    async def status(self, evse_id: int, status: str) -> None:
        await self.call(
            c201.StatusNotification(
                timestamp=ts(self._now()),
                connector_status=status,
                evse_id=evse_id,
                connector_id=1,
            )
        )

    async def authorize(self, id_token: str) -> str:
        result = await self.call(
            c201.Authorize(id_token={"id_token": id_token, "type": "ISO14443"})
        )
        return str(result.id_token_info["status"]) if result is not None else "Invalid"

    async def transaction_event(
        self,
        event_type: str,
        transaction_id: str,
        seq_no: int,
        wh: float,
        evse_id: int = 1,
        *,
        trigger_reason: str | None = None,
        w: float | None = None,
        amps: Sequence[float] = (),
        charging_state: str | None = None,
        id_token: str | None = None,
        stopped_reason: str | None = None,
        offline: bool = False,
        phases_used: int | None = None,
        at: datetime | None = None,
    ) -> Any:
        moment = at or self._now()
        context = {
            "Started": "Transaction.Begin",
            "Ended": "Transaction.End",
        }.get(event_type, "Sample.Periodic")
        info: dict[str, Any] = {"transaction_id": transaction_id}
        if charging_state is not None:
            info["charging_state"] = charging_state
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        reason = trigger_reason or {
            "Started": "CablePluggedIn",
            "Updated": "MeterValuePeriodic",
            "Ended": "EVDeparted",
        }.get(event_type, "MeterValuePeriodic")
        if event_type == "Started" and self.store.transactions.get(evse_id) is None:
            self.store.transaction_started(evse_id, transaction_id, moment)
        result = await self.call(
            c201.TransactionEvent(
                event_type=event_type,
                timestamp=ts(moment),
                trigger_reason=reason,
                seq_no=seq_no,
                transaction_info=info,
                evse={"id": evse_id, "connector_id": 1},
                meter_value=[meter_value(ProtocolName.OCPP201, moment, wh, w, amps, context)],
                id_token=None if id_token is None else {"id_token": id_token, "type": "ISO14443"},
                offline=offline or None,
                number_of_phases_used=phases_used,
            )
        )
        if event_type == "Ended":
            active = self.store.transactions.get(evse_id)
            if active is not None and active.transaction_id == transaction_id:
                self.store.transaction_ended(evse_id)
        return result

    async def notify_ev_charging_needs(
        self,
        evse_id: int,
        energy_wh: float,
        departure: datetime | None,
        max_current_a: float,
        phases: int,
        volts: float,
    ) -> Any:
        """K15 (ISO 15118): the EV's requested energy and the driver's departure time."""
        needs: dict[str, Any] = {
            "requested_energy_transfer": "AC_three_phase" if phases == 3 else "AC_single_phase",
            "ac_charging_parameters": {
                "energy_amount": round(energy_wh),
                "ev_min_current": round(MIN_CURRENT_A),
                "ev_max_current": max(round(max_current_a), round(MIN_CURRENT_A)),
                "ev_max_voltage": round(volts * 1.1),
            },
        }
        if departure is not None:
            needs["departure_time"] = ts(departure)
        return await self.call(c201.NotifyEVChargingNeeds(charging_needs=needs, evse_id=evse_id))
