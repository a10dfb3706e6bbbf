"""Fixtures of the fleet tests: a real 3-node NATS cluster and a real PostgreSQL."""

from tests.support.nats_cluster import nats_cluster
from tests.support.postgres import postgres

__all__ = ["nats_cluster", "postgres"]
