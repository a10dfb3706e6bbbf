"""Operator-facing HTTP: status page, JSON API, Prometheus metrics, and the shared SVG chart."""
