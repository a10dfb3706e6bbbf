"""What operators see and use: the HTTP status page and API, Prometheus metrics,
MQTT telemetry. Reads the agent through a read-only view, never the composition root."""
