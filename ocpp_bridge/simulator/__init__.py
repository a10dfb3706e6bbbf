"""Simulated charging stations (OCPP 1.6J and 2.0.1, client side, on the `ocpp` library).

What flexbridge's demo, end-to-end tests and benchmarks connect instead of real chargers. A
`SimulatedStation` has N EVSEs with one connector each, connects to a CSMS URL with security
profile 1 (HTTP Basic) or TLS, reconnects with back-off when the CSMS goes away, boots, reports
status, sends heartbeats at the interval the CSMS gave, and serves EV sessions: an EV plugs in
(`plug_in`), draws min(EV maximum, what the charging profiles allow now) with IEC 61851's
0-or-at-least-6 A rule, the station meters it and reports it (1.6 MeterValues, 2.0.1
TransactionEvent), and the EV leaves at its departure time.

The package, one concern a module: `schedule` (installed profiles and the composite schedule
as OCPP describes it; pure), `state` (station data, EVSEs, EV sessions, sharing the supply;
pure), `charger`, `v16` and `v201` (one connection's handlers and messages: shared, 1.6J,
2.0.1), `client` (`open_connection`, `running`), `link` (connect, boot, reconnect, the
outbox), `station` (`SimulatedStation`: EVs, meters, power) and `cli` (the fleet process of
``python -m ocpp_bridge.simulator``). Their public names are importable from here.

Independence: this package imports nothing from the rest of `ocpp_bridge`, so the tests that
run the bridge against it check the bridge against a second, separately written reading of
the specification, not against itself.

Time: every station runs on an injected clock (`now()` UTC-aware, ``async sleep(seconds)`` in
the clock's own time; default the system clock). With a scaled clock a morning of sessions
passes in a minute; network timeouts stay in real time.
"""

from ocpp_bridge.simulator.charger import ProfileListener, meter_value
from ocpp_bridge.simulator.cli import main, run_fleet
from ocpp_bridge.simulator.client import SimCharger, basic_auth_header, open_connection, running
from ocpp_bridge.simulator.common import ProtocolName, RealClock, SimClock, after, on, parse, ts
from ocpp_bridge.simulator.link import ReconnectPolicy
from ocpp_bridge.simulator.schedule import (
    DEFAULT_LIMIT_A,
    MAX_PURPOSES,
    MIN_CURRENT_A,
    RECURRENCE_S,
    TX_DEFAULT_PURPOSE,
    TX_PURPOSE,
    VOLTS,
    ActiveTransaction,
    ProfileRefused,
    ProfileStore,
    StoredProfile,
    StoreLimits,
    stored_profile,
)
from ocpp_bridge.simulator.state import (
    EvSession,
    EvseState,
    StationSpec,
    ev_current_a,
    share_current,
)
from ocpp_bridge.simulator.station import SimulatedStation
from ocpp_bridge.simulator.v16 import SimCharger16
from ocpp_bridge.simulator.v201 import SimCharger201

__all__ = [
    "DEFAULT_LIMIT_A",
    "MAX_PURPOSES",
    "MIN_CURRENT_A",
    "RECURRENCE_S",
    "TX_DEFAULT_PURPOSE",
    "TX_PURPOSE",
    "VOLTS",
    "ActiveTransaction",
    "EvSession",
    "EvseState",
    "ProfileListener",
    "ProfileRefused",
    "ProfileStore",
    "ProtocolName",
    "RealClock",
    "ReconnectPolicy",
    "SimCharger",
    "SimCharger16",
    "SimCharger201",
    "SimClock",
    "SimulatedStation",
    "StationSpec",
    "StoreLimits",
    "StoredProfile",
    "after",
    "basic_auth_header",
    "ev_current_a",
    "main",
    "meter_value",
    "on",
    "open_connection",
    "parse",
    "run_fleet",
    "running",
    "share_current",
    "stored_profile",
    "ts",
]
