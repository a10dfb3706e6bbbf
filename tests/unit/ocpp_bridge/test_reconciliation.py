"""The charger model keeps to what the charger has: resumed sessions, lost end messages,
silent sessions, and signs of life."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ocpp_bridge.events import (
    ChargerSeen,
    ConnectorStatus,
    ProtocolVersion,
    SessionEnded,
    SessionInfo,
    SessionStarted,
    SessionUpdated,
)
from ocpp_bridge.metering import MeterReading
from ocpp_bridge.model import (
    GONE_AVAILABLE,
    GONE_NOT_ONGOING,
    NO_SIGN_OF_LIFE,
    SEEN_EVERY,
    SUPERSEDED,
    ChargerModel,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def model() -> ChargerModel:
    m = ChargerModel("CP1")
    m.connection_opened(ProtocolVersion.OCPP16, T0)
    return m


def resumed(transaction_id: str, evse_id: int, energy: float, start: float | None) -> SessionInfo:
    return SessionInfo(
        session_id=f"CP1/{transaction_id}",
        charger_id="CP1",
        evse_id=evse_id,
        transaction_id=transaction_id,
        id_token=None,
        started_at=T0,
        energy_wh=energy,
        meter_start_wh=start,
    )


@given(
    start=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    counted=st.floats(min_value=0, max_value=1e5, allow_nan=False),
    more=st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_a_resumed_session_counts_from_the_register_at_its_start(
    start: float, counted: float, more: float
) -> None:
    m = model()
    m.resume([resumed("7", 1, counted, start)], T0)
    register = start + counted + more
    m.meter_readings(1, [MeterReading(T0, energy_wh=register)], T0, "7")
    session = m.session("7")
    assert session is not None
    assert abs((session.energy_wh or 0) - (counted + more)) <= 1e-6 * max(1.0, register)


def test_a_resumed_session_without_start_register_goes_on_from_its_energy() -> None:
    m = model()
    m.resume([resumed("7", 1, 400.0, None)], T0)
    m.meter_readings(1, [MeterReading(T0, energy_wh=10_000.0)], T0, "7")
    events = m.meter_readings(1, [MeterReading(T0, energy_wh=10_050.0)], T0, "7")
    [updated] = [e for e in events if isinstance(e, SessionUpdated)]
    assert updated.session.energy_wh == 450.0
    assert updated.session.meter_start_wh is None or updated.session.meter_start_wh == 9_600.0


def test_meter_start_is_part_of_the_session() -> None:
    m = model()
    [started] = m.start_session(1, "1", None, T0, 1234.0, T0)
    assert isinstance(started, SessionStarted)
    assert started.session.meter_start_wh == 1234.0


def test_a_new_transaction_closes_an_older_one_on_the_same_evse() -> None:
    m = model()
    m.start_session(1, "1", None, T0, 0.0, T0)
    m.start_session(2, "2", None, T0, 0.0, T0)
    events = m.start_session(1, "3", None, T0 + timedelta(hours=1), 0.0, T0)
    assert [type(e) for e in events] == [SessionEnded, SessionStarted]
    ended = events[0]
    assert isinstance(ended, SessionEnded)
    assert ended.session.transaction_id == "1"
    assert ended.session.stop_reason == SUPERSEDED
    assert {s.transaction_id for s in m.active_sessions()} == {"2", "3"}


def test_available_connector_closes_its_session_and_late_messages_do_not_revive_it() -> None:
    m = model()
    m.start_session(1, "1", None, T0, 100.0, T0)
    m.status(1, 1, ConnectorStatus.AVAILABLE, T0)
    [ended] = m.status_without_transaction(1, T0)
    assert isinstance(ended, SessionEnded)
    assert ended.session.stop_reason == GONE_AVAILABLE
    assert m.active_session(1) is None
    # A sample of it replayed later is no session any more ...
    events = m.meter_readings(1, [MeterReading(T0, energy_wh=900.0)], T0, "1")
    assert not [e for e in events if isinstance(e, SessionStarted | SessionUpdated)]
    assert m.update_session("1", T0, register_wh=950.0) == []
    # ... but its own end message, arriving late, corrects the record.
    [corrected] = m.end_session("1", T0, T0, register_wh=1100.0, reason="Local")
    assert isinstance(corrected, SessionEnded)
    assert corrected.session.energy_wh == 1000.0
    assert corrected.session.stop_reason == "Local"
    assert m.active_session(1) is None


def test_available_without_session_changes_nothing() -> None:
    assert model().status_without_transaction(1, T0) == []


def test_transaction_not_ongoing_is_closed() -> None:
    m = model()
    m.start_session(1, "9", None, T0, None, T0)
    [ended] = m.transaction_not_ongoing("9", T0)
    assert isinstance(ended, SessionEnded)
    assert ended.session.stop_reason == GONE_NOT_ONGOING
    assert m.transaction_not_ongoing("9", T0) == []


def test_silent_sessions_are_closed_and_signs_of_life_keep_them() -> None:
    m = model()
    m.start_session(1, "1", None, T0, 0.0, T0)
    m.start_session(2, "2", None, T0, 0.0, T0)
    after = timedelta(minutes=30)
    m.meter_readings(2, [MeterReading(T0, power_w=10.0)], T0 + timedelta(minutes=20))
    m.status(2, 1, ConnectorStatus.SUSPENDED_EV, T0 + timedelta(minutes=25))
    assert m.close_silent(T0 + timedelta(minutes=29), after) == []
    [ended] = m.close_silent(T0 + timedelta(minutes=30), after)
    assert isinstance(ended, SessionEnded)
    assert ended.session.transaction_id == "1"
    assert ended.session.stop_reason == NO_SIGN_OF_LIFE
    assert [s.transaction_id for s in m.active_sessions()] == ["2"]


def test_resumed_sessions_are_silent_from_their_resumption() -> None:
    m = model()
    m.resume([resumed("4", 1, 0.0, 0.0)], T0)
    assert m.close_silent(T0 + timedelta(minutes=5), timedelta(minutes=10)) == []
    assert len(m.close_silent(T0 + timedelta(minutes=10), timedelta(minutes=10))) == 1


def test_charger_seen_is_published_at_most_every_few_seconds() -> None:
    m = model()
    assert m.seen(T0) == [ChargerSeen("CP1", T0)]
    assert m.seen(T0 + SEEN_EVERY / 2) == []
    assert m.last_seen == T0 + SEEN_EVERY / 2
    assert m.seen(T0 + SEEN_EVERY) == [ChargerSeen("CP1", T0 + SEEN_EVERY)]
