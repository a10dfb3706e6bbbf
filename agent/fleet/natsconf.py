"""nats-server configuration for the fleet bus: a 3-node JetStream cluster, its users, and the
optional leaf node on a site's gateway.

Pure: text in, text out, no I/O, so the files an operator installs and the ones the test
cluster runs are rendered by the same code (docs/fleet.md, "Bus").

Every fleet user lives in one account, `FLEET`, with JetStream enabled. The `central` user (the
aggregator processes) may do anything in it. A site user `site-<id>` may only:

- publish its own upstream messages, `fleet.up.<id>.>` (the stream FLEET_UP stores them and
  answers with a publish acknowledgement to the site's inbox);
- pull from its own durable consumer `site-<id>` on FLEET_CMD
  (`$JS.API.CONSUMER.MSG.NEXT.FLEET_CMD.site-<id>`), read that consumer's state
  (`$JS.API.CONSUMER.INFO.FLEET_CMD.site-<id>`) and acknowledge its messages
  (`$JS.ACK.FLEET_CMD.site-<id>.>`); with a JetStream domain (for clients behind a leaf
  node) also the first two as `$JS.<domain>.API...`;
- subscribe to its own reply subjects `_INBOX_<id>.>` (the client's `inbox_prefix`).

It cannot create or delete consumers or streams, read another site's consumer, publish under
another site's subjects, or receive anything but replies addressed to its own inbox prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.fleet.protocol import CMD_STREAM, check_site, site_consumer

ACCOUNT = "FLEET"
CENTRAL_USER = "central"
DEFAULT_CLUSTER = "flexbridge-fleet"

# What a quoted string in a nats-server configuration can carry without escapes the server's
# lexer might read differently from JSON: printable ASCII except quote, backslash and space.
# Bcrypt hashes (`$2a$11$...`, made with `nats-server --signal` or `nats server passwd`) fit.
_SECRET = re.compile(r"^[!#-\[\]-~]{8,256}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")


def site_user(site: str) -> str:
    """The NATS user name of a site (the same as its durable consumer's name)."""
    return f"site-{check_site(site)}"


def site_inbox_prefix(site: str) -> str:
    """The reply-subject prefix a site's client must use (nats-py `inbox_prefix`)."""
    return f"_INBOX_{check_site(site)}"


@dataclass(frozen=True)
class SiteCredentials:
    site: str
    password: str

    def __post_init__(self) -> None:
        check_site(self.site)
        _check_secret(self.password, f"password of site {self.site!r}")


@dataclass(frozen=True)
class Node:
    """One cluster node: its name (JetStream `server_name`) and the ports it listens on."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    http_port: int
    store_dir: str
    leaf_port: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"node name {self.name!r} must match {_NAME.pattern}")
        if not _HOST.match(self.host):
            raise ValueError(f"node host {self.host!r} is not a host name or address")
        for label, port in (
            ("client_port", self.client_port),
            ("cluster_port", self.cluster_port),
            ("http_port", self.http_port),
            ("leaf_port", self.leaf_port),
        ):
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"{label} {port} of node {self.name!r} is not a TCP port")
        if not self.store_dir or "\n" in self.store_dir:
            raise ValueError(f"store_dir of node {self.name!r} must be one line")

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    central_password: str
    route_password: str
    name: str = DEFAULT_CLUSTER
    max_memory_store: str = "256MB"
    max_file_store: str = "4GB"
    # A JetStream domain lets clients behind a leaf node reach the cluster's JetStream API as
    # `$JS.<domain>.API` (a leaf node without JetStream of its own may not use `$JS.API`).
    domain: str | None = None

    def __post_init__(self) -> None:
        if len(self.nodes) < 3 or len(self.nodes) % 2 == 0:
            # JetStream's Raft needs a majority: 3 nodes survive one loss, 5 survive two.
            raise ValueError(
                f"a JetStream cluster needs an odd number >= 3 of nodes, not {len(self.nodes)}"
            )
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        if not _NAME.match(self.name):
            raise ValueError(f"cluster name {self.name!r} must match {_NAME.pattern}")
        _check_secret(self.central_password, "central password")
        _check_secret(self.route_password, "route password")
        if self.domain is not None and not _NAME.match(self.domain):
            raise ValueError(f"JetStream domain {self.domain!r} must match {_NAME.pattern}")
        for size in (self.max_memory_store, self.max_file_store):
            if not re.match(r"^[1-9][0-9]{0,5}(KB|MB|GB|TB)$", size):
                raise ValueError(f"store size {size!r} must be like 256MB or 4GB")

    @property
    def client_urls(self) -> list[str]:
        return [n.client_url for n in self.nodes]


def _check_secret(secret: str, what: str) -> None:
    if not _SECRET.match(secret):
        raise ValueError(
            f"{what} must be 8-256 printable ASCII characters without space, quote or backslash"
        )


def _q(text: str) -> str:
    return json.dumps(text)


def site_permissions(site: str, domain: str | None = None) -> dict[str, dict[str, list[str]]]:
    """What `site-<id>` may publish and subscribe to (module docstring); with a JetStream
    `domain` also the same API calls under `$JS.<domain>.API` (through a leaf node)."""
    consumer = site_consumer(site)
    prefixes = ["$JS.API"] + ([f"$JS.{domain}.API"] if domain is not None else [])
    api = [
        f"{prefix}.CONSUMER.{call}.{CMD_STREAM}.{consumer}"
        for prefix in prefixes
        for call in ("MSG.NEXT", "INFO")
    ]
    return {
        "publish": {
            "allow": [
                f"fleet.up.{site}.>",
                *api,
                f"$JS.ACK.{CMD_STREAM}.{consumer}.>",
            ]
        },
        "subscribe": {"allow": [f"{site_inbox_prefix(site)}.>"]},
    }


def _users(cluster: Cluster, sites: Sequence[SiteCredentials]) -> list[str]:
    seen: set[str] = set()
    lines = [f"      {{user: {_q(CENTRAL_USER)}, password: {_q(cluster.central_password)}}}"]
    for creds in sites:
        if creds.site in seen:
            raise ValueError(f"site {creds.site!r} listed twice")
        seen.add(creds.site)
        perms = json.dumps(site_permissions(creds.site, cluster.domain))
        lines.append(
            f"      {{user: {_q(site_user(creds.site))}, password: {_q(creds.password)}, "
            f"permissions: {perms}}}"
        )
    return lines


def render_node(cluster: Cluster, index: int, sites: Sequence[SiteCredentials]) -> str:
    """The configuration file of node `index` of `cluster`, with every site's user."""
    node = cluster.nodes[index]
    routes = [
        f"nats-route://route:{cluster.route_password}@{other.host}:{other.cluster_port}"
        for i, other in enumerate(cluster.nodes)
        if i != index
    ]
    lines = [
        '# Rendered by agent.fleet.natsconf; see docs/fleet.md, "Bus".',
        f"server_name: {_q(node.name)}",
        f"listen: {_q(f'{node.host}:{node.client_port}')}",
        f"http: {_q(f'{node.host}:{node.http_port}')}",
        # A site's commands are small; anything near this is a bug, not a message.
        "max_payload: 1MB",
        "jetstream {",
        f"  store_dir: {_q(node.store_dir)}",
        f"  max_memory_store: {cluster.max_memory_store}",
        f"  max_file_store: {cluster.max_file_store}",
        *([f"  domain: {_q(cluster.domain)}"] if cluster.domain is not None else []),
        "}",
        "cluster {",
        f"  name: {_q(cluster.name)}",
        f"  listen: {_q(f'{node.host}:{node.cluster_port}')}",
        f"  authorization {{ user: route, password: {_q(cluster.route_password)} }}",
        f"  routes: {json.dumps(routes)}",
        "}",
    ]
    if node.leaf_port is not None:
        lines += [
            "leafnodes {",
            f"  listen: {_q(f'{node.host}:{node.leaf_port}')}",
            "}",
        ]
    lines += [
        "accounts {",
        f"  {ACCOUNT}: {{",
        "    jetstream: enabled",
        "    users: [",
        ",\n".join(_users(cluster, sites)),
        "    ]",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_leaf(
    site: SiteCredentials,
    hub_leaf_urls: Sequence[str],
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 4222,
    local_password: str,
) -> str:
    """A nats-server on the site's gateway, leaf node of the cluster as `site-<id>`.

    The site agent connects to it on loopback (user `agent`, `local_password`) instead of to
    the cluster across the WAN, so its client connection never drops with the WAN; the leaf
    connection carries the site's credentials, and the cluster applies the site's permissions
    to everything that crosses it. It stores nothing: while the WAN is down a publish finds no
    stream (no responders, BusUnavailable) and the message stays in the site's SQLite outbox,
    which is what carries a long outage.
    """
    _check_secret(local_password, "local password")
    if not hub_leaf_urls:
        raise ValueError("a leaf node needs at least one cluster leafnode URL")
    remotes = []
    for url in hub_leaf_urls:
        match = re.match(r"^nats-leaf://([A-Za-z0-9.:\[\]-]+):([0-9]{1,5})$", url)
        if match is None:
            raise ValueError(f"{url!r} is not nats-leaf://host:port")
        remotes.append(f"nats-leaf://{site_user(site.site)}:{site.password}@{match[1]}:{match[2]}")
    if not 1 <= listen_port <= 65535:
        raise ValueError(f"listen_port {listen_port} is not a TCP port")
    return (
        "\n".join(
            [
                '# Rendered by agent.fleet.natsconf; see docs/fleet.md, "Leaf node".',
                f"server_name: {_q('leaf-' + site.site)}",
                f"listen: {_q(f'{listen_host}:{listen_port}')}",
                "authorization {",
                f"  users: [{{user: agent, password: {_q(local_password)}}}]",
                "}",
                "leafnodes {",
                "  remotes: [",
                f"    {{urls: {json.dumps(remotes)}}}",
                "  ]",
                "}",
            ]
        )
        + "\n"
    )
