"""Charger passwords are stored as salted scrypt hashes with their parameters inside."""

from __future__ import annotations

import pytest

from ocpp_bridge.passwords import (
    CredentialCache,
    PasswordHashError,
    ScryptParameters,
    hash_password,
    parse_password_hash,
    verify_password,
)

FAST = ScryptParameters(n=2**10)


def test_hash_verifies_the_password_and_nothing_else() -> None:
    stored = hash_password("correct horse battery", FAST)
    assert stored.startswith("scrypt$n=1024,r=8,p=1$")
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert "correct" not in stored


def test_salts_differ_so_equal_passwords_hash_differently() -> None:
    assert hash_password("same-password-123", FAST) != hash_password("same-password-123", FAST)


def test_parameters_travel_in_the_hash() -> None:
    stored = hash_password("another-password", ScryptParameters(n=2**11, r=4, p=2))
    params, salt, key = parse_password_hash(stored)
    assert params == ScryptParameters(n=2**11, r=4, p=2)
    assert len(salt) == 16
    assert len(key) == 32
    assert verify_password("another-password", stored)


def test_default_cost_is_scrypt_n_2_14() -> None:
    params, _, _ = parse_password_hash(hash_password("default-cost-password"))
    assert params == ScryptParameters(n=2**12, r=8, p=1)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain-text",
        "scrypt$n=1024$abc$def",
        "pbkdf2$n=1,r=1,p=1$AA==$AA==",
        "scrypt$n=1000,r=8,p=1$AA==$AA==",
    ],
)
def test_malformed_hashes_are_reported(stored: str) -> None:
    with pytest.raises(PasswordHashError):
        verify_password("whatever-password", stored)


@pytest.mark.parametrize("password", ["short", "fifteen-chars-x", "x" * 65])
def test_password_length_is_checked(password: str) -> None:
    with pytest.raises(ValueError, match="characters"):
        hash_password(password, FAST)


def test_credential_cache_remembers_only_the_exact_triple() -> None:
    cache = CredentialCache()
    stored = hash_password("cached-password-12", FAST)
    assert not cache.known("CP1", "cached-password-12", stored)
    cache.remember("CP1", "cached-password-12", stored)
    assert cache.known("CP1", "cached-password-12", stored)
    assert not cache.known("CP1", "other-password", stored)
    assert not cache.known("CP2", "cached-password-12", stored)
    assert not cache.known("CP1", "cached-password-12", hash_password("cached-password-12", FAST))
    cache.forget("CP1")
    assert not cache.known("CP1", "cached-password-12", stored)


def test_credential_cache_is_bounded() -> None:
    cache = CredentialCache(max_entries=2)
    for identity in ("A", "B", "C"):
        cache.remember(identity, "pw-pw-pw-pw", "h")
    assert not cache.known("A", "pw-pw-pw-pw", "h")
    assert cache.known("C", "pw-pw-pw-pw", "h")
