"""Agent test fixtures: a valid configuration and a started database on a real file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.demo.defaults import demo_config
from agent.runtime.config import Config
from agent.storage.db import Database
from agent.storage.store import SCHEMA


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return demo_config(tmp_path / "state")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "agent.sqlite", SCHEMA)
    await database.start()
    yield database
    await database.stop()
