"""UFTP signing keys in every form we or our peers write them."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from uftp import keys


def test_seed_roundtrip_through_file(tmp_path: Path) -> None:
    key = keys.generate_signing_key()
    path = tmp_path / "agr.key"
    keys.write_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(keys.load_signing_key(path)) == bytes(key)


def test_write_refuses_to_overwrite_without_flag(tmp_path: Path) -> None:
    path = tmp_path / "agr.key"
    keys.write_signing_key(path, keys.generate_signing_key())
    with pytest.raises(FileExistsError):
        keys.write_signing_key(path, keys.generate_signing_key())
    other = keys.generate_signing_key()
    keys.write_signing_key(path, other, overwrite=True)
    assert bytes(keys.load_signing_key(path)) == bytes(other)


def test_accepts_raw_seed_and_libsodium_secret_key() -> None:
    key = SigningKey.generate()
    seed = bytes(key)
    assert bytes(keys.parse_signing_key(seed)) == seed
    libsodium = base64.b64encode(seed + bytes(key.verify_key))
    assert bytes(keys.parse_signing_key(libsodium)) == seed


def test_rejects_secret_key_with_foreign_public_half() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    bad = base64.b64encode(bytes(a) + bytes(b.verify_key))
    with pytest.raises(keys.KeyFormatError, match="does not match"):
        keys.parse_signing_key(bad)


@pytest.mark.parametrize("data", [b"not base64 !!", base64.b64encode(b"x" * 16)])
def test_rejects_garbage_signing_key(data: bytes) -> None:
    with pytest.raises(keys.KeyFormatError):
        keys.parse_signing_key(data)


def test_public_key_forms() -> None:
    key = SigningKey.generate()
    b64 = keys.public_key_b64(key)
    assert keys.public_key_cs1(key) == "cs1." + b64
    assert bytes(keys.parse_public_key(b64)) == bytes(key.verify_key)
    assert bytes(keys.parse_public_key("cs1." + b64)) == bytes(key.verify_key)
    # DNS form with the (unused) box key appended: 64 bytes, signing key first.
    both = base64.b64encode(bytes(key.verify_key) + b"\x01" * 32).decode()
    assert bytes(keys.parse_public_key("cs1." + both)) == bytes(key.verify_key)
    with pytest.raises(keys.KeyFormatError, match="64 bytes"):
        keys.parse_public_key(both)  # without cs1. only the bare 32-byte form is allowed
