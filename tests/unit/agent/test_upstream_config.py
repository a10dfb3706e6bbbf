"""The ``[upstream]`` section (local-controller mode) and its mapping onto the bridge's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.app import build_agent
from agent.runtime.configfile import ConfigError, parse_config
from ocpp_bridge.local_controller import LocalController
from ocpp_bridge.relay import UpstreamPolicy
from ocpp_bridge.server import CentralSystem
from ocpp_bridge.settings import SecurityProfile
from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT
from tests.support.agent_env import make_env
from tests.unit.test_config import MINIMAL


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", environ or {})
    return [str(p) for p in info.value.problems]


def test_no_section_means_flexbridge_is_the_csms() -> None:
    assert parse_config(MINIMAL, environ={}).upstream is None


def test_default_and_per_charger_targets_map_onto_the_bridge_settings() -> None:
    text = (
        MINIMAL
        + """
[upstream]
url = "ws://csms.example.net:8081/ocpp"
policy = "strict"

[[upstream.chargers]]
id = "CP-7"
url = "wss://csms.example.net:8443/ocpp"
security_profile = 3
identity = "SITE1-CP-7"
cert_file = "/etc/flexbridge/cp7.pem"
key_file = "/etc/flexbridge/cp7.key"
"""
    )
    config = parse_config(text, environ={"FLEXBRIDGE_UPSTREAM__PASSWORD": "s3cret-s3cret"})
    assert config.upstream is not None
    settings = config.upstream.settings()
    assert settings.policy is UpstreamPolicy.STRICT
    default = settings.target_for("CP-1")
    assert default is not None
    assert default.security_profile is SecurityProfile.BASIC
    assert default.uri("CP-1") == "ws://csms.example.net:8081/ocpp/CP-1"
    # A configured password replaces the charger's own.
    assert default.authorization("CP-1", "charger-pw") == "Basic Q1AtMTpzM2NyZXQtczNjcmV0"
    cp7 = settings.target_for("CP-7")
    assert cp7 is not None
    assert cp7.security_profile is SecurityProfile.MUTUAL_TLS
    assert cp7.uri("CP-7") == "wss://csms.example.net:8443/ocpp/SITE1-CP-7"
    assert cp7.cert_file == Path("/etc/flexbridge/cp7.pem")
    assert cp7.authorization("CP-7", "charger-pw") is None


def test_the_charger_password_is_passed_through_by_default() -> None:
    config = parse_config(MINIMAL + '\n[upstream]\nurl = "ws://h:1/ocpp"\n', environ={})
    assert config.upstream is not None
    target = config.upstream.settings().target_for("CP-1")
    assert target is not None
    assert target.authorization("CP-1", "pw") == "Basic Q1AtMTpwdw=="
    assert config.upstream.settings().policy is UpstreamPolicy.AUTONOMOUS


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('url = "ws://h:1/ocpp"\nsecurity_profile = 2', "needs wss://"),
        ('url = "wss://h:1/ocpp"\nsecurity_profile = 3', "needs cert_file and key_file"),
        ("policy = 'autonomous'", "needs a url or at least one"),
        ('url = "http://h:1/ocpp"', "url"),
        ('url = "ws://h:1/ocpp"\nlocal_transaction_ids = [5, 1]', "local_transaction_ids"),
        ('url = "ws://h:1/ocpp"\nretries = 3', "retries"),
    ],
)
def test_bad_sections_are_named(section: str, expected: str) -> None:
    problems = problems_of(MINIMAL + "\n[upstream]\n" + section + "\n")
    assert any(expected in p and "upstream" in p for p in problems), problems


def test_the_agent_runs_a_local_controller_when_the_section_is_there(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "relayed").mkdir()
    plain = build_agent(make_env(tmp_path / "plain").config)
    assert type(plain.bridge) is CentralSystem
    relayed = build_agent(
        make_env(tmp_path / "relayed", upstream={"url": "ws://127.0.0.1:9/ocpp"}).config
    )
    assert isinstance(relayed.bridge, LocalController)
    assert relayed.bridge.upstream_settings.target_for("CP-01") is not None
    assert relayed.bridge.settings.profile_layout == LOCAL_CONTROLLER_LAYOUT
    state = relayed.config.storage.state_directory / "upstream"
    assert relayed.bridge.upstream_settings.state_dir == state
    assert plain.bridge.settings.profile_layout != LOCAL_CONTROLLER_LAYOUT


def test_profile_layout_defaults_and_overrides() -> None:
    config = parse_config(MINIMAL + '\n[upstream]\nurl = "ws://h:1/ocpp"\n', environ={})
    assert config.upstream is not None
    assert config.upstream.profiles.layout() == LOCAL_CONTROLLER_LAYOUT
    text = (
        MINIMAL + '\n[upstream]\nurl = "ws://h:1/ocpp"\n[upstream.profiles]\nsafe_profile_id = 42\n'
    )
    config = parse_config(text, environ={})
    assert config.upstream is not None
    assert config.upstream.profiles.layout().safe_profile_id == 42
    bad = (
        MINIMAL
        + '\n[upstream]\nurl = "ws://h:1/ocpp"\n[upstream.profiles]\nsafe_profile_id = 9000250\n'
    )
    assert any("upstream.profiles" in p and "overlap" in p for p in problems_of(bad))
