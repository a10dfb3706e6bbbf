"""Who our peers are: public keys and endpoints by (domain, role).

Peers are configured statically (the spec's "manual exchange" or a central address book copied
into the configuration). DNS discovery (``_<ROLE>._usef.<domain>`` TXT keys, ``_http._<ROLE>.
_usef.<domain>`` CNAME endpoints) is not supported: the spec makes DNSSEC validation mandatory
for it, and flexbridge has no validating resolver it could trust on a site gateway. Anything that
implements `PeerDirectory` can replace the static one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from nacl.signing import VerifyKey

from uftp.models import Role
from uftp.settings import PeerSettings


class UnknownPeer(LookupError):
    """No peer with this (domain, role): for an inbound message the spec's 419 (key lookup
    failed), for an outbound one a configuration error."""

    def __init__(self, domain: str, role: Role | str) -> None:
        self.domain = domain
        self.role = str(role)
        super().__init__(f"no UFTP peer {domain} with role {role} is configured")


class PeerDirectory(Protocol):
    def verify_keys(self, domain: str, role: Role) -> Sequence[VerifyKey]: ...

    def peer(self, domain: str, role: Role) -> PeerSettings: ...

    def peers(self) -> Sequence[PeerSettings]: ...


class StaticPeerDirectory:
    """Peers from configuration; keys are decoded once."""

    def __init__(self, peers: Iterable[PeerSettings]) -> None:
        self._peers: dict[tuple[str, Role], PeerSettings] = {}
        self._keys: dict[tuple[str, Role], tuple[VerifyKey, ...]] = {}
        for peer in peers:
            self._peers[(peer.domain, peer.role)] = peer
            self._keys[(peer.domain, peer.role)] = peer.verify_keys

    def verify_keys(self, domain: str, role: Role) -> Sequence[VerifyKey]:
        try:
            return self._keys[(domain, role)]
        except KeyError:
            raise UnknownPeer(domain, role) from None

    def peer(self, domain: str, role: Role) -> PeerSettings:
        try:
            return self._peers[(domain, role)]
        except KeyError:
            raise UnknownPeer(domain, role) from None

    def peers(self) -> list[PeerSettings]:
        return list(self._peers.values())
