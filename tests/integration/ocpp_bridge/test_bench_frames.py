"""`python -m bench frames` runs end to end: every hostile frame under the limit is answered,
every oversized one closes its connection with 1009, and the ratio comes last."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
KINDS = ("fuzz_huge_payload", "fuzz_deep_lists", "fuzz_deep_payload", "fuzz_not_json")


def test_frames_bench_answers_every_frame_and_prints_the_ratio_last() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "frames", "--quiet", "3", "--hostile", "4"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    figures = {name: float(value) for name, value in (line.split(": ", 1) for line in lines)}
    assert lines[-1].startswith("neighbour_p99_hostile_over_quiet: ")
    connections = figures["fuzz_connections"]
    frames = sum(figures[kind] for kind in KINDS)
    assert connections >= 1
    assert frames > 0
    assert figures["fuzz_answers"] == frames + connections  # each frame, and each sentinel
    assert figures.get("fuzz_closed_1009", 0) == figures.get("fuzz_oversized", 0)
    assert figures["neighbour_quiet_round_trips"] > 0
    assert figures["neighbour_hostile_round_trips"] > 0
