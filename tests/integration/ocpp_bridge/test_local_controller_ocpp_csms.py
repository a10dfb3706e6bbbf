"""Local-controller mode to a CSMS built on the `ocpp` library (mobilityhouse): a charger (npm
ocpp-rpc, strict) -> flexbridge -> that CSMS (tests/support/ocpp_csms.py), beside the ocpp-rpc
CSMS of test_local_controller.py. Both peers validate every message against their own copy of
the official schemas; a failure on either side fails the test.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from ocpp_bridge.relay import UpstreamPolicy
from ocpp_bridge.settings import SecurityProfile
from ocpp_bridge.upstream import LOCAL_CONTROLLER_LAYOUT, UpstreamTarget
from tests.conftest import in_ci
from tests.integration.ocpp_bridge.conftest import PASSWORD
from tests.integration.ocpp_bridge.test_local_controller import (
    CHARGER_16,
    CHARGER_201,
    controller,
    no_duplicate_ids,
    url,
)
from tests.support.certificates import MISSING as OPENSSL_MISSING
from tests.support.certificates import TestPki, find_openssl, make_pki
from tests.support.node_peer import MISSING, NodeCharger, find_node
from tests.support.ocpp_csms import OcppCsms

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOP_16 = ["StopTransaction", "StatusNotification"]
STOP_201 = ["TransactionEvent", "StatusNotification"]


@pytest.fixture
def node() -> str:
    found = find_node()
    if found is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


def csms_profile(protocol: str) -> object:
    schedule = {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
        "startSchedule": "2026-12-02T00:00:00Z",
    }
    profile = {
        "stackLevel": 5,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
    }
    if protocol == "ocpp1.6":
        return c16.SetChargingProfile(
            connector_id=0,
            cs_charging_profiles={**profile, "chargingProfileId": 7, "chargingSchedule": schedule},
        )
    return c201.SetChargingProfile(
        evse_id=0,
        charging_profile={**profile, "id": 7, "chargingSchedule": [{**schedule, "id": 70}]},
    )


def stack_level(params: dict[str, Any]) -> int:
    profile = params.get("csChargingProfiles") or params.get("chargingProfile") or {}
    return int(profile.get("stackLevel", -1))


def remote_start(protocol: str) -> object:
    if protocol == "ocpp1.6":
        return c16.RemoteStartTransaction(id_tag="REMOTE-1", connector_id=1)
    return c201.RequestStartTransaction(
        id_token={"idToken": "REMOTE-1", "type": "ISO14443"}, remote_start_id=7
    )


@pytest.mark.parametrize(
    ("protocol", "identity", "sequence", "ending"),
    [
        ("ocpp1.6", "RPC16", CHARGER_16, STOP_16),
        ("ocpp2.0.1", "RPC201", CHARGER_201, STOP_201),
    ],
)
async def test_an_ocpp_library_csms_gets_boot_and_transaction_once_in_order_and_its_calls_go_down(
    node: str, protocol: str, identity: str, sequence: list[str], ending: list[str]
) -> None:
    csms = await OcppCsms.start()
    charger: NodeCharger | None = None
    try:
        async with controller(csms.port) as system:
            charger = await NodeCharger.start(node, protocol, url(system), identity, PASSWORD)
            await charger.wait_for("ready")
            await csms.wait_for_call(identity, "MeterValues")
            station = csms.station(identity)
            assert station.protocol == protocol
            assert station.authorization is not None  # the charger's Basic credentials
            boot = await charger.wait_for("boot")
            assert boot["result"]["status"] == "Accepted"  # the library CSMS's answer
            if protocol == "ocpp1.6":
                started = await charger.wait_for("started")
                assert started["result"]["transactionId"] >= 100  # the CSMS's number

            # The CSMS's RemoteStart and SetChargingProfile reach the charger; answers return.
            answer = await csms.call(identity, remote_start(protocol))
            assert answer.status == "Accepted"
            await charger.wait_for_call(
                "RemoteStartTransaction" if protocol == "ocpp1.6" else "RequestStartTransaction"
            )
            answer = await csms.call(identity, csms_profile(protocol))
            assert answer.status == "Accepted"
            await charger.wait_for_call(
                "SetChargingProfile", lambda params: stack_level(params) == 5
            )
            # The CSMS's profile is on the charger beside flexbridge's own safe layer, and the
            # relay keeps it as a limit the agent plans within (10 A on EVSE 0).
            levels = [stack_level(p) for p in charger.calls("SetChargingProfile")]
            assert LOCAL_CONTROLLER_LAYOUT.safe_stack_level in levels, levels
            start = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
            limit_w = system.csms_limit_w(identity, start, start + timedelta(minutes=15))
            assert limit_w == 10 * 230.0 * 3

            assert await charger.stop() == 0
            await csms.wait_for_call(
                identity, "StatusNotification", sequence.count("StatusNotification") + 1
            )
            calls = [action for action, _ in csms.calls(identity)]
            assert calls == [*sequence, *ending], calls
            frames = csms.frames(identity)
            no_duplicate_ids(frames)
            assert not [m for m in frames if str(m[1]).startswith("fb-")], frames
            # The only answers the CSMS got are to its own two CALLs.
            answers = [m for m in frames if m[0] in (3, 4)]
            assert [m[0] for m in answers] == [3, 3], answers
            assert charger.complaints() == []
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()
    assert csms.complaints() == []


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    openssl = find_openssl()
    if openssl is None:
        if in_ci():
            pytest.fail(OPENSSL_MISSING)
        pytest.skip(OPENSSL_MISSING)
    return make_pki(tmp_path / "pki", openssl)


def mutual_tls(pki: TestPki) -> ssl.SSLContext:
    """The CSMS's side of security profile 3: its certificate, and a client certificate signed
    by the CA required of every station."""
    cert, key = pki.issue("csms", "csms", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.mark.parametrize("presented", [None, "SITE1-RPC16"])
async def test_security_profile_3_upstream_presents_the_client_certificate_of_the_identity(
    node: str, pki: TestPki, presented: str | None
) -> None:
    """The charger reaches flexbridge on profile 1; flexbridge reaches the CSMS on profile 3:
    wss://, the CSMS verified against the configured CA, flexbridge's client certificate for the
    identity it presents (the charger's own, or the one configured), no password."""
    identity = presented or "RPC16"
    client_cert, client_key = pki.issue("station", identity)
    csms = await OcppCsms.start(ssl_context=mutual_tls(pki))
    target = UpstreamTarget(
        f"wss://127.0.0.1:{csms.port}/ocpp",
        security_profile=SecurityProfile.MUTUAL_TLS,
        identity=presented,
        ca_file=pki.ca_cert,
        cert_file=client_cert,
        key_file=client_key,
    )
    charger: NodeCharger | None = None
    try:
        async with controller(csms.port, target=target) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            await charger.wait_for("ready")
            await csms.wait_for_call(identity, "MeterValues")
            station = csms.station(identity)
            assert station.certificate_cn == identity
            assert station.identity == identity
            assert station.authorization is None  # profile 3: the certificate says who it is
            assert station.protocol == "ocpp1.6"
            assert [a for a, _ in csms.calls(identity)] == CHARGER_16
            boot = await charger.wait_for("boot")
            assert boot["result"]["status"] == "Accepted"
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()
    assert csms.complaints() == []


async def test_security_profile_3_upstream_without_the_ca_trusted_is_never_relayed(
    node: str, pki: TestPki, tmp_path: Path
) -> None:
    """A CSMS whose certificate the configured CA did not sign is not talked to (strict: the
    charger is closed), and it hears nothing."""
    other = make_pki(tmp_path / "other", pki.openssl)
    client_cert, client_key = pki.issue("station", "RPC16")
    csms = await OcppCsms.start(ssl_context=mutual_tls(pki))
    target = UpstreamTarget(
        f"wss://127.0.0.1:{csms.port}/ocpp",
        security_profile=SecurityProfile.MUTUAL_TLS,
        ca_file=other.ca_cert,
        cert_file=client_cert,
        key_file=client_key,
    )
    charger: NodeCharger | None = None
    try:
        async with controller(csms.port, UpstreamPolicy.STRICT, target=target) as system:
            charger = await NodeCharger.start(node, "ocpp1.6", url(system), "RPC16", PASSWORD)
            closed = await charger.wait_for("closed")
            assert closed["code"] == 1011
            assert csms.stations == []  # never past the TLS handshake
    finally:
        if charger is not None:
            await charger.kill()
        await csms.stop()
