"""Service lifecycle: start in order, stop in reverse, roll back on a failed start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.runtime.service import Service, ServiceError
from agent.runtime.statedir import StateDirectory, StateDirectoryError


class Recorder:
    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail

    async def start(self) -> None:
        if self.fail:
            raise OSError("address already in use")
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")


async def test_runs_until_stop_requested() -> None:
    journal: list[str] = []
    service = Service([Recorder("a", journal), Recorder("b", journal)])
    task = asyncio.create_task(service.run())
    await asyncio.sleep(0.01)
    assert journal == ["start a", "start b"]
    service.request_stop()
    await asyncio.wait_for(task, 1)
    assert journal == ["start a", "start b", "stop b", "stop a"]


async def test_failed_start_stops_what_was_started() -> None:
    journal: list[str] = []
    service = Service([Recorder("a", journal), Recorder("b", journal, fail=True)])
    with pytest.raises(ServiceError, match="b failed to start: address already in use"):
        await service.run()
    assert journal == ["start a", "stop a"]


async def test_state_directory_is_locked_for_one_agent(tmp_path: Path) -> None:
    first = StateDirectory(tmp_path / "state")
    await first.start()
    second = StateDirectory(tmp_path / "state")
    locked = r"another flexbridge process \(pid [0-9]+\) holds"
    with pytest.raises(StateDirectoryError, match=locked):
        await second.start()
    await first.stop()
    await second.start()  # free again once the first one stopped
    await second.stop()


async def test_state_directory_must_be_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateDirectoryError, match="cannot create state directory"):
        await StateDirectory(blocker / "state").start()
