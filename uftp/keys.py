"""Ed25519 signing keys for UFTP's CS1 scheme (libsodium ``crypto_sign``).

A private key is kept as its 32-byte seed: the libsodium 64-byte secret key is the seed followed
by the public key, so storing more only adds something that can disagree. Public keys travel as
base64 of the 32 bytes, or in DNS as ``cs1.`` + base64 (optionally followed by a 32-byte box key,
which nobody uses for encryption).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

CS1_PREFIX = "cs1."


class KeyFormatError(ValueError):
    """A key could not be read; the message says what was wrong with it."""


def generate_signing_key() -> SigningKey:
    return SigningKey.generate()


def public_key_b64(key: SigningKey | VerifyKey) -> str:
    verify = key.verify_key if isinstance(key, SigningKey) else key
    return base64.b64encode(bytes(verify)).decode("ascii")


def public_key_cs1(key: SigningKey | VerifyKey) -> str:
    """The value of the ``_<ROLE>._usef.<domain>`` TXT record for this key."""
    return CS1_PREFIX + public_key_b64(key)


def parse_public_key(text: str) -> VerifyKey:
    """Accept base64 of a 32-byte key, or ``cs1.`` + base64 of 32 or 64 bytes (sign ‖ box)."""
    text = text.strip()
    cs1 = text.startswith(CS1_PREFIX)
    body = text[len(CS1_PREFIX) :] if cs1 else text
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"public key {text[:16]!r}... is not valid base64") from exc
    if len(raw) == 32 or (cs1 and len(raw) == 64):
        return VerifyKey(raw[:32])
    raise KeyFormatError(f"public key decodes to {len(raw)} bytes; expected 32")


def parse_public_keys(text: str) -> list[VerifyKey]:
    """One or two space-separated keys, as a ``_<ROLE>._usef.<domain>`` TXT record lists them
    during a key rotation (the specification: "up to two ... public key
    strings")."""
    parts = text.split()
    if not 1 <= len(parts) <= 2:
        raise KeyFormatError(f"expected one or two public keys, got {len(parts)}")
    return [parse_public_key(part) for part in parts]


def libsodium_secret_key_b64(key: SigningKey) -> str:
    """base64 of the 64-byte libsodium secret key (seed ‖ public key): the form
    shapeshifter-uftp and `shapeshifter-keypair` use for a signing key."""
    return base64.b64encode(bytes(key) + bytes(key.verify_key)).decode("ascii")


def parse_signing_key(data: bytes) -> SigningKey:
    """Read a private key in any form we or our peers write.

    Raw 32-byte seed, base64 of the seed, or base64 of the 64-byte libsodium secret key (what
    shapeshifter-uftp's `shapeshifter-keypair` prints). For the 64-byte form the embedded public
    key must match the seed, otherwise the file is corrupt.
    """
    if len(data) == 32:
        return SigningKey(data)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError("signing key is neither a 32-byte seed nor base64") from exc
    if len(raw) == 32:
        return SigningKey(raw)
    if len(raw) == 64:
        key = SigningKey(raw[:32])
        if bytes(key.verify_key) != raw[32:]:
            raise KeyFormatError("64-byte signing key: public half does not match the seed")
        return key
    raise KeyFormatError(f"signing key decodes to {len(raw)} bytes; expected a 32-byte seed")


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        return parse_signing_key(data)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from exc


def write_signing_key(path: Path, key: SigningKey, *, overwrite: bool = False) -> None:
    """Write the base64 seed with mode 0600, created that way so it is never world-readable."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(bytes(key)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
