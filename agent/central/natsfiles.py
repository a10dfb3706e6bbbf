"""`flexbridge aggregator nats-config`: the three nodes' nats-server files from one description.

An operator describes the cluster once (nodes, where the shared secrets are) and keeps one
secret file per site in a directory; adding a site is adding its file and rendering again
(`systemctl reload flexbridge-nats@nX` on each node keeps connections and streams). Secrets
never live in the description itself, so it can be versioned. The rendering is
`agent.fleet.natsconf`'s; this module only reads the files and says precisely what is wrong.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.fleet.natsconf import Cluster, Node, SiteCredentials, render_node
from agent.fleet.protocol import SITE_ID

SECRET_SUFFIX = ".secret"


class NatsFileError(Exception):
    """The description or a secret cannot be used; `exit_code` says how (sysexits)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeFile(_Model):
    name: str
    host: str
    client_port: int = 4222
    cluster_port: int = 6222
    http_port: int = 8222
    leaf_port: int | None = 7422
    store_dir: str


class ClusterFile(_Model):
    name: str = "flexbridge"
    domain: str | None = None
    max_memory_store: str = "256MB"
    max_file_store: str = "4GB"
    central_password_file: Path
    route_password_file: Path
    site_secrets_dir: Path = Field(
        description=f"one file per site, named <site id>{SECRET_SUFFIX}, holding its password "
        "or a bcrypt hash of it"
    )
    nodes: list[NodeFile]


@dataclass(frozen=True)
class Rendered:
    files: dict[str, str]
    """File name (`<node>.conf`) -> content."""
    sites: list[str]


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise NatsFileError(f"{what} {path}: {exc.strerror or exc}", 66) from None
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise NatsFileError(f"{what} {path}: must hold exactly one non-empty line", 65)
    return lines[0]


def load(path: Path) -> tuple[Cluster, list[SiteCredentials]]:
    """The cluster and every site's credentials, or NatsFileError with one clear line."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise NatsFileError(f"cluster description {path}: {exc.strerror or exc}", 66) from None
    except tomllib.TOMLDecodeError as exc:
        raise NatsFileError(f"cluster description {path}: {exc}", 78) from None
    try:
        described = ClusterFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise NatsFileError(f"cluster description {path}: {where}: {first['msg']}", 78) from None
    base = path.parent

    def under(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    central = _read_secret(under(described.central_password_file), "central password file")
    route = _read_secret(under(described.route_password_file), "route password file")
    secrets_dir = under(described.site_secrets_dir)
    try:
        entries = sorted(secrets_dir.iterdir())
    except OSError as exc:
        raise NatsFileError(f"site secrets {secrets_dir}: {exc.strerror or exc}", 66) from None
    sites: list[SiteCredentials] = []
    for entry in entries:
        if entry.suffix != SECRET_SUFFIX:
            continue
        site = entry.name[: -len(SECRET_SUFFIX)]
        try:
            sites.append(SiteCredentials(site, _read_secret(entry, "site secret")))
        except ValueError as exc:
            raise NatsFileError(
                f"site secret {entry}: {exc} (a site id matches {SITE_ID})", 65
            ) from None
    try:
        cluster = Cluster(
            nodes=tuple(Node(**n.model_dump()) for n in described.nodes),
            central_password=central,
            route_password=route,
            name=described.name,
            max_memory_store=described.max_memory_store,
            max_file_store=described.max_file_store,
            domain=described.domain,
        )
    except ValueError as exc:
        raise NatsFileError(f"cluster description {path}: {exc}", 78) from None
    return cluster, sites


def render(path: Path) -> Rendered:
    cluster, sites = load(path)
    files = {
        f"{node.name}.conf": render_node(cluster, index, sites)
        for index, node in enumerate(cluster.nodes)
    }
    return Rendered(files, [s.site for s in sites])


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Each node's file under `out`, readable by owner and group only (it holds passwords);
    written to a temporary name and renamed, so a reload never reads half a file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NatsFileError(f"output directory {out}: {exc.strerror or exc}", 73) from None
    written = []
    for name, text in rendered.files.items():
        target = out / name
        temporary = out / f".{name}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(temporary, target)
        except OSError as exc:
            raise NatsFileError(f"{target}: {exc.strerror or exc}", 73) from None
        written.append(target)
    return written
