"""The demo: a simulated site and DSO around the normal service."""
