"""`flexbridge hash-password` prints a hash the OCPP listener accepts for that password."""

from __future__ import annotations

import io

import pytest

from agent.cli import main
from ocpp_bridge.passwords import parse_password_hash, verify_password


def test_hash_password_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("charger-secret-1\n"))
    assert main(["hash-password", "--scrypt-n", "1024"]) == 0
    stored = capsys.readouterr().out.strip()
    assert verify_password("charger-secret-1", stored)
    assert parse_password_hash(stored)[0].n == 1024


def test_hash_password_refuses_a_too_short_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hash-password", "--scrypt-n", "1024"]) == 65  # EX_DATAERR
    assert "characters" in capsys.readouterr().err


def test_hash_password_refuses_a_bad_cost(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("charger-secret-1\n"))
    assert main(["hash-password", "--scrypt-n", "1000"]) == 64  # EX_USAGE
    assert "power of two" in capsys.readouterr().err
