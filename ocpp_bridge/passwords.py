"""Hashed charger passwords (OCPP security profiles 1 and 2).

A charger authenticates with HTTP Basic: user = its identity, password = the 1.6
``AuthorizationKey`` / 2.0.1 ``BasicAuthPassword``. We store only a salted scrypt hash whose
parameters travel inside the hash string, so the cost can be raised later without breaking
existing entries::

    scrypt$n=4096,r=8,p=1$<salt, base64>$<key, base64>

scrypt (stdlib `hashlib.scrypt`) is memory-hard. The default cost n=2**12 (4 MiB, ~12 ms of CPU
on an x86 core) is lower than for user passwords on purpose: charger passwords are machine
secrets of at least 16 characters (the 1.6 Security Whitepaper asks for an AuthorizationKey of
16+ random bytes), which no KDF cost makes meaningfully harder to guess, while every charger of
a 1,000-charger site pays one check after each restart (n=2**14 took 25 s on two cores). The
server still verifies in a worker thread and caches a verified password for the life of the
process (see `CredentialCache`): a reconnect storm must not pay the KDF again per charger.
Operators who want more can raise the cost per charger (`flexbridge hash-password --scrypt-n`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

SCHEME = "scrypt"
DEFAULT_N = 2**12
DEFAULT_R = 8
DEFAULT_P = 1
_KEY_BYTES = 32
_SALT_BYTES = 16
# 128 * r * n bytes, plus slack: OpenSSL refuses scrypt above maxmem.
_MAX_MEMORY = 256 * 1024 * 1024
_HASH = re.compile(
    r"^scrypt\$n=(?P<n>[0-9]+),r=(?P<r>[0-9]+),p=(?P<p>[0-9]+)\$(?P<salt>[A-Za-z0-9+/=]+)\$(?P<key>[A-Za-z0-9+/=]+)$"
)
# 1.6 Security Whitepaper: AuthorizationKey is 16-20 bytes (or up to 40 hex digits);
# 2.0.1 BasicAuthPassword is at most 40 characters. 16 is the floor that makes the lower
# default scrypt cost safe (see the module docstring).
MIN_PASSWORD_LENGTH = 16
MAX_PASSWORD_LENGTH = 64


class PasswordHashError(ValueError):
    """A stored password hash cannot be parsed."""


@dataclass(frozen=True)
class ScryptParameters:
    n: int = DEFAULT_N
    r: int = DEFAULT_R
    p: int = DEFAULT_P

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two >= 2, got {self.n}")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 16:
            raise ValueError(f"scrypt r={self.r}, p={self.p} out of range")
        if 128 * self.r * self.n * self.p > _MAX_MEMORY:
            raise ValueError(f"scrypt n={self.n}, r={self.r} needs more than 256 MiB")


def _derive(password: str, salt: bytes, params: ScryptParameters) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=_MAX_MEMORY,
        dklen=_KEY_BYTES,
    )


def hash_password(password: str, params: ScryptParameters | None = None) -> str:
    """The storable hash of `password` with a fresh random salt."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(
            f"a charger password has {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters, "
            f"got {len(password)}"
        )
    params = params or ScryptParameters()
    salt = os.urandom(_SALT_BYTES)
    key = _derive(password, salt, params)
    return (
        f"{SCHEME}$n={params.n},r={params.r},p={params.p}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    )


def parse_password_hash(stored: str) -> tuple[ScryptParameters, bytes, bytes]:
    """Parameters, salt and key of a stored hash; PasswordHashError names what is wrong."""
    match = _HASH.match(stored)
    if match is None:
        raise PasswordHashError(
            f"not a flexbridge password hash (expected 'scrypt$n=..,r=..,p=..$salt$key'): "
            f"{stored[:24]!r}..."
        )
    try:
        params = ScryptParameters(int(match["n"]), int(match["r"]), int(match["p"]))
        salt = base64.b64decode(match["salt"], validate=True)
        key = base64.b64decode(match["key"], validate=True)
    except ValueError as exc:
        raise PasswordHashError(f"malformed password hash: {exc}") from exc
    return params, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (constant-time comparison of the derived keys)."""
    params, salt, key = parse_password_hash(stored)
    if len(password) > MAX_PASSWORD_LENGTH * 4:
        return False
    return hmac.compare_digest(_derive(password, salt, params), key)


class CredentialCache:
    """Remembers (identity, password, stored hash) triples that verified in this process.

    Only a keyed digest is kept (the key is random per process), never the password, so the
    cache leaks nothing that the hash itself does not. A changed stored hash invalidates the
    entry because the hash string is part of the digest.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._max_entries = max_entries

    def _digest(self, identity: str, password: str, stored: str) -> bytes:
        message = "\0".join((identity, password, stored)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, identity: str, password: str, stored: str) -> bool:
        expected = self._verified.get(identity)
        return expected is not None and hmac.compare_digest(
            expected, self._digest(identity, password, stored)
        )

    def remember(self, identity: str, password: str, stored: str) -> None:
        # Called from the KDF worker threads too: single dict operations, atomic under the GIL.
        if len(self._verified) >= self._max_entries and identity not in self._verified:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                self._verified.pop(next(iter(self._verified)))
        self._verified[identity] = self._digest(identity, password, stored)

    def forget(self, identity: str) -> None:
        self._verified.pop(identity, None)
