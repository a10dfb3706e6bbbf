"""The `[fleet]` section: a fleet site's configuration, exactly one of `[uftp]` and `[fleet]`,
its password through the environment and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.cli import EX_CONFIG, main
from agent.runtime.configfile import ConfigError, parse_config, summary

FLEET = """
[site]
id = "depot-7"
connection_capacity_w = 50000

[fleet]
servers = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
heartbeat_s = 10
password = "in-the-file-for-this-test"

[[congestion_points]]
entity_address = "ean.871685900012636543"
dso_domain = "dso.example.com"
"""

UFTP = """
[uftp]
domain = "agr.example.com"
signing_key_file = "/nonexistent/key"
"""


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", environ or {})
    return [str(p) for p in info.value.problems]


def test_a_fleet_site_needs_no_uftp_section_nor_peers() -> None:
    config = parse_config(FLEET, environ={})
    assert config.fleet is not None
    assert config.uftp_section is None
    assert config.fleet.fleet_site_id(config.site.id) == "depot-7"
    assert config.fleet.bus_user(config.site.id) == "site-depot-7"
    assert config.isp_duration_min == 15
    assert config.market_timezone == "Europe/Amsterdam"
    assert any("fleet site depot-7" in line for line in summary(config))
    with pytest.raises(RuntimeError, match="no \\[uftp\\] section"):
        _ = config.uftp


def test_exactly_one_of_uftp_and_fleet() -> None:
    both = problems_of(FLEET + UFTP)
    fleet_table = FLEET[FLEET.index("[fleet]") : FLEET.index("[[congestion_points]]")]
    neither = problems_of(FLEET.replace(fleet_table, ""))
    assert both[0] == (
        "exactly one of [uftp] (the site is its own UFTP participant) and [fleet] "
        "(a site of a fleet) is needed"
    )
    assert neither == both[:1]


def test_the_password_comes_from_the_environment_as_a_secret() -> None:
    no_password = FLEET.replace('password = "in-the-file-for-this-test"\n', "")
    [problem] = problems_of(no_password)
    assert problem.startswith("fleet: fleet.password is required")
    assert "FLEXBRIDGE_FLEET__PASSWORD" in problem
    config = parse_config(no_password, environ={"FLEXBRIDGE_FLEET__PASSWORD": "s3cret-nats"})
    assert config.fleet is not None
    assert config.fleet.password == SecretStr("s3cret-nats")
    assert "s3cret-nats" in config.secrets()
    assert "s3cret-nats" not in repr(config)


def test_fleet_keys_are_checked() -> None:
    bad = FLEET.replace('"nats://127.0.0.1:4223"', '"http://x"').replace("= 10", "= 1")
    problems = problems_of(bad)
    assert any(p.startswith("fleet.servers[1]:") for p in problems)
    assert any(p.startswith("fleet.heartbeat_s:") for p in problems)
    assert problems_of(FLEET.replace("servers = [", "serverz = [")) == [
        "fleet.servers: required key is missing",
        "fleet.serverz: unknown key (misspelt, or not supported by this version)",
    ]


def test_check_config_with_both_sections_is_one_problem_and_the_config_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(FLEET + UFTP)
    assert main(["check-config", "--no-files", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[1].strip().startswith("exactly one of [uftp]")
