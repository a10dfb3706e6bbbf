"""Use case "Exchange Flexibility Reservation Update": the AGR's checks."""

from __future__ import annotations

from datetime import timedelta

from tests.support import uftp as build
from uftp import reasons
from uftp.models import PowerISP
from uftp.validation import ReservationContract, check_flex_reservation_update

NOW = build.NOW
# -8 kW reserved in ISPs 69-72 (a reduction).
CONTRACT = ReservationContract(
    contract_id="C-1",
    update_deadline=NOW + timedelta(hours=1),
    reserved_power=dict.fromkeys(range(69, 73), -8000),
)


def check(contract: ReservationContract | None = CONTRACT, **overrides: object) -> list[str]:
    update = build.flex_reservation_update(**overrides)  # type: ignore[arg-type]
    return [reasons.reason_of(r) for r in check_flex_reservation_update(update, contract, NOW)]


def test_releasing_part_of_the_reservation_is_accepted() -> None:
    assert check() == []
    assert check(isps=[PowerISP(power=0, start=69, duration=4)]) == []  # everything released


def test_unknown_contract() -> None:
    assert check(contract=None) == [reasons.INVALID_MESSAGE]
    assert check(contract_id="C-9") == [reasons.INVALID_MESSAGE]


def test_deadline_expired() -> None:
    late = ReservationContract("C-1", NOW - timedelta(minutes=1), CONTRACT.reserved_power)
    assert check(contract=late) == [reasons.DEADLINE_EXPIRED]


def test_power_value_rejection() -> None:
    more = [PowerISP(power=-9000, start=69, duration=4)]
    assert check(isps=more) == [reasons.POWER_VALUE_REJECTION]
    reversed_direction = [PowerISP(power=2000, start=69)]
    assert check(isps=reversed_direction) == [reasons.POWER_VALUE_REJECTION]
    unreserved = [PowerISP(power=-100, start=10)]
    assert check(isps=unreserved) == [reasons.POWER_VALUE_REJECTION]
