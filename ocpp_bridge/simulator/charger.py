"""What the 1.6 and 2.0.1 connections of a simulated station share: the profile store behind
the handlers, SetChargingProfile/ClearChargingProfile/GetCompositeSchedule on it, the
StartTransaction id known before the next frame, and the MeterValue shape."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ocpp_bridge.simulator.common import ProtocolName, RealClock, SimClock, frame_log, log, ts
from ocpp_bridge.simulator.schedule import ProfileRefused, ProfileStore, StoredProfile, StoreLimits


class ProfileListener(Protocol):
    """What a station does around profile changes (integrate energy, then re-plan power), and
    for a CSMS's TriggerMessage (send the current state it asks for)."""

    def profiles_changing(self) -> None: ...

    def profiles_changed(self, installed: StoredProfile | None = None) -> None: ...

    def triggered(self, requested: str, evse_id: int | None) -> bool: ...


class SimChargerBase:
    """State and handlers both versions share; the version classes add the payload shapes."""

    store: ProfileStore
    refuse_purposes: set[str]
    calls_received: list[str]
    clock: SimClock
    listener: ProfileListener | None
    strict: bool
    id: str
    _connection: Any
    route_map: dict[str, dict[str, Any]]
    _pending_starts: dict[str, tuple[int, datetime]]
    last_id_tag_status: str | None

    _library_class: Any  # the `ocpp` library's ChargePoint of the version
    protocol: ClassVar[ProtocolName]  # the subprotocol its connection asks for

    def __init__(
        self,
        charger_id: str,
        connection: Any,
        refuse_purposes: set[str] | None = None,
        *,
        store: ProfileStore | None = None,
        clock: SimClock | None = None,
        listener: ProfileListener | None = None,
        strict: bool = True,
        response_timeout_s: float = 10.0,
    ) -> None:
        self._library_class.__init__(
            self, charger_id, connection, response_timeout=response_timeout_s, logger=frame_log
        )
        self.store = store if store is not None else self._default_store()
        self.refuse_purposes = set(refuse_purposes or ())
        self.calls_received = []
        self.clock = clock or RealClock()
        self.listener = listener
        self.strict = strict
        self._pending_starts = {}
        self.last_id_tag_status = None
        if not strict:
            for route in self.route_map.values():
                route["_skip_schema_validation"] = True
        self._advertise(self.store.limits)

    @staticmethod
    def _default_store() -> ProfileStore:
        return ProfileStore()

    def _advertise(self, limits: StoreLimits) -> None:
        """The configuration keys (1.6) or variables (2.0.1) that tell the CSMS the limits."""

    async def call(self, payload: Any, suppress: bool = True, **kwargs: Any) -> Any:
        kwargs.setdefault("skip_schema_validation", not self.strict)
        return await super().call(payload, suppress, **kwargs)  # type: ignore[misc]

    def _now(self) -> datetime:
        return self.clock.now()

    def _receive_profile(self, profile: dict[str, Any]) -> bool:
        """A SetChargingProfile arrives: counted and kept in the history whatever becomes of
        it; False for a purpose this station is set to refuse (`refuse_purposes`)."""
        self.calls_received.append("SetChargingProfile")
        self.store.history.append(profile)
        return profile["charging_profile_purpose"] not in self.refuse_purposes

    def _install(self, profile: StoredProfile) -> ProfileRefused | None:
        """Install a received profile; what refused it (logged), None when it is installed."""
        try:
            self.store.check(profile)
        except ProfileRefused as refused:
            log.info("%s refused a profile: %s", self.id, refused)
            return refused
        if self.listener is not None:
            self.listener.profiles_changing()
        self.store.install(profile)
        if self.listener is not None:
            self.listener.profiles_changed(profile)
        return None

    def _clear(self, **criteria: Any) -> bool:
        if self.listener is not None:
            self.listener.profiles_changing()
        found = self.store.clear(**criteria)
        if self.listener is not None:
            self.listener.profiles_changed()
        return found

    def _composite(self, evse_id: int, duration: int, unit: str | None) -> dict[str, Any] | None:
        if evse_id != 0 and evse_id not in self.store.evse_ids:
            return None
        now = self._now().replace(microsecond=0)
        periods = self.store.composite(now, duration, evse_id)
        wanted = unit if unit in ("A", "W") else "A"
        phases = self.store.phases
        out: list[dict[str, Any]] = []
        for offset, amps in periods:
            limit = amps if wanted == "A" else float(math.floor(amps * self.store.volts * phases))
            out.append({"startPeriod": offset, "limit": limit})
        return {
            "start": now,
            "unit": wanted,
            "periods": out,
        }

    async def route_message(self, raw_msg: str) -> None:
        """A StartTransaction.conf gives the transaction id: known before the next frame
        (e.g. the TxProfile a CSMS sends right after it) is handled, as on a real charger."""
        if self._pending_starts:
            with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
                message = json.loads(raw_msg)
                if message[0] == 3 and message[1] in self._pending_starts:
                    evse_id, started_at = self._pending_starts.pop(message[1])
                    self.store.transaction_started(
                        evse_id, str(message[2]["transactionId"]), started_at
                    )
        await super().route_message(raw_msg)  # type: ignore[misc]


def meter_value(
    protocol: ProtocolName,
    at: datetime,
    wh: float,
    w: float | None,
    amps: Sequence[float] = (),
    context: str = "Sample.Periodic",
) -> dict[str, Any]:
    """One MeterValue: energy register, total power, current per phase in use.

    1.6 writes values as strings with a ``unit`` (§7.33 SampledValue), 2.0.1 as numbers with
    ``unitOfMeasure`` (SampledValueType); the measurands and contexts are spelled alike.
    """
    samples: list[tuple[str, float, str, str | None, int]] = [
        ("Energy.Active.Import.Register", wh, "Wh", None, 1)
    ]
    if w is not None:
        samples.append(("Power.Active.Import", w, "W", None, 1))
    for line, current in zip(("L1", "L2", "L3"), amps, strict=False):
        samples.append(("Current.Import", current, "A", line, 2))
    sampled: list[dict[str, Any]] = []
    for measurand, value, unit, phase, decimals in samples:
        item: dict[str, Any] = {"context": context, "measurand": measurand, "location": "Outlet"}
        if protocol is ProtocolName.OCPP16:
            item.update(value=f"{value:.{decimals}f}", unit=unit)
        else:
            item.update(value=round(value, decimals), unitOfMeasure={"unit": unit})
        if phase is not None:
            item["phase"] = phase
        sampled.append(item)
    return {"timestamp": ts(at), "sampledValue": sampled}
