"""The charger model: sessions, status, meter samples, as version-neutral events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ocpp_bridge.events import (
    BootInfo,
    ChargerConnected,
    ChargerDisconnected,
    ConnectorStatus,
    EvseStatusChanged,
    MeterSample,
    ProtocolVersion,
    SessionEnded,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.metering import MeterReading
from ocpp_bridge.model import ChargerModel

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def booted_model() -> ChargerModel:
    model = ChargerModel("CP1")
    model.connection_opened(ProtocolVersion.OCPP16, T0)
    return model


def test_boot_and_disconnect() -> None:
    model = booted_model()
    boot = BootInfo("V", "M", "S1", "1.0", ProtocolVersion.OCPP16)
    assert model.booted(boot, T0) == [ChargerConnected("CP1", T0, boot)]
    assert model.ready
    assert model.connection_closed(T0, "gone") == [ChargerDisconnected("CP1", T0, "gone")]
    assert model.connection_closed(T0, "again") == []


def test_reconnect_without_boot_keeps_the_known_boot_data() -> None:
    model = booted_model()
    boot = BootInfo("V", "M", None, None, ProtocolVersion.OCPP16)
    model.booted(boot, T0)
    model.connection_closed(T0, "gone")
    model.connection_opened(ProtocolVersion.OCPP16, T0)
    events = model.booted(None, T0)
    assert events == [ChargerConnected("CP1", T0, boot)]


def test_status_events_only_on_change() -> None:
    model = booted_model()
    first = model.status(1, 1, ConnectorStatus.AVAILABLE, T0)
    assert first == [EvseStatusChanged("CP1", 1, 1, ConnectorStatus.AVAILABLE, T0)]
    assert model.status(1, 1, ConnectorStatus.AVAILABLE, T0) == []
    assert len(model.status(1, 1, ConnectorStatus.FAULTED, T0, "GroundFailure")) == 1


def test_session_energy_is_register_now_minus_register_at_start() -> None:
    model = booted_model()
    [started] = model.start_session(1, "77", "TAG", T0, 10_000.0, T0)
    assert isinstance(started, SessionStarted)
    assert started.session.session_id == "CP1/77"
    events = model.meter_readings(
        1, [MeterReading(T0 + timedelta(minutes=5), power_w=7000.0, energy_wh=10_600.0)], T0
    )
    sample, updated = events
    assert isinstance(sample, MeterSample)
    assert sample.session_id == "CP1/77"
    assert isinstance(updated, SessionUpdated)
    assert updated.session.energy_wh == 600.0
    [ended] = model.end_session(
        "77", T0 + timedelta(hours=1), T0, register_wh=17_000.0, reason="EVDisconnected"
    )
    assert isinstance(ended, SessionEnded)
    assert ended.session.energy_wh == 7_000.0
    assert ended.session.stop_reason == "EVDisconnected"
    assert model.active_session(1) is None


def test_a_transaction_first_seen_midway_still_becomes_a_session() -> None:
    model = booted_model()
    events = model.update_session("T-9", T0, evse_id=2, register_wh=500.0)
    assert isinstance(events[0], SessionStarted)
    assert events[0].session.started_at is None
    assert model.active_session(2) is not None
    later = model.update_session("T-9", T0, register_wh=800.0)
    assert isinstance(later[0], SessionUpdated)
    assert later[0].session.energy_wh == 300.0


def test_repeated_started_and_ended_are_idempotent() -> None:
    model = booted_model()
    assert model.start_session(1, "5", None, T0, None, T0)
    assert model.start_session(1, "5", None, T0, None, T0) == []
    assert model.end_session("5", T0, T0)
    # A repeated Ended for a forgotten transaction is a recovered-then-ended session.
    again = model.end_session("5", T0, T0)
    assert [type(e) for e in again] == [SessionStarted, SessionEnded]


def test_power_is_derived_from_the_register_when_not_reported() -> None:
    model = booted_model()
    model.meter_readings(1, [MeterReading(T0, energy_wh=1000.0)], T0)
    [sample] = model.meter_readings(
        1, [MeterReading(T0 + timedelta(minutes=6), energy_wh=1700.0)], T0
    )
    assert isinstance(sample, MeterSample)
    assert sample.power_derived
    assert sample.power_w is not None
    assert abs(sample.power_w - 7000.0) < 1e-6


def test_ev_needs_update_the_active_session() -> None:
    model = booted_model()
    model.start_session(1, "1", None, T0, None, T0)
    departure = T0 + timedelta(hours=8)
    [updated] = model.ev_needs(1, T0, 30_000.0, departure, 40.0)
    assert isinstance(updated, SessionUpdated)
    assert updated.session.requested_energy_wh == 30_000.0
    assert updated.session.departure_time == departure
    assert updated.session.soc_percent == 40.0
    assert model.ev_needs(2, T0, 1.0, None) == []  # no session on EVSE 2
