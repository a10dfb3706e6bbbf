"""Use case "Exchange Flexibility Requests": the AGR's checks."""

from __future__ import annotations

from datetime import timedelta

from tests.support import uftp as build
from uftp import reasons
from uftp.models import AvailableRequested, FlexRequestISP
from uftp.validation import check_flex_request

NOW = build.NOW


def reasons_for(**overrides: object) -> list[str]:
    request = build.flex_request(**overrides)  # type: ignore[arg-type]
    return [reasons.reason_of(r) for r in check_flex_request(request, NOW)]


def isp(disposition: str | None, min_power: int, max_power: int, start: int = 69) -> FlexRequestISP:
    return FlexRequestISP(
        disposition=None if disposition is None else AvailableRequested(disposition),
        min_power=min_power,
        max_power=max_power,
        start=start,
    )


def test_accepted_request() -> None:
    assert reasons_for() == []


def test_lacking_requested_disposition() -> None:
    assert reasons_for(isps=[isp("Available", 0, 100)]) == [reasons.LACKING_REQUESTED_DISPOSITION]
    # Disposition is optional in the XSD; an ISP without one requests nothing.
    assert reasons_for(isps=[isp(None, -100, -10)]) == [reasons.LACKING_REQUESTED_DISPOSITION]


def test_requested_power_discrepancy_has_no_direction() -> None:
    assert reasons_for(isps=[isp("Requested", -5000, 5000)]) == [
        reasons.REQUESTED_POWER_DISCREPANCY
    ]
    # One-sided requests and the zero boundary are fine.
    assert reasons_for(isps=[isp("Requested", 0, 5000)]) == []
    assert reasons_for(isps=[isp("Requested", -5000, 0)]) == []
    # Available ISPs may straddle zero.
    assert reasons_for(isps=[isp("Requested", 100, 200), isp("Available", -5, 5, start=70)]) == []


def test_power_discrepancy_min_above_max() -> None:
    assert reasons_for(isps=[isp("Requested", 100, 200), isp("Available", 10, -10, 70)]) == [
        reasons.POWER_DISCREPANCY
    ]


def test_expiration_in_the_past_or_after_the_last_isp() -> None:
    assert reasons_for(expiration_date_time=NOW - timedelta(seconds=1)) == [
        reasons.EXPIRATION_OUT_OF_BOUNDS
    ]
    # ISP 72 of 2030-01-16 ends at 18:00 Amsterdam = 17:00 UTC.
    last_end = NOW.replace(day=16, hour=17)
    assert reasons_for(expiration_date_time=last_end) == []
    assert reasons_for(expiration_date_time=last_end + timedelta(minutes=1)) == [
        reasons.EXPIRATION_OUT_OF_BOUNDS
    ]


def test_a_lower_revision_than_already_received_is_stale() -> None:
    request = build.flex_request(revision=3)
    assert check_flex_request(request, NOW, previous_revision=3) == []
    assert check_flex_request(request, NOW, previous_revision=2) == []
    stale = check_flex_request(request, NOW, previous_revision=4)
    assert [reasons.reason_of(r) for r in stale] == [reasons.SUBORDINATE_SEQUENCE_NUMBER]


def test_explanations_name_the_isp() -> None:
    (problem,) = check_flex_request(build.flex_request(isps=[isp("Requested", -1, 1)]), NOW)
    assert problem == "Requested Power discrepancy: ISP 69: MinPower -1 < 0 < MaxPower 1"
