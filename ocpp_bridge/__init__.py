"""OCPP 1.6J and 2.0.1 charger side: CSMS server, charger model, fail-safe charging profiles.

Upward it emits version-neutral events, downward it offers version-neutral commands in watts;
amps, phases, stack levels and the 1.6/2.0.1 differences stay inside. It imports nothing from
`agent`, `uftp` or `forecaster`. See docs/ocpp.md.

    system = CentralSystem(BridgeSettings(port=9000), registry, on_event=handle)
    await system.start()
    await system.set_dynamic_schedule("CP1", [PowerPeriod(start, 7_000)], valid_until)
"""

from ocpp_bridge.capabilities import ChargerCapabilities, Purpose, RateUnit
from ocpp_bridge.events import (
    BootInfo,
    CapabilitiesKnown,
    ChargerConnected,
    ChargerDisconnected,
    ChargerSeen,
    ChargerSnapshot,
    CommandResult,
    CommandStatus,
    CompositeSchedule,
    ConnectorStatus,
    DynamicScheduleSnapshot,
    Event,
    EvseSnapshot,
    EvseStatusChanged,
    MeterSample,
    PowerPeriod,
    ProtocolVersion,
    SessionEnded,
    SessionInfo,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.passwords import (
    PasswordHashError,
    ScryptParameters,
    hash_password,
    verify_password,
)
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.server import CentralSystem
from ocpp_bridge.settings import (
    BridgeSettings,
    ChargerRecord,
    ChargerRegistry,
    InMemoryRegistry,
    SecurityProfile,
    SettingsError,
    TlsSettings,
    UnknownChargerPolicy,
)

__all__ = [
    "BootInfo",
    "BridgeSettings",
    "CapabilitiesKnown",
    "CentralSystem",
    "ChargerCapabilities",
    "ChargerConnected",
    "ChargerDisconnected",
    "ChargerRecord",
    "ChargerRegistry",
    "ChargerSeen",
    "ChargerSnapshot",
    "CommandResult",
    "CommandStatus",
    "CompositeSchedule",
    "ConnectorStatus",
    "DynamicScheduleSnapshot",
    "ElectricalData",
    "Event",
    "EvseSnapshot",
    "EvseStatusChanged",
    "InMemoryRegistry",
    "MeterSample",
    "PasswordHashError",
    "PowerPeriod",
    "ProtocolVersion",
    "Purpose",
    "RateUnit",
    "ScryptParameters",
    "SecurityProfile",
    "SessionEnded",
    "SessionInfo",
    "SessionStarted",
    "SessionUpdated",
    "SettingsError",
    "TlsSettings",
    "UnknownChargerPolicy",
    "hash_password",
    "verify_password",
]
