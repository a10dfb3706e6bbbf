"""Composition root: turns a validated Config into the service's components, in start order."""

from __future__ import annotations

from agent.config import Config
from agent.service import Component
from agent.statedir import StateDirectory


def build_components(config: Config) -> list[Component]:
    return [StateDirectory(config.storage.state_directory)]
