"""The `flexbridge` command line, called in-process."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from agent import __version__
from agent.cli import EX_CONFIG, main
from uftp.keys import load_signing_key

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "flexbridge.toml.example"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"flexbridge {__version__}"


def test_keys_output_verifies_a_signature_made_with_the_written_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agr.key"
    assert main(["keys", "--out", str(path), "--domain", "agr.example.com"]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = re.search(r"^public key: (\S+)$", out, re.M)
    cs1 = re.search(r"^cs1: (cs1\.\S+)$", out, re.M)
    assert public
    assert cs1
    assert cs1.group(1) == "cs1." + public.group(1)
    assert f'_AGR._usef.agr.example.com. IN TXT "{cs1.group(1)}"' in out

    signed = load_signing_key(path).sign(b"<TestMessage/>")
    verify = VerifyKey(base64.b64decode(public.group(1)))
    assert verify.verify(signed) == b"<TestMessage/>"


def test_keys_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agr.key"
    assert main(["keys", "--out", str(path)]) == 0
    first = path.read_bytes()
    assert main(["keys", "--out", str(path)]) == 73  # EX_CANTCREAT
    assert "exists; use --force" in capsys.readouterr().err
    assert path.read_bytes() == first


def test_keys_show_prints_existing_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agr.key"
    main(["keys", "--out", str(path)])
    created = capsys.readouterr().out
    assert main(["keys", "--out", str(path), "--show"]) == 0
    shown = capsys.readouterr().out
    pub = re.compile(r"^public key: (\S+)$", re.M)
    assert pub.findall(created) == pub.findall(shown)


def test_check_config_accepts_example_with_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--no-files", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert "site garage-north" in out
    assert "2 configured charger(s)" in out


def test_check_config_rejects_three_mistakes_and_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text()
    text = text.replace('domain = "agr.example.com"', 'domain = "AGR.example"')
    text = text.replace("max_current_a = 32               # per phase", "max_current_a = -1")
    text = text.replace("heartbeat_interval_s = 300", "heartbeat_intervall_s = 300")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert main(["check-config", "--no-files", str(bad)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "uftp.domain: 'AGR.example' is not a lowercase DNS name" in err
    assert "ocpp.chargers[0].max_current_a: Input should be greater than 0 (got -1)" in err
    assert "ocpp.heartbeat_intervall_s: unknown key" in err


def test_check_config_checks_the_signing_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(EXAMPLE)]) == EX_CONFIG
    assert "uftp.signing_key_file: cannot read signing key" in capsys.readouterr().err

    key = tmp_path / "agr.key"
    main(["keys", "--out", str(key)])
    cfg = tmp_path / "ok.toml"
    cfg.write_text(EXAMPLE.read_text().replace("/etc/flexbridge/agr-signing.key", str(key)))
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) == 0


def test_run_with_broken_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\n")
    assert main(["run", "--config", str(bad)]) == EX_CONFIG
