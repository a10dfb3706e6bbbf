"""HTTPS both ways (the endpoint serves TLS from certificate files, the client verifies the peer)
and OAuth2 client-credentials bearer tokens on outbound posts (GOPACS requires them)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from tests.support import uftp as build
from tests.support.certificates import Certificates, make_certificates
from tests.support.ports import free_port
from uftp import models, store
from uftp.dso import DsoParticipant, Received
from uftp.models import Role
from uftp.oauth import OAuthError, TokenSource
from uftp.participant import AgrParticipant
from uftp.settings import OAuthSettings, PeerSettings, TlsSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@dataclass
class TokenServer:
    """An OAuth2 token endpoint (client_credentials) and the resource side's token check."""

    port: int
    client_id: str = "flexbridge"
    client_secret: str = "s3cret"
    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    auth_styles: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            self.auth_styles.append("basic")
        else:
            client_id, secret = str(form.get("client_id")), str(form.get("client_secret"))
            self.auth_styles.append("body")
        if form.get("grant_type") != "client_credentials" or (client_id, secret) != (
            self.client_id,
            self.client_secret,
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        self.valid.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
        )

    async def check(self, authorization: str | None) -> bool:
        return authorization is not None and authorization.removeprefix("Bearer ") in self.valid

    def settings(self, **overrides: object) -> OAuthSettings:
        fields: dict[str, object] = {
            "token_url": self.url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        fields.update(overrides)
        return OAuthSettings(**fields)  # type: ignore[arg-type]


@dataclass
class Pair:
    agr: AgrParticipant
    dso: DsoParticipant


async def start_pair(
    tmp_path: Path,
    certificates: Certificates,
    *,
    agr_trusts: Path | None,
    oauth: OAuthSettings | None = None,
    authorize: object = None,
) -> Pair:
    agr_key, dso_key = SigningKey.generate(), SigningKey.generate()
    agr_port, dso_port = free_port(), free_port()
    tls = TlsSettings(certificates.server_cert, certificates.server_key)
    agr = AgrParticipant(
        build.settings(
            build.AGR,
            Role.AGR,
            agr_key,
            agr_port,
            [
                PeerSettings(
                    build.DSO, Role.DSO, (keys_b64(dso_key),), build.url(dso_port, "https"), oauth
                )
            ],
            tls=tls,
            ca_file=agr_trusts,
        ),
        tmp_path / "agr.sqlite",
        handler=lambda conn, inbound: None,
    )
    dso = DsoParticipant(
        build.settings(
            build.DSO,
            Role.DSO,
            dso_key,
            dso_port,
            [PeerSettings(build.AGR, Role.AGR, (keys_b64(agr_key),), build.url(agr_port, "https"))],
            tls=tls,
            ca_file=certificates.ca,
        ),
        tmp_path / "dso.sqlite",
        authorize=authorize,  # type: ignore[arg-type]
    )
    await agr.start()
    await dso.start()
    return Pair(agr, dso)


def keys_b64(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


async def stop_pair(pair: Pair) -> None:
    await pair.dso.stop()
    await pair.agr.stop()


async def prognosis_round_trip(pair: Pair) -> None:
    now = pair.agr.now()
    prognosis = build.d_prognosis(now, time_stamp=now, period=build.next_period(now))
    await pair.agr.send(prognosis)
    received = await pair.dso.wait_handled(lambda o: isinstance(o, Received))
    assert isinstance(received, Received)
    assert received.accepted

    # ... and the DSO's answer comes back over HTTPS to our endpoint.
    async def answered() -> bool:
        rows = await pair.agr.database.read(
            lambda c: store.inbound_messages(c, message_type="D-PrognosisResponse")
        )
        return bool(rows)

    await build.eventually(answered)


async def test_https_both_ways(tmp_path: Path, certificates: Certificates) -> None:
    pair = await start_pair(tmp_path, certificates, agr_trusts=certificates.ca)
    try:
        assert pair.agr.url.startswith("https://")
        await prognosis_round_trip(pair)
    finally:
        await stop_pair(pair)


async def test_an_untrusted_certificate_is_not_accepted(
    tmp_path: Path, certificates: Certificates
) -> None:
    pair = await start_pair(tmp_path, certificates, agr_trusts=None)  # system CAs only
    try:
        message = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
        await pair.agr.send(message)

        async def failed_attempt() -> store.OutboundMessage | None:
            row = await pair.agr.database.read(lambda c: store.find_outbound(c, message.message_id))
            return row if row is not None and row.attempts >= 1 else None

        await build.eventually(failed_attempt)
        row = await failed_attempt()
        assert row is not None
        assert row.status is store.OutboundStatus.PENDING  # temporary: fixed trust lets it through
        assert row.last_error is not None
        assert "certificate" in row.last_error.lower()
        dso_inbox = await pair.dso.database.read(lambda c: store.inbound_messages(c))
        assert dso_inbox == []
    finally:
        await stop_pair(pair)


async def test_client_certificates_when_required(
    tmp_path: Path, certificates: Certificates
) -> None:
    key = SigningKey.generate()
    tls = TlsSettings(
        certificates.server_cert, certificates.server_key, client_ca_file=certificates.ca
    )
    agr = AgrParticipant(
        build.settings(build.AGR, Role.AGR, key, 0, [], tls=tls), tmp_path / "m.sqlite"
    )
    await agr.start()
    try:
        anonymous = ssl.create_default_context(cafile=str(certificates.ca))
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.post(agr.url, data=b"<x/>", ssl=anonymous) as response:
                    await response.read()
            identified = ssl.create_default_context(cafile=str(certificates.ca))
            identified.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
            async with http.post(
                agr.url, data=b"<x/>", ssl=identified, headers={"Content-Type": "text/xml"}
            ) as response:
                assert response.status == 400  # through TLS; the body is simply not UFTP
    finally:
        await agr.stop()


async def test_bearer_tokens_are_fetched_cached_and_renewed_after_a_401(
    tmp_path: Path, certificates: Certificates
) -> None:
    tokens = TokenServer(free_port())
    await tokens.start()
    pair = await start_pair(
        tmp_path,
        certificates,
        agr_trusts=certificates.ca,
        oauth=tokens.settings(),
        authorize=tokens.check,
    )
    try:
        await prognosis_round_trip(pair)
        message = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
        await pair.agr.send(message)

        async def delivered(message_id: str) -> bool:
            row = await pair.agr.database.read(lambda c: store.find_outbound(c, message_id))
            return row is not None and row.status is store.OutboundStatus.SENT

        await build.eventually(lambda: delivered(message.message_id))
        assert tokens.issued == ["tok-1"]  # one token for both messages
        assert tokens.auth_styles == ["body"]

        tokens.valid.clear()  # the resource side revokes it: the next post gets a 401
        again = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
        await pair.agr.send(again)
        await build.eventually(lambda: delivered(again.message_id))
        assert tokens.issued == ["tok-1", "tok-2"]
    finally:
        await stop_pair(pair)
        await tokens.stop()


async def test_endpoint_requires_the_bearer_token(
    tmp_path: Path, certificates: Certificates
) -> None:
    tokens = TokenServer(free_port())
    await tokens.start()
    pair = await start_pair(
        tmp_path, certificates, agr_trusts=certificates.ca, authorize=tokens.check
    )
    try:
        message = models.TestMessage(sender_domain=build.AGR, recipient_domain=build.DSO)
        await pair.agr.send(message)  # no OAuth configured for this peer

        async def attempted() -> store.OutboundMessage | None:
            row = await pair.agr.database.read(lambda c: store.find_outbound(c, message.message_id))
            return row if row is not None and row.last_error else None

        await build.eventually(attempted)
        row = await attempted()
        assert row is not None
        assert row.status is store.OutboundStatus.FAILED  # 401 without a token is final
        assert "HTTP 401" in (row.last_error or "")
    finally:
        await stop_pair(pair)
        await tokens.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = TokenServer(free_port(), expires_in=300)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_token_is_refreshed_before_it_expires(token_server: TokenServer) -> None:
    clock = FakeClock()
    async with aiohttp.ClientSession() as http:
        source = TokenSource(token_server.settings(refresh_margin_s=60), http, clock=clock)
        assert await source.authorization() == "Bearer tok-1"
        clock.now += 239  # 61 s before expiry: still good
        assert await source.authorization() == "Bearer tok-1"
        clock.now += 1  # inside the 60 s margin: renewed
        assert await source.authorization() == "Bearer tok-2"
        assert source.fetches == 2


async def test_basic_client_authentication_and_bad_credentials(token_server: TokenServer) -> None:
    async with aiohttp.ClientSession() as http:
        basic = TokenSource(token_server.settings(client_auth="basic"), http)
        assert await basic.authorization() == "Bearer tok-1"
        assert token_server.auth_styles == ["basic"]
        wrong = TokenSource(token_server.settings(client_secret="nope"), http)
        with pytest.raises(OAuthError, match="HTTP 401"):
            await wrong.authorization()
        unreachable = TokenSource(
            OAuthSettings(f"http://127.0.0.1:{free_port()}/token", "a", "b"), http
        )
        with pytest.raises(OAuthError, match="unreachable"):
            await unreachable.authorization()
