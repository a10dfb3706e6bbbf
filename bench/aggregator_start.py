"""``python -m bench aggregator_start``: how long the aggregator's store takes to start with
many sites, their command consumers made `--in-flight` at a time.

A real 3-node nats-server cluster (tests/support/nats_cluster.py, streams with 3 replicas) and
a real PostgreSQL 15 (tests/support/postgres.py). The timed part is `agent.central.app.Store`
starting on a fresh cluster and database: the migrations, the portfolio of `--sites` sites
and a durable command consumer per site, which must all exist before the aggregator serves.
A second start on the same cluster and database times the usual restart, where every
consumer exists and is only looked at.

``--in-flight 1`` is the one-by-one pass the aggregator used to make; the default is
`agent.central.app.CONSUMERS_IN_FLIGHT`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.report import emit


async def run(args: argparse.Namespace) -> None:
    from nacl.signing import SigningKey

    from agent.central.app import Store
    from agent.central.config import NatsConfig, parse_central_config
    from agent.central.natsbus import CentralNatsBus
    from tests.support.nats_cluster import NatsCluster
    from tests.support.ports import free_port
    from tests.support.postgres import PostgresServer
    from uftp import keys

    sites = [f"s{i:03d}" for i in range(args.sites)]
    with tempfile.TemporaryDirectory(prefix="bench-aggregator-") as tmp:
        workdir = Path(tmp)
        key_file = workdir / "agr.key"
        keys.write_signing_key(key_file, SigningKey.generate())
        with NatsCluster(workdir / "nats") as cluster, PostgresServer() as postgres:
            dsn = postgres.create_database("central")
            config = parse_central_config(_config_text(dsn, key_file, free_port(), sites))
            nats = NatsConfig.model_validate(
                {"servers": cluster.client_urls, "password": cluster.central_password}
            )
            for run_name in ("first", "again"):
                bus = CentralNatsBus(nats)
                await bus.start()  # streams and the central consumer: not timed
                try:
                    store = Store(config, bus, consumers_in_flight=args.in_flight)
                    started = time.perf_counter()
                    await store.start()
                    emit(f"aggregator_store_start_{run_name}_s", time.perf_counter() - started)
                finally:
                    await bus.stop()
    emit("aggregator_sites", args.sites)
    emit("aggregator_consumers_in_flight", args.in_flight)


def _config_text(dsn: str, key_file: Path, dso_port: int, sites: list[str]) -> str:
    from nacl.signing import SigningKey

    from tests.support import uftp as build
    from uftp import keys

    listed = "\n".join(
        f'[[sites]]\nid = "{s}"\ncongestion_point = "{build.CONGESTION_POINT}"\n' for s in sites
    )
    return f"""
[uftp]
domain = "{build.AGR}"
signing_key_file = "{key_file}"

[[uftp.peers]]
domain = "{build.DSO}"
role = "DSO"
public_keys = ["{keys.public_key_b64(SigningKey.generate())}"]
endpoint = "{build.url(dso_port)}"

[database]
dsn = "{dsn}"

[nats]
servers = ["nats://127.0.0.1:4222"]
password = "unused: the store is given its bus"

[[congestion_points]]
entity_address = "{build.CONGESTION_POINT}"
dso_domain = "{build.DSO}"

{listed}
"""


def main(argv: list[str]) -> None:
    from agent.central.app import CONSUMERS_IN_FLIGHT

    parser = argparse.ArgumentParser(
        prog="python -m bench aggregator_start", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=CONSUMERS_IN_FLIGHT)
    asyncio.run(run(parser.parse_args(argv)))
