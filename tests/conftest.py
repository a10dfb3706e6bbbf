"""Fixtures shared by every suite: free ports, temporary state, real peer processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MISSING, MosquittoBroker, find_mosquitto
from tests.support.ports import free_port


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh state directory, as /var/lib/flexbridge would be on a gateway."""
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real broker on a free port. Missing broker: skip locally, fail under CI=true."""
    binary = find_mosquitto()
    if binary is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = MosquittoBroker(binary=binary, workdir=workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
