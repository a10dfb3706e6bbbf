"""Pure edge helpers: schema errors, handshake parsing, settings, event buffer, schedule input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocpp.exceptions import (
    FormatViolationError,
    OccurrenceConstraintViolationError,
    PropertyConstraintViolationError,
    ProtocolError,
    TypeConstraintViolationError,
)
from websockets.datastructures import Headers

from ocpp_bridge import schemas
from ocpp_bridge.admission import basic_credentials, certificate_common_name, identity_from_path
from ocpp_bridge.connection import snake_keys
from ocpp_bridge.event_buffer import EventBuffer
from ocpp_bridge.events import (
    ChargerDisconnected,
    MeterSample,
    PowerPeriod,
    ProtocolVersion,
)
from ocpp_bridge.profiles import ElectricalData
from ocpp_bridge.settings import BridgeSettings, SecurityProfile, SettingsError, TlsSettings
from ocpp_bridge.smart_charging import ScheduleIds, read_composite, validate_schedule

V16 = ProtocolVersion.OCPP16
V201 = ProtocolVersion.OCPP201
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("version", "action", "payload", "error"),
    [
        (V201, "Heartbeat", {"extra": 1}, FormatViolationError),
        (
            V16,
            "BootNotification",
            {"chargePointVendor": 5, "chargePointModel": "M"},
            TypeConstraintViolationError,
        ),
        (
            V16,
            "BootNotification",
            {"chargePointVendor": "x" * 21, "chargePointModel": "M"},
            TypeConstraintViolationError,
        ),
        (V16, "BootNotification", {"chargePointModel": "M"}, ProtocolError),
        (
            V16,
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            PropertyConstraintViolationError,
        ),
        (V201, "MeterValues", {"evseId": 1, "meterValue": []}, OccurrenceConstraintViolationError),
    ],
)
def test_schema_violations_map_to_ocpp_error_codes(
    version: ProtocolVersion, action: str, payload: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        schemas.validate(version, action, payload, response=False)


def test_valid_payload_passes_and_unknown_action_is_not_found() -> None:
    schemas.validate(V16, "Heartbeat", {}, response=False)
    assert schemas.has_action(V201, "TransactionEvent")
    assert not schemas.has_action(V16, "TransactionEvent")
    with pytest.raises(schemas.SchemaNotFound):
        schemas.validator_for(V16, "FooBar", response=False)


def test_snake_keys_match_the_library() -> None:
    assert snake_keys({"meterValue": [{"sampledValue": [{"unitOfMeasure": {"unit": "W"}}]}]}) == {
        "meter_value": [{"sampled_value": [{"unit_of_measure": {"unit": "W"}}]}]
    }


@pytest.mark.parametrize(
    ("path", "identity"),
    [
        ("/ocpp/CP001", "CP001"),
        ("/ocpp/CP001/", "CP001"),
        ("/CP%2D1?x=1", "CP-1"),
        ("/", None),
        ("/ocpp/bad:id", None),
        ("/ocpp/" + "x" * 49, None),
    ],
)
def test_identity_is_the_last_path_segment(path: str, identity: str | None) -> None:
    assert identity_from_path(path) == identity


def basic(value: str) -> Headers:
    return Headers({"Authorization": value})


def test_basic_credentials_parsing() -> None:
    token = base64.b64encode(b"CP1:pa:ss").decode()
    assert basic_credentials(basic(f"Basic {token}")) == ("CP1", "pa:ss")
    assert basic_credentials(basic("Bearer abc")) is None
    assert basic_credentials(basic("Basic !!!")) is None
    assert basic_credentials(basic("Basic " + base64.b64encode(b"nocolon").decode())) is None
    assert basic_credentials(Headers()) is None


def test_certificate_common_name() -> None:
    cert = {"subject": ((("countryName", "NL"),), (("commonName", "CP7"),))}
    assert certificate_common_name(cert) == "CP7"
    assert certificate_common_name(None) is None


def test_settings_refuse_unsafe_or_incomplete_combinations(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="allow_security_profile_0"):
        BridgeSettings(security_profile=SecurityProfile.NONE)
    BridgeSettings(security_profile=SecurityProfile.NONE, allow_security_profile_0=True)
    with pytest.raises(SettingsError, match="needs tls"):
        BridgeSettings(security_profile=SecurityProfile.TLS_BASIC)
    with pytest.raises(SettingsError, match="ca_file"):
        BridgeSettings(
            security_profile=SecurityProfile.MUTUAL_TLS,
            tls=TlsSettings(tmp_path / "c.pem", tmp_path / "k.pem"),
        )
    with pytest.raises(SettingsError):
        BridgeSettings(dynamic_validity_s=0)


def sample(i: int) -> MeterSample:
    return MeterSample("CP", 1, T0, None, float(i))


async def test_event_buffer_drops_meter_samples_first_and_keeps_lifecycle_events() -> None:
    buffer = EventBuffer(capacity=3)
    for i in range(5):
        buffer.put(sample(i))
    buffer.put(ChargerDisconnected("CP", T0, "x"))
    assert buffer.dropped == 2
    got = [await buffer.get() for _ in range(4)]
    assert [type(e).__name__ for e in got] == ["MeterSample"] * 3 + ["ChargerDisconnected"]
    for _ in range(12):
        buffer.put(ChargerDisconnected("CP", T0, "x"))
    assert len(buffer) == 12
    buffer.put(ChargerDisconnected("CP", T0, "x"))  # beyond 4 x capacity: dropped too
    assert buffer.dropped == 3


@pytest.mark.parametrize(
    ("periods", "valid_until", "message"),
    [
        ([], T0 + timedelta(hours=1), "at least one"),
        ([PowerPeriod(T0, -1)], T0 + timedelta(hours=1), ">= 0"),
        ([PowerPeriod(T0, float("nan"))], T0 + timedelta(hours=1), ">= 0"),
        ([PowerPeriod(T0, float("inf"))], T0 + timedelta(hours=1), ">= 0"),
        ([PowerPeriod(T0.replace(tzinfo=None), 1)], T0 + timedelta(hours=1), "naive"),
        ([PowerPeriod(T0, 1), PowerPeriod(T0, 2)], T0 + timedelta(hours=1), "increase"),
        ([PowerPeriod(T0, 1)], T0, "not after"),
    ],
)
def test_bad_schedules_are_refused_with_the_offending_value(
    periods: list[PowerPeriod], valid_until: datetime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_schedule(periods, valid_until)


def test_schedule_ids_grow_and_survive_a_restart() -> None:
    clock = [1_800_000_000.0]
    first = ScheduleIds(lambda: clock[0])
    ids = [first.next() for _ in range(5)]
    assert ids == sorted(set(ids))
    clock[0] += 10
    restarted = ScheduleIds(lambda: clock[0])
    assert restarted.next() > ids[-1]
    assert ids[-1] < 2**31


def test_composite_in_amps_is_read_back_in_watts() -> None:
    response = {
        "status": "Accepted",
        "schedule": {
            "evseId": 1,
            "duration": 600,
            "scheduleStart": "2026-03-01T12:00:00Z",
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 16},
                {"startPeriod": 300, "limit": 10, "numberPhases": 1},
            ],
        },
    }
    composite = read_composite(V201, response, 1, ElectricalData(phases=3))
    assert composite.start == T0
    assert [(p.start, p.limit_w) for p in composite.periods] == [
        (T0, 11_040.0),
        (T0 + timedelta(seconds=300), 2_300.0),
    ]
