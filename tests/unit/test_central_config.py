"""The aggregator's configuration file: every problem named at its key, secrets from the
environment, and the aggregator CLI's one-line errors with their exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from agent.central.config import parse_central_config
from agent.cli import EX_CONFIG, EX_NOINPUT, EX_USAGE, main
from agent.runtime.configfile import ConfigError
from uftp import keys

CP = "ean.871685900012636543"


def text(key_file: Path, *, extra: str = "", dso: str = "dso.example.com") -> str:
    peer_key = keys.public_key_b64(SigningKey.generate())
    return f"""
[uftp]
domain = "agr.example.com"
signing_key_file = "{key_file}"

[[uftp.peers]]
domain = "{dso}"
role = "DSO"
public_keys = ["{peer_key}"]
endpoint = "https://dso.example.com/shapeshifter/api/v3/message"

[database]
dsn = "postgresql://flexbridge@127.0.0.1/central"

[nats]
servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
password = "from-the-file"

[[congestion_points]]
entity_address = "{CP}"
dso_domain = "dso.example.com"

[[sites]]
id = "site-1"
congestion_point = "{CP}"
{extra}
"""


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "agr.key"
    keys.write_signing_key(path, SigningKey.generate())
    return path


def problems(source: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_central_config(source, environ={})
    return [str(p) for p in caught.value.problems]


def test_a_valid_file_with_the_password_from_the_environment(key_file: Path) -> None:
    config = parse_central_config(text(key_file), environ={"FLEXBRIDGE_NATS__PASSWORD": "from-env"})
    assert config.nats.password.get_secret_value() == "from-env"
    assert config.nats.replicas == 3
    assert [s.id for s in config.sites] == ["site-1"]
    assert config.trading.reassign_lead_s == 600


def test_a_congestion_point_whose_dso_is_not_a_peer_is_named(key_file: Path) -> None:
    assert problems(text(key_file, dso="other.example.com")) == [
        "congestion point ean.871685900012636543: DSO dso.example.com is not a [[uftp.peers]] "
        "entry with role DSO"
    ]


def test_a_site_at_an_unknown_congestion_point_is_named(key_file: Path) -> None:
    extra = '[[sites]]\nid = "site-2"\ncongestion_point = "ean.871685900012636599"\n'
    found = problems(text(key_file, extra=extra))
    assert found == ["site site-2: congestion point ean.871685900012636599 is not configured"]


def test_bad_values_are_each_named_at_their_key(key_file: Path) -> None:
    extra = '[[sites]]\nid = "Site 2"\ncongestion_point = "nope"\n[trading]\nreassign_lead_s = 5\n'
    found = problems(text(key_file, extra=extra))
    assert any(p.startswith("sites[1].id:") for p in found)
    assert any(p.startswith("sites[1].congestion_point:") for p in found)
    assert any(p.startswith("trading.reassign_lead_s:") for p in found)


def test_a_missing_signing_key_file_is_named(tmp_path: Path) -> None:
    found = problems(text(tmp_path / "absent.key"))
    assert found == [f"uftp.signing_key_file: {tmp_path / 'absent.key'}: no such file"]


def test_cli_errors_are_one_line_with_their_exit_code(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(argv: list[str]) -> tuple[int, str]:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    code, err = run(["aggregator", "run", "--config", str(tmp_path / "absent.toml")])
    assert code == EX_NOINPUT
    assert err.strip().count("\n") == 0
    assert "absent.toml" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(text(key_file, dso="other.example.com"))
    code, err = run(["aggregator", "run", "--config", str(bad)])
    assert code == EX_CONFIG
    assert "congestion point ean.871685900012636543: DSO dso.example.com" in err
    code, err = run(["aggregator", "add-site", "Bad Id", "--congestion-point", CP, "-c", str(bad)])
    assert code == EX_USAGE
    assert err.startswith("error: site id 'Bad Id' must match")
    code, err = run(["aggregator", "add-site", "site-2", "-c", str(bad)])
    assert code == EX_USAGE  # --congestion-point is required
    assert "--congestion-point" in err


def test_an_isp_length_other_than_the_fleets_is_refused(key_file: Path) -> None:
    source = text(key_file).replace(
        'signing_key_file = "', 'isp_duration_min = 30\nsigning_key_file = "'
    )
    assert problems(source) == [
        "uftp.isp_duration_min: the fleet works on 15-minute ISPs (the sites' grid)"
    ]
