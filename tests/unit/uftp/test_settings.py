"""uftp's settings refuse unusable values with the setting and the value in the message."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from tests.support import uftp as build
from uftp import keys
from uftp.models import Role
from uftp.participants import StaticPeerDirectory, UnknownPeer
from uftp.settings import (
    MarketSettings,
    OAuthSettings,
    ParticipantSettings,
    PeerSettings,
    RateLimit,
    SettingsError,
)

KEY = SigningKey.generate()
PUBLIC = keys.public_key_b64(KEY)


def test_peer_needs_one_or_two_valid_keys_and_a_url() -> None:
    peer = PeerSettings(
        build.DSO, Role.DSO, (PUBLIC, keys.public_key_cs1(SigningKey.generate())), build.url(1)
    )
    assert len(peer.verify_keys) == 2
    with pytest.raises(SettingsError, match="one or two"):
        PeerSettings(build.DSO, Role.DSO, (), build.url(1))
    with pytest.raises(keys.KeyFormatError):
        PeerSettings(build.DSO, Role.DSO, ("not-a-key",), build.url(1))
    with pytest.raises(SettingsError, match="endpoint"):
        PeerSettings(build.DSO, Role.DSO, (PUBLIC,), "ftp://dso")
    with pytest.raises(SettingsError, match="InternetDomain"):
        PeerSettings("DSO.example.com", Role.DSO, (PUBLIC,), build.url(1))


def test_market_calendar() -> None:
    with pytest.raises(SettingsError, match="TimeZoneName"):
        MarketSettings(time_zone="UTC")
    with pytest.raises(SettingsError, match="unknown"):
        MarketSettings(time_zone="Europe/Atlantis")
    with pytest.raises(SettingsError, match="divide"):
        MarketSettings(isp_minutes=7)


def test_participant_settings() -> None:
    peer = PeerSettings(build.DSO, Role.DSO, (PUBLIC,), build.url(1))
    settings = ParticipantSettings(build.AGR, Role.AGR, KEY, peers=(peer,))
    assert "signing_key" not in repr(settings)  # never print the private key
    with pytest.raises(SettingsError, match="twice"):
        ParticipantSettings(build.AGR, Role.AGR, KEY, peers=(peer, peer))
    with pytest.raises(SettingsError, match="ourselves"):
        ParticipantSettings(build.DSO, Role.DSO, KEY, peers=(peer,))
    with pytest.raises(SettingsError, match="port"):
        ParticipantSettings(build.AGR, Role.AGR, KEY, port=70000)
    with pytest.raises(SettingsError, match="rate limit"):
        RateLimit(per_second=0)


def test_oauth_secret_is_not_printed() -> None:
    oauth = OAuthSettings("https://idp.example.com/token", "client", "very-secret")
    assert "very-secret" not in repr(oauth)
    with pytest.raises(SettingsError, match="token_url"):
        OAuthSettings("idp.example.com/token", "client", "x")


def test_static_directory_looks_up_by_domain_and_role() -> None:
    peer = PeerSettings(build.DSO, Role.DSO, (PUBLIC,), build.url(1))
    directory = StaticPeerDirectory([peer])
    assert [bytes(k) for k in directory.verify_keys(build.DSO, Role.DSO)] == [bytes(KEY.verify_key)]
    with pytest.raises(UnknownPeer, match="CRO"):
        directory.verify_keys(build.DSO, Role.CRO)
    with pytest.raises(UnknownPeer):
        directory.peer("other.example.com", Role.DSO)
