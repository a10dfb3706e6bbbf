"""Telemetry: MQTT state and events (with Home Assistant discovery) for dashboards."""
