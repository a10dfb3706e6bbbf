"""`flexbridge backtest` and `flexbridge warmup` as real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "acn-caltech"


def flexbridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
        check=False,
    )


def figures(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines())


def test_backtest_prints_name_value_lines_for_ours_and_both_baselines(tmp_path: Path) -> None:
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("2019-11-28  # Thanksgiving\n")
    done = flexbridge(
        "backtest",
        "--sessions",
        *[str(p) for p in sorted(DATA.glob("*.csv.gz"))],
        "--start",
        "2019-11-18",
        "--end",
        "2019-12-01",
        "--holidays-file",
        str(holidays),
    )
    assert done.returncode == 0, done.stderr
    got = figures(done.stdout)
    assert got["test_days"] == "14"
    assert got["reconstruction"] == "asap"
    for prefix in ("ours", "seasonal_naive", "weekday_mean_4w"):
        assert float(got[f"{prefix}_nmae_pct"]) > 0
        assert 0 <= float(got[f"{prefix}_coverage_p10_p90_pct"]) <= 100
    assert float(got["ours_nmae_pct"]) < float(got["seasonal_naive_nmae_pct"])


def test_backtest_reports_bad_files_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "arrival,departure,delivered_energy (kWh)\n"
        "2019-05-01 08:00:00-07:00,2019-05-01 17:00:00-07:00,4\n"
        "2019-05-01 09:00:00-07:00,not a time,4\n"
    )
    done = flexbridge("backtest", "--sessions", str(bad))
    assert done.returncode == 65  # EX_DATAERR: a malformed input file
    assert f"{bad}:3: departure 'not a time' is not an ISO 8601 timestamp" in done.stderr


def test_warmup_compiles_once_then_loads_from_the_state_directory(state_dir: Path) -> None:
    env = {"NUMBA_CACHE_DIR": ""}  # the state directory decides, not the caller's environment
    first = flexbridge("warmup", "--state-dir", str(state_dir), env=env)
    assert first.returncode == 0, first.stderr
    assert figures(first.stdout)["kernel_cache"] == str(state_dir / "numba-cache")
    assert any((state_dir / "numba-cache").iterdir())
    second = figures(flexbridge("warmup", "--state-dir", str(state_dir), env=env).stdout)
    assert second["kernels_compiled"] == "0"
    assert int(second["kernels_loaded"]) > 0


def test_backtest_on_a_synthetic_site_with_a_public_holiday_calendar() -> None:
    done = flexbridge(
        "backtest",
        "--synthetic",
        "fleet_depot",
        "--synthetic-days",
        "70",
        "--timezone",
        "America/Los_Angeles",
        "--holidays-country",
        "US",
        "--holidays-subdivision",
        "CA",
    )
    assert done.returncode == 0, done.stderr
    got = figures(done.stdout)
    assert got["method"] == "selected"
    assert "last_selection_structure" in got
    for name in ("seasonal_naive", "weekday_mean_4w"):
        assert f"last_selection_heldout_{name}_nmae_pct" in got
        assert float(got["ours_nmae_pct"]) <= float(got[f"{name}_nmae_pct"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic", "odd_weekday", "--holidays-country", "XX"], "error: "),
        (["--synthetic", "cathedral"], "unknown synthetic site 'cathedral'"),
        ([], "either --sessions FILE ... or --synthetic NAME"),
    ],
)
def test_backtest_input_errors_are_one_line(args: list[str], message: str) -> None:
    done = flexbridge("backtest", *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
