"""CS1 sealing (UFTP 3.1.0, "Cryptographic Scheme"): libsodium `crypto_sign`.

The sealed body is the 64-byte Ed25519 signature followed by the inner XML bytes, base64-encoded
into the envelope's `Body`. Not XML-DSig and no hex step (the first Java library hex-encoded and
could not interoperate, Java PR #1). `crypto_sign_open` verifies and returns the XML in one call,
so an unverified message can never be processed by accident.

A peer may publish two keys during a rotation (~24 h overlap): a body verifies if either key
accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from uftp.codec import to_xml
from uftp.models import Role, SignedMessage

SIGNATURE_BYTES = 64


class SignatureError(ValueError):
    """The sealed body does not verify with any of the sender's keys."""


def sign(inner_xml: bytes, key: SigningKey) -> bytes:
    """`crypto_sign`: signature ‖ message."""
    return bytes(key.sign(inner_xml))


def open_sealed(sealed: bytes, keys: Sequence[VerifyKey]) -> bytes:
    """`crypto_sign_open` with each of the sender's keys; the inner XML if one verifies."""
    if len(sealed) <= SIGNATURE_BYTES:
        raise SignatureError(f"sealed body of {len(sealed)} bytes is too short to be signed")
    if not keys:
        raise SignatureError("no public key to verify with")
    for key in keys:
        try:
            return bytes(key.verify(sealed))
        except BadSignatureError:
            continue
    raise SignatureError("signature does not verify with the sender's key(s)")


def seal(inner_xml: bytes, key: SigningKey, sender_domain: str, sender_role: Role) -> bytes:
    """The complete SignedMessage document (the HTTP body) around already-valid inner XML."""
    envelope = SignedMessage(
        sender_domain=sender_domain, sender_role=sender_role, body=sign(inner_xml, key)
    )
    return to_xml(envelope)


def unseal(envelope: SignedMessage, keys: Sequence[VerifyKey]) -> bytes:
    """The inner XML of a parsed envelope, verified with the sender's key(s)."""
    return open_sealed(envelope.body, keys)
