"""One OCPP 1.6J connection of a simulated charge point."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16

from ocpp_bridge.simulator.charger import SimChargerBase, meter_value
from ocpp_bridge.simulator.common import ProtocolName, after, on, ts
from ocpp_bridge.simulator.schedule import StoreLimits, stored_profile


class SimCharger16(SimChargerBase, CP16):  # type: ignore[misc]
    """One OCPP 1.6J connection of a simulated charge point."""

    _library_class = CP16
    protocol = ProtocolName.OCPP16
    configuration: dict[str, str]

    def _advertise(self, limits: StoreLimits) -> None:
        self.configuration = {
            "ChargeProfileMaxStackLevel": str(limits.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": ",".join(
                {"A": "Current", "W": "Power"}[u] for u in sorted(limits.units)
            ),
            "ChargingScheduleMaxPeriods": str(limits.max_periods),
            "MaxChargingProfilesInstalled": str(limits.max_installed),
            "NumberOfConnectors": str(len(self.store.evse_ids)),
        }

    @on(A16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **kwargs: Any) -> Any:
        self.calls_received.append("GetConfiguration")
        wanted = key or list(self.configuration)
        known = [
            {"key": k, "readonly": True, "value": self.configuration[k]}
            for k in wanted
            if k in self.configuration
        ]
        unknown = [k for k in wanted if k not in self.configuration]
        return r16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(A16.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **kwargs: Any
    ) -> Any:
        profile = cs_charging_profiles
        if not self._receive_profile(profile):
            return r16.SetChargingProfile(status="NotSupported")
        stored = stored_profile(
            profile, profile["charging_schedule"], profile["charging_profile_id"], connector_id
        )
        refused = self._install(stored)
        return r16.SetChargingProfile(status="Accepted" if refused is None else "Rejected")

    @on(A16.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("ClearChargingProfile")
        found = self._clear(
            profile_id=id,
            evse_id=connector_id,
            purpose=charging_profile_purpose,
            stack_level=stack_level,
        )
        return r16.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @on(A16.get_composite_schedule)
    def on_get_composite_schedule(
        self,
        connector_id: int,
        duration: int,
        charging_rate_unit: str | None = None,
        **kwargs: Any,
    ) -> Any:
        self.calls_received.append("GetCompositeSchedule")
        composite = self._composite(connector_id, duration, charging_rate_unit)
        if composite is None:
            return r16.GetCompositeSchedule(status="Rejected")
        return r16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=ts(composite["start"]),
            charging_schedule={
                "duration": duration,
                "startSchedule": ts(composite["start"]),
                "chargingRateUnit": composite["unit"],
                "chargingSchedulePeriod": composite["periods"],
            },
        )

    @on(A16.trigger_message)
    def on_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **kwargs: Any
    ) -> Any:
        self.calls_received.append("TriggerMessage")
        known = requested_message in ("StatusNotification", "MeterValues", "Heartbeat")
        return r16.TriggerMessage(status="Accepted" if known else "NotImplemented")

    @after(A16.trigger_message)
    def after_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **kwargs: Any
    ) -> None:
        """The triggered message goes out after the CALLRESULT, through the station's outbox
        (1.6 F04: the requested message follows the response)."""
        if self.listener is not None:
            self.listener.triggered(requested_message, connector_id)

    # --- messages the charge point sends --------------------------------------------------

    async def boot(self, vendor: str = "Sim", model: str = "Sim16", **extra: Any) -> Any:
        return await self.call(
            c16.BootNotification(charge_point_vendor=vendor, charge_point_model=model, **extra)
        )

    async def heartbeat(self) -> Any:
        return await self.call(c16.Heartbeat())

    async def status(self, connector_id: int, status: str) -> None:
        await self.call(
            c16.StatusNotification(
                connector_id=connector_id,
                error_code="NoError",
                status=status,
                timestamp=ts(self._now()),
            )
        )

    async def authorize(self, id_tag: str) -> str:
        result = await self.call(c16.Authorize(id_tag=id_tag))
        return str(result.id_tag_info["status"]) if result is not None else "Invalid"

    async def start_transaction(
        self,
        connector_id: int,
        meter_start: int,
        id_tag: str = "TAG1",
        timestamp: datetime | None = None,
    ) -> int:
        unique_id = str(uuid.uuid4())
        started_at = timestamp or self._now()
        self._pending_starts[unique_id] = (connector_id, started_at)
        try:
            result = await self.call(
                c16.StartTransaction(
                    connector_id=connector_id,
                    id_tag=id_tag,
                    meter_start=meter_start,
                    timestamp=ts(started_at),
                ),
                suppress=False,
                unique_id=unique_id,
            )
        finally:
            self._pending_starts.pop(unique_id, None)
        transaction_id = int(result.transaction_id)
        if self.store.transactions.get(connector_id) is None:
            self.store.transaction_started(connector_id, str(transaction_id), started_at)
        self.last_id_tag_status = str(result.id_tag_info["status"])
        return transaction_id

    async def meter_values(
        self,
        connector_id: int,
        transaction_id: int | None,
        wh: float,
        w: float,
        amps: Sequence[float] = (),
        at: datetime | None = None,
    ) -> None:
        await self.call(
            c16.MeterValues(
                connector_id=connector_id,
                transaction_id=transaction_id,
                meter_value=[meter_value(ProtocolName.OCPP16, at or self._now(), wh, w, amps)],
            )
        )

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop: int,
        reason: str = "EVDisconnected",
        at: datetime | None = None,
    ) -> None:
        moment = at or self._now()
        await self.call(
            c16.StopTransaction(
                meter_stop=meter_stop,
                timestamp=ts(moment),
                transaction_id=transaction_id,
                reason=reason,
                # The EV has stopped drawing: say so rather than leave power to be derived.
                transaction_data=[
                    meter_value(ProtocolName.OCPP16, moment, meter_stop, 0.0, (), "Transaction.End")
                ],
            ),
            suppress=False,
        )
        for evse_id, active in list(self.store.transactions.items()):
            if active.transaction_id == str(transaction_id):
                self.store.transaction_ended(evse_id)
