"""The configuration file: the example is valid, every mistake is named with its key path."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.runtime.configfile import (
    ConfigError,
    file_problems,
    load_config,
    parse_config,
    summary,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "flexbridge.toml.example"
KEY = base64.b64encode(os.urandom(32)).decode()

MINIMAL = f"""
[site]
connection_capacity_w = 50000

[uftp]
domain = "agr.example.com"
signing_key_file = "/nonexistent/key"

[[uftp.peers]]
domain = "dso.example.com"
public_keys = ["{KEY}"]
endpoint = "https://dso.example.com/shapeshifter/api/v3/message"

[[congestion_points]]
entity_address = "ean.871685900012636543"
dso_domain = "dso.example.com"
"""


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", environ or {})
    return [str(p) for p in info.value.problems]


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.site.id == "garage-north"
    assert [c.id for c in config.ocpp.chargers] == ["CP-001", "CP-002"]
    assert config.congestion_point_of(config.ocpp.chargers[1]) == "ean.871685900012636543"
    assert summary(config)[0].startswith("site garage-north")


def test_minimal_config_takes_defaults() -> None:
    config = parse_config(MINIMAL, environ={})
    assert config.ocpp.security_profile == 1
    assert not config.ocpp.allow_security_profile_0
    assert config.uftp.isp_duration_min == 15
    assert config.storage.database_path == Path("/var/lib/flexbridge/flexbridge.sqlite")
    assert config.site.effective_safe_limit_w == 50000


def test_three_mistakes_are_all_named() -> None:
    text = MINIMAL.replace('domain = "agr.example.com"', 'domain = "localhost"')
    text = text.replace("connection_capacity_w = 50000", "connection_capacity_w = -5")
    text += "\n[mqtt]\nprot = 1883\n"
    problems = problems_of(text)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "uftp.domain: 'localhost' is not a lowercase DNS name" in joined
    assert "site.connection_capacity_w: Input should be greater than 0 (got -5)" in joined
    assert "mqtt.prot: unknown key" in joined


def test_toml_syntax_error_has_position() -> None:
    problems = problems_of("[site\nconnection_capacity_w = 1")
    assert len(problems) == 1
    assert "not valid TOML" in problems[0]
    assert "line 1" in problems[0]


def test_cross_references_are_checked_at_their_keys() -> None:
    text = MINIMAL.replace('dso_domain = "dso.example.com"', 'dso_domain = "other-dso.example.com"')
    text += textwrap.dedent(
        """
        [[ocpp.chargers]]
        id = "CP1"
        congestion_point = "ean.123456789012"
        safe_power_w = 60000
        """
    )
    problems = problems_of(text)
    assert "congestion_points[0].dso_domain: 'other-dso.example.com' is not a DSO" in problems[0]
    assert problems[1].startswith("ocpp.chargers[0].congestion_point: 'ean.123456789012'")
    assert "add up to 60000 W, more than the site's safe limit of 50000 W" in problems[2]


def test_security_profile_rules() -> None:
    sp0 = MINIMAL + "\n[ocpp]\nsecurity_profile = 0\n"
    assert "needs allow_security_profile_0 = true" in problems_of(sp0)[0]
    sp2 = MINIMAL + "\n[ocpp]\nsecurity_profile = 2\n"
    assert "needs an [ocpp.tls] table" in problems_of(sp2)[0]
    sp3 = MINIMAL + '\n[ocpp]\nsecurity_profile = 3\n[ocpp.tls]\ncert_file="a"\nkey_file="b"\n'
    assert "ca_file" in problems_of(sp3)[0]


def test_bad_public_key_and_entity_address() -> None:
    text = MINIMAL.replace(KEY, "c2hvcnQ=").replace("ean.871685900012636543", "ean.12")
    problems = problems_of(text)
    assert any("uftp.peers[0].public_keys" in p and "5 bytes" in p for p in problems)
    assert any(
        p.startswith("congestion_points[0].entity_address: 'ean.12' is not an EAN")
        for p in problems
    )


def test_cs1_public_key_form_is_accepted() -> None:
    config = parse_config(MINIMAL.replace(f'"{KEY}"', f'"cs1.{KEY}"'), environ={})
    assert config.uftp.peers[0].public_keys == [f"cs1.{KEY}"]


def test_env_overrides_secret_and_plain_values() -> None:
    text = MINIMAL + '\n[mqtt]\nenabled = true\nusername = "fb"\n'
    config = parse_config(
        text,
        environ={
            "FLEXBRIDGE_MQTT__PASSWORD": "s3cret-pass",
            "FLEXBRIDGE_UFTP__PEERS__0__ENDPOINT": "https://other.example.com/x",
            "FLEXBRIDGE_OCPP__PORT": "9100",
            "FLEXBRIDGE_CONFIG": "/ignored/path.toml",
            "FLEXBRIDGE_FAILPOINT": "trader.before-order",
            "FLEXBRIDGE_CLOCK_OFFSET_FILE": "/tmp/offset",
            "UNRELATED": "x",
        },
    )
    assert isinstance(config.mqtt.password, SecretStr)
    assert config.mqtt.password.get_secret_value() == "s3cret-pass"
    assert config.uftp.peers[0].endpoint == "https://other.example.com/x"
    assert config.ocpp.port == 9100
    assert "s3cret-pass" in config.secrets()
    assert "s3cret-pass" not in repr(config)


def test_env_override_of_missing_list_item_is_reported() -> None:
    problems = problems_of(
        MINIMAL, {"FLEXBRIDGE_UFTP__PEERS__3__ENDPOINT": "https://x.example.com"}
    )
    assert problems == [
        "env FLEXBRIDGE_UFTP__PEERS__3__ENDPOINT: list index '3' does not exist in the file"
    ]


def test_equal_safe_share_is_capped_by_charger_power() -> None:
    text = MINIMAL + '\n[[ocpp.chargers]]\nid = "A"\nphases = 1\n[[ocpp.chargers]]\nid = "B"\n'
    config = parse_config(text, environ={})
    a, b = config.ocpp.chargers
    assert config.safe_power_w(a) == min(25000, 16 * 230 * 1)
    assert config.safe_power_w(b) == min(25000, 16 * 230 * 3)


def test_duplicate_charger_ids_rejected() -> None:
    text = MINIMAL + '\n[[ocpp.chargers]]\nid = "A"\n[[ocpp.chargers]]\nid = "A"\n'
    assert "duplicate charger ids: A" in problems_of(text)[0]


def test_file_problems_reports_unreadable_key(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, environ={})
    problems = file_problems(config.model_dump())
    assert [p.path for p in problems] == ["uftp.signing_key_file"]
    assert "cannot read signing key /nonexistent/key" in problems[0].reason


def test_market_zone_must_align_isps_with_utc() -> None:
    text = MINIMAL.replace(
        'signing_key_file = "/nonexistent/key"',
        'signing_key_file = "/nonexistent/key"\nmarket_timezone = "America/St_Johns"\n'
        "isp_duration_min = 60",
    )
    assert "not a whole number of 60-minute ISPs" in problems_of(text)[0]
    ok = text.replace("isp_duration_min = 60", "isp_duration_min = 15")
    assert parse_config(ok, environ={}).uftp.market_timezone == "America/St_Johns"


def test_trading_and_metering_sections() -> None:
    text = MINIMAL + '\n[trading]\nprognosis_time = "25:00"\n[metering]\nenabled = true\n'
    problems = problems_of(text)
    assert any(
        p == "trading.prognosis_time: '25:00' is not a local time HH:MM (00:00 to 23:59)"
        for p in problems
    )
    assert any(p.startswith("metering: metering.enabled needs metering.ean") for p in problems)
    holidays = MINIMAL + '\n[forecast]\nholidays = ["2026-12-25", "christmas"]\n'
    assert "holiday 'christmas' is not a YYYY-MM-DD date" in problems_of(holidays)[0]


def test_four_kinds_of_mistake_are_named_in_one_pass(tmp_path: Path) -> None:
    """A field error, a cross-field error, an unreadable file and a wrong dso_domain: none
    hides another."""
    text = MINIMAL.replace('dso_domain = "dso.example.com"', 'dso_domain = "dso2.example.com"')
    text = text.replace(
        "connection_capacity_w = 50000", "connection_capacity_w = 50000\nsafe_limit_w = 60000"
    )
    text += "\n[ocpp]\nheartbeat_interval_s = -1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", {}, files=True)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "ocpp.heartbeat_interval_s: Input should be greater than 0" in joined
    assert "site: safe_limit_w (60000) exceeds connection_capacity_w (50000)" in joined
    assert "uftp.signing_key_file: cannot read signing key /nonexistent/key" in joined
    assert "congestion_points[0].dso_domain: 'dso2.example.com' is not a DSO" in joined


def test_field_errors_in_a_section_do_not_hide_checks_across_it() -> None:
    # The peer's key is broken (field error); its domain still counts for dso_domain, and a
    # charger with a broken key is left out of the safe-limit sum rather than guessed.
    text = MINIMAL.replace(KEY, "c2hvcnQ=").replace(
        'dso_domain = "dso.example.com"', 'dso_domain = "other.example.com"'
    )
    text += '\n[[ocpp.chargers]]\nid = "A"\nsafe_power_w = 90000\n'
    text += '\n[[ocpp.chargers]]\nid = "B"\nphases = 2\n'
    problems = problems_of(text)
    assert any(p.startswith("uftp.peers[0].public_keys") for p in problems), problems
    assert any("'other.example.com' is not a DSO" in p for p in problems), problems
    assert not any("add up to" in p for p in problems), problems
    assert any(p.startswith("ocpp.chargers[1].phases") for p in problems), problems


def test_a_safe_limit_below_the_minimum_current_is_named() -> None:
    # 20 three-phase chargers sharing 50 kW: 2500 W each, 3.6 A < 6 A: a 0 A safe profile.
    chargers = "".join(f'\n[[ocpp.chargers]]\nid = "C{i}"\n' for i in range(20))
    problems = problems_of(MINIMAL + chargers)
    assert len(problems) == 20, problems
    assert problems[0] == (
        "ocpp.chargers[0]: a safe limit of 2500 W (equal share of site.safe_limit_w) is below "
        "the charger's minimum current of 6 A x 690 W/A: its safe profile would be 0 A, which "
        "stops charging whenever the agent is gone; give it at least 4140 W"
    )
    explicit = MINIMAL + '\n[[ocpp.chargers]]\nid = "A"\nphases = 1\nsafe_power_w = 1300\n'
    assert problems_of(explicit) == [
        "ocpp.chargers[0].safe_power_w: a safe limit of 1300 W (safe_power_w) is below the "
        "charger's minimum current of 6 A x 230 W/A: its safe profile would be 0 A, which stops "
        "charging whenever the agent is gone; give it at least 1380 W"
    ]
    enough = explicit.replace("safe_power_w = 1300", "safe_power_w = 1380")
    assert parse_config(enough, environ={}).ocpp.chargers[0].safe_power_w == 1380


def test_a_charger_password_hash_password_would_refuse_is_named() -> None:
    text = MINIMAL + '\n[[ocpp.chargers]]\nid = "A"\n[[ocpp.chargers]]\nid = "B"\n'
    text += '[[ocpp.chargers]]\nid = "C"\npassword_hash = "md5$abc"\n'
    problems = problems_of(
        text,
        {
            "FLEXBRIDGE_OCPP__CHARGERS__0__PASSWORD": "short-secret",
            "FLEXBRIDGE_OCPP__CHARGERS__1__PASSWORD": "x" * 65,
        },
    )
    assert problems[0] == (
        "ocpp.chargers[0].password: has 12 characters; a charger password has 16-64 "
        "(as for flexbridge hash-password)"
    )
    assert problems[1].startswith("ocpp.chargers[1].password: has 65 characters")
    assert problems[2].startswith("ocpp.chargers[2].password_hash: not a flexbridge password")
    assert not any("short-secret" in p for p in problems)
    ok = MINIMAL + '\n[[ocpp.chargers]]\nid = "A"\n'
    config = parse_config(ok, environ={"FLEXBRIDGE_OCPP__CHARGERS__0__PASSWORD": "s" * 16})
    assert config.ocpp.chargers[0].password is not None


def test_a_secret_of_the_wrong_type_is_not_repeated() -> None:
    problems = problems_of(MINIMAL + "\n[mqtt]\npassword = 123456789\n")
    assert problems == ["mqtt.password: Input should be a valid string"]
