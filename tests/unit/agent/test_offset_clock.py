"""OffsetClock: several processes on one timeline that a test moves ahead through a file."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.runtime.clock import (
    OFFSET_FILE_ENV,
    ClockFileError,
    OffsetClock,
    SystemClock,
    clock_from_environment,
    write_offset,
)

DAY = 86_400.0


def bracketed(clock: OffsetClock, offset_s: float) -> bool:
    """The clock's reading lies between two system readings shifted by the offset."""
    before = datetime.now(UTC)
    got = clock.now()
    after = datetime.now(UTC)
    shift = timedelta(seconds=offset_s)
    return before + shift <= got <= after + shift


def test_unset_is_the_system_clock() -> None:
    assert isinstance(clock_from_environment({}), SystemClock)
    assert isinstance(clock_from_environment({OFFSET_FILE_ENV: ""}), SystemClock)


def test_the_offset_is_read_at_start_and_again_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write_offset(path, 0)
    clock = clock_from_environment({OFFSET_FILE_ENV: str(path)})
    assert isinstance(clock, OffsetClock)
    assert bracketed(clock, 0)
    write_offset(path, 1.5 * DAY)
    assert bracketed(clock, 1.5 * DAY)
    assert clock.offset_s == 1.5 * DAY
    # Rewritten with the same size at once: the rename gives it a new inode all the same.
    write_offset(path, 2.5 * DAY)
    assert bracketed(clock, 2.5 * DAY)


def test_the_offset_never_decreases(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write_offset(path, DAY)
    clock = OffsetClock(path)
    with pytest.raises(ValueError, match="backwards"):
        write_offset(path, 10)
    # Written by other means, a smaller offset is ignored: the clock keeps the larger one.
    tmp = tmp_path / "other"
    tmp.write_text("10\n")
    tmp.replace(path)
    assert bracketed(clock, DAY)
    assert clock.offset_s == DAY


@pytest.mark.parametrize("content", ["", "tomorrow", "-5", "nan", "inf", "\xff"])
def test_a_file_without_a_number_of_seconds_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "offset"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(ClockFileError, match=str(path)):
        OffsetClock(path)
    # Broken after start: the next reading fails as loudly.
    write = tmp_path / "good"
    write_offset(write, 60)
    clock = OffsetClock(write)
    bad = tmp_path / "bad"
    bad.write_text(content, encoding="latin-1")
    bad.replace(write)
    with pytest.raises(ClockFileError, match="clock offset file"):
        clock.now()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClockFileError, match="missing"):
        clock_from_environment({OFFSET_FILE_ENV: str(tmp_path / "missing")})


def test_another_process_sees_the_skip(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write_offset(path, 3 * DAY)
    script = (
        "from agent.runtime.clock import clock_from_environment; "
        "print(clock_from_environment().now().isoformat())"
    )
    before = datetime.now(UTC)
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**_environ(), OFFSET_FILE_ENV: str(path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = datetime.now(UTC)
    seen = datetime.fromisoformat(out.strip())
    assert before + timedelta(days=3) <= seen <= after + timedelta(days=3)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != OFFSET_FILE_ENV}
