"""Composition root: turns a validated Config into the service's components, in start order."""

from __future__ import annotations

from agent.config import Config
from agent.service import Component
from agent.statedir import StateDirectory
from agent.systemd import SystemdWatchdog


def build_components(config: Config) -> list[Component]:
    # The watchdog comes last: READY=1 means every component before it is serving.
    return [StateDirectory(config.storage.state_directory), SystemdWatchdog()]
