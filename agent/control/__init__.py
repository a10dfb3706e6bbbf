"""Control: what the chargers are made to do. Each round turns the site model, the forecast
and the accepted orders into per-charger schedules within the site cap, pushes them through
ocpp_bridge and reads back what the chargers applied."""
