"""CS1 sealing: libsodium crypto_sign, base64(signature ‖ XML), two keys during a rotation."""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey
from shapeshifter_uftp import transport as shapeshifter

from tests.support import uftp as build
from uftp import codec, keys, sealing
from uftp.models import Role


def test_sealed_body_is_signature_followed_by_the_xml() -> None:
    key = SigningKey.generate()
    xml = codec.to_xml(build.flex_request())
    sealed = sealing.sign(xml, key)
    assert sealed[64:] == xml
    assert sealing.open_sealed(sealed, [key.verify_key]) == xml


def test_envelope_carries_sender_and_base64_body() -> None:
    key = SigningKey.generate()
    xml = codec.to_xml(build.flex_request())
    envelope = codec.envelope_from_xml(sealing.seal(xml, key, build.DSO, Role.DSO))
    assert (envelope.sender_domain, envelope.sender_role) == (build.DSO, Role.DSO)
    assert sealing.unseal(envelope, [key.verify_key]) == xml


def test_either_key_verifies_during_a_rotation() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    sealed = sealing.sign(b"<TestMessage/>", new)
    assert sealing.open_sealed(sealed, [old.verify_key, new.verify_key]) == b"<TestMessage/>"


def test_wrong_key_tampering_and_truncation_fail() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    sealed = sealing.sign(b"<TestMessage/>", key)
    with pytest.raises(sealing.SignatureError, match="does not verify"):
        sealing.open_sealed(sealed, [other.verify_key])
    tampered = sealed[:-2] + b"X>"
    with pytest.raises(sealing.SignatureError):
        sealing.open_sealed(tampered, [key.verify_key])
    with pytest.raises(sealing.SignatureError, match="too short"):
        sealing.open_sealed(sealed[:64], [key.verify_key])
    with pytest.raises(sealing.SignatureError, match="no public key"):
        sealing.open_sealed(sealed, [])


def test_shapeshifter_library_opens_what_we_seal() -> None:
    key = SigningKey.generate()
    request = build.flex_request()
    sealed = sealing.sign(codec.to_xml(request), key)
    opened = shapeshifter.unseal_message(sealed, keys.public_key_b64(key))
    assert type(opened).__name__ == "FlexRequest"
    assert opened.message_id == request.message_id
    assert opened.isps[1].max_power == -6000


def test_we_open_what_the_shapeshifter_library_seals() -> None:
    from shapeshifter_uftp import TestMessage

    key = SigningKey.generate()
    message = TestMessage(
        version="3.1.0",
        sender_domain=build.DSO,
        recipient_domain=build.AGR,
        time_stamp="2030-01-15T09:00:00+00:00",
        message_id="8e0d8a83-7a4f-4a7b-9bb0-5c1a0f8a1b11",
        conversation_id="0b3a5b56-0e51-4a0a-8a89-2d4a6b8a2c11",
    )
    sealed = shapeshifter.seal_message(message, keys.libsodium_secret_key_b64(key))
    inner = sealing.open_sealed(sealed, [keys.parse_public_key(keys.public_key_cs1(key))])
    parsed = codec.from_xml(inner)
    assert parsed.message_id == message.message_id
    assert base64.b64decode(keys.libsodium_secret_key_b64(key))[32:] == bytes(key.verify_key)


def test_two_keys_from_a_txt_record() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    parsed = keys.parse_public_keys(f"{keys.public_key_cs1(a)} {keys.public_key_b64(b)}")
    assert [bytes(k) for k in parsed] == [bytes(a.verify_key), bytes(b.verify_key)]
    with pytest.raises(keys.KeyFormatError):
        keys.parse_public_keys("")
