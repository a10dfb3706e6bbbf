"""The central aggregator of a fleet."""
