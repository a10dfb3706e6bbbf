"""``python -m ocpp_bridge.simulator``: a fleet of simulated stations in a process of its own."""

from ocpp_bridge.simulator import main

main()
