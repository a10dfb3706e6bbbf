"""`flexbridge demo --fleet` without its servers, or with flags of the day demo: one line and a
documented exit code, nothing left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agent import cli
from agent.demo import infra


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("flexbridge-fleet-demo-*")}


@pytest.mark.parametrize(
    ("missing", "package"),
    [("find_nats_server", "apt-get install nats-server"), ("find_pg_bin", "postgresql-15")],
)
def test_a_missing_server_is_one_line_naming_its_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], missing: str, package: str
) -> None:
    monkeypatch.setattr(infra, missing, lambda: None)
    before = leftovers()
    code = cli.main(["demo", "--fleet"])
    err = capsys.readouterr().err
    assert code == cli.EX_CONFIG == 78
    assert err.count("\n") == 1, err
    assert err.startswith("error: "), err
    assert package in err, err
    assert "Traceback" not in err
    assert leftovers() <= before
    assert "demo --fleet" in cli.EXIT_CODES
    assert "not installed" in cli.EXIT_CODES


@pytest.mark.parametrize("flag", [["--keep-running"], ["--report", "x.html"], ["--state-dir", "d"]])
def test_day_demo_flags_are_refused(capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    assert cli.main(["demo", "--fleet", *flag]) == cli.EX_USAGE
    assert "does not apply to demo --fleet" in capsys.readouterr().err
