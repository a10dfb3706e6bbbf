"""The benchmark runner and its one-figure-per-line output."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bench.__main__ import available
from bench.__main__ import main as bench_main
from bench.report import best_rate, emit, format_value, percentile, ratio


def test_emit_prints_name_colon_value() -> None:
    out = io.StringIO()
    emit("uftp_e2e_per_s", 1234.5678, out)
    emit("chargers", 500, out)
    emit("ok", True, out)
    assert out.getvalue().splitlines() == ["uftp_e2e_per_s: 1235", "chargers: 500", "ok: true"]


def test_emit_refuses_names_that_are_not_snake_case() -> None:
    with pytest.raises(ValueError, match="snake_case"):
        emit("Bad Name", 1)


def test_format_value_keeps_small_figures_readable() -> None:
    assert format_value(0.000123456) == "0.0001235"
    assert format_value(12345678.9) == "12345679"


def test_percentile_matches_linear_interpolation() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 0.5) == pytest.approx(50.5)
    assert percentile(samples, 0.99) == pytest.approx(99.01)
    assert percentile([3.0], 0.9) == 3.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_ratio_and_rate() -> None:
    assert ratio(200.0, 50.0) == 4.0
    with pytest.raises(ValueError, match="positive"):
        ratio(1.0, 0.0)
    assert best_rate(lambda: None, min_time_s=0.01, repeats=1) > 0


def test_runner_lists_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["list"]) == 0
    assert "benchmarks:" in capsys.readouterr().out
    assert bench_main(["no_such_bench"]) == 2
    assert "report" not in available()
    assert "wear" in available()  # python -m bench wear
    assert "_wear_agent" not in available()  # its child process, not a benchmark


def test_agent_rss_writes_a_config_the_agent_reads(tmp_path: Path) -> None:
    import os
    import tomllib

    from agent.runtime.config import Config
    from bench.agent_rss import rss_mb, write_config

    raw = {
        "site": {"id": "bench", "timezone": "Europe/Amsterdam", "connection_capacity_w": 400_000},
        "ocpp": {
            "host": "127.0.0.1",
            "port": 9000,
            "chargers": [{"id": "RSS-0001", "congestion_point": "ean.871685900012636543"}],
        },
        "uftp": {
            "domain": "agr.flexbridge-bench.org",
            "signing_key_file": str(tmp_path / "agr.key"),
            "market_timezone": "Europe/Amsterdam",
            "peers": [
                {
                    "domain": "dso.flexbridge-bench.org",
                    "role": "DSO",
                    "public_keys": ["zQ9VV98pwlBt74ISwF1KefIngvdYo69IRRNlZuGEpjA="],
                    "endpoint": "http://127.0.0.1:1/shapeshifter/api/v3/message",
                }
            ],
        },
        "congestion_points": [
            {"entity_address": "ean.871685900012636543", "dso_domain": "dso.flexbridge-bench.org"}
        ],
        "http": {"enabled": True, "token": "t" * 24},
        "mqtt": {"enabled": False},
    }
    path = tmp_path / "flexbridge.toml"
    write_config(raw, path)
    assert tomllib.loads(path.read_text()) == raw
    Config.model_validate(tomllib.loads(path.read_text()))
    assert rss_mb(os.getpid()) > 1.0
