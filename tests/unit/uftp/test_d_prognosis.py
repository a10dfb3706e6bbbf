"""Use case "Exchange D-Prognoses per Congestion Point", checked by the
simulated DSO: all ISPs of the day, increasing revisions, plausible power."""

from __future__ import annotations

from datetime import date

from tests.support import uftp as build
from uftp import calendar, reasons
from uftp.models import DPrognosisISP
from uftp.validation import check_d_prognosis


def reasons_of(problems: list[str]) -> list[str]:
    return [reasons.reason_of(p) for p in problems]


def test_complete_prognosis_is_accepted() -> None:
    assert check_d_prognosis(build.d_prognosis()) == []


def test_one_element_may_cover_the_whole_day() -> None:
    whole_day = build.d_prognosis(isps=[DPrognosisISP(power=500, start=1, duration=96)])
    assert check_d_prognosis(whole_day) == []


def test_lacking_isps() -> None:
    prognosis = build.d_prognosis(powers=[100] * 95)  # ISP 96 missing
    problems = check_d_prognosis(prognosis)
    assert reasons_of(problems) == [reasons.LACKING_ISPS]
    assert "96" in problems[0]


def test_dst_days_need_92_and_100_isps() -> None:
    for period, count in ((date(2030, 3, 31), 92), (date(2030, 10, 27), 100)):
        assert calendar.isp_count(period, build.TZ, 15) == count
        assert check_d_prognosis(build.d_prognosis(period=period)) == []
        short = build.d_prognosis(period=period, powers=[1] * (count - 1))
        assert reasons_of(check_d_prognosis(short)) == [reasons.LACKING_ISPS]


def test_subordinate_sequence_number() -> None:
    prognosis = build.d_prognosis(revision=2)
    assert check_d_prognosis(prognosis, previous_revision=1) == []
    for previous in (2, 3):
        assert reasons_of(check_d_prognosis(prognosis, previous_revision=previous)) == [
            reasons.SUBORDINATE_SEQUENCE_NUMBER
        ]


def test_power_value_rejection() -> None:
    prognosis = build.d_prognosis(powers=[1000] * 95 + [10_000_000])
    assert reasons_of(check_d_prognosis(prognosis, max_abs_power_w=1_000_000)) == [
        reasons.POWER_VALUE_REJECTION
    ]
