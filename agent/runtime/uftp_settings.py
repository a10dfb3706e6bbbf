"""The `[uftp]` section and the congestion points as uftp's `ParticipantSettings`.

The stand-alone agent and the fleet's aggregator are each one AGR participant configured by
the same section, so one mapping serves both: a setting added to `UftpConfig` reaches both.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.runtime.config import CongestionPointConfig, UftpConfig
from uftp.keys import load_signing_key
from uftp.models import Role
from uftp.settings import MarketSettings, OAuthSettings, ParticipantSettings, PeerSettings
from uftp.settings import TlsSettings as UftpTls


def participant_settings(
    u: UftpConfig, congestion_points: Iterable[CongestionPointConfig]
) -> ParticipantSettings:
    """The signing key is read from its file here, once, at start."""
    peers = tuple(
        PeerSettings(
            domain=p.domain,
            role=Role(p.role),
            public_keys=tuple(p.public_keys),
            endpoint=p.endpoint,
            oauth=None
            if p.oauth is None
            else OAuthSettings(
                token_url=p.oauth.token_url,
                client_id=p.oauth.client_id,
                client_secret=p.oauth.client_secret.get_secret_value(),
                scope=p.oauth.scope,
            ),
        )
        for p in u.peers
    )
    return ParticipantSettings(
        domain=u.domain,
        role=Role.AGR,
        signing_key=load_signing_key(u.signing_key_file),
        peers=peers,
        market=MarketSettings(u.market_timezone, u.isp_duration_min),
        host=u.host,
        port=u.port,
        tls=None if u.tls is None else UftpTls(u.tls.cert_file, u.tls.key_file, u.tls.ca_file),
        max_body_bytes=u.max_body_bytes,
        congestion_points=frozenset(cp.entity_address for cp in congestion_points),
    )
