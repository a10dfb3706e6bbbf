"""Security profiles 2 (TLS + Basic) and 3 (mutual TLS, CN = identity) with a throw-away CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ocpp_bridge.events import ChargerConnected
from ocpp_bridge.settings import BridgeSettings, ChargerRecord, SecurityProfile, TlsSettings
from ocpp_bridge.simulator import SimCharger16, SimCharger201, running
from tests.conftest import in_ci
from tests.integration.ocpp_bridge.conftest import PASSWORD, run_bridge, test_hash
from tests.support.certificates import MISSING, TestPki, find_openssl, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    openssl = find_openssl()
    if openssl is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return make_pki(tmp_path_factory.mktemp("pki"), openssl)


def tls_settings(pki: TestPki, profile: SecurityProfile) -> BridgeSettings:
    cert, key = pki.issue("server", "localhost", server=True)
    return BridgeSettings(
        host="127.0.0.1",
        port=0,
        security_profile=profile,
        tls=TlsSettings(cert, key, pki.ca_cert),
    )


async def test_profile_2_boots_over_tls_with_basic_auth(pki: TestPki) -> None:
    settings = tls_settings(pki, SecurityProfile.TLS_BASIC)
    async with run_bridge(settings, records=[ChargerRecord("CP2", test_hash())]) as bridge:
        assert bridge.url.startswith("wss://")
        async with running(SimCharger201, bridge.url, "CP2", PASSWORD, pki.client_context()) as sim:
            assert (await sim.boot()).status == "Accepted"
            await bridge.log.wait_for(lambda: bridge.log.of(ChargerConnected), what="boot")
            # The safe layer goes over TLS like everything else.
            await bridge.log.wait_for(lambda: sim.store.profiles, what="safe profile")


async def test_profile_2_still_refuses_a_wrong_password(pki: TestPki) -> None:
    settings = tls_settings(pki, SecurityProfile.TLS_BASIC)
    async with run_bridge(settings, records=[ChargerRecord("CP2", test_hash())]) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            async with running(
                SimCharger16, bridge.url, "CP2", "not-the-password", pki.client_context()
            ):
                pass
        assert refused.value.response.status_code == 401


async def test_profile_3_accepts_the_certificate_named_after_the_identity(pki: TestPki) -> None:
    settings = tls_settings(pki, SecurityProfile.MUTUAL_TLS)
    cert, key = pki.issue("cp3", "CP3")
    async with (
        run_bridge(settings, records=[ChargerRecord("CP3")]) as bridge,
        running(SimCharger16, bridge.url, "CP3", None, pki.client_context(cert, key)) as sim,
    ):
        assert (await sim.boot()).status == "Accepted"
        await bridge.log.wait_for(lambda: bridge.log.of(ChargerConnected, charger_id="CP3"))


async def test_profile_3_refuses_another_chargers_certificate(pki: TestPki) -> None:
    settings = tls_settings(pki, SecurityProfile.MUTUAL_TLS)
    cert, key = pki.issue("other", "OTHER")
    async with run_bridge(
        settings, records=[ChargerRecord("CP3"), ChargerRecord("OTHER")]
    ) as bridge:
        with pytest.raises(InvalidStatus) as refused:
            async with running(
                SimCharger16, bridge.url, "CP3", None, pki.client_context(cert, key)
            ):
                pass
        assert refused.value.response.status_code == 403


async def test_profile_3_refuses_a_charger_without_certificate(pki: TestPki) -> None:
    settings = tls_settings(pki, SecurityProfile.MUTUAL_TLS)
    async with run_bridge(settings, records=[ChargerRecord("CP3")]) as bridge:
        with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
            async with running(SimCharger16, bridge.url, "CP3", None, pki.client_context()) as sim:
                await sim.boot()
        assert not bridge.log.of(ChargerConnected)


async def test_profile_3_refuses_a_certificate_from_another_ca(
    pki: TestPki, tmp_path: Path
) -> None:
    settings = tls_settings(pki, SecurityProfile.MUTUAL_TLS)
    stranger = make_pki(tmp_path / "stranger", pki.openssl)
    cert, key = stranger.issue("cp3", "CP3")
    context = pki.client_context(cert, key)
    async with run_bridge(settings, records=[ChargerRecord("CP3")]) as bridge:
        with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
            async with running(SimCharger16, bridge.url, "CP3", None, context) as sim:
                await sim.boot()
        assert not bridge.log.of(ChargerConnected)
