"""The `[forecast]` holiday calendar: country and subdivision from the holidays package plus
extra dates, checked when the configuration is read."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from agent.runtime.configfile import ConfigError, parse_config
from tests.unit.test_config import MINIMAL


def test_country_and_subdivision_are_checked_when_the_config_is_read() -> None:
    text = MINIMAL + '\n[forecast]\nholidays_country = "US"\nholidays_subdivision = "CA"\n'
    config = parse_config(text, environ={})
    assert config.forecast.holidays_country == "US"
    for bad, reason in (
        ('holidays_country = "XX"', "holiday calendar"),
        ('holidays_subdivision = "CA"', "holidays_subdivision needs holidays_country"),
        ('holidays = ["2024-02-30"]', "not a YYYY-MM-DD date"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(MINIMAL + f"\n[forecast]\n{bad}\n", environ={})
        assert reason in str(info.value.problems[0])


def test_the_agent_calendar_has_public_holidays_and_extra_dates() -> None:
    from agent.site.forecasting import SiteForecaster

    class FixedClock:
        def __init__(self, moment: datetime) -> None:
            self.moment = moment

        def now(self) -> datetime:
            return self.moment

    text = (
        MINIMAL
        + '\n[forecast]\nholidays_country = "US"\nholidays_subdivision = "CA"\n'
        + 'holidays = ["2024-08-16"]\n'
    )
    config = parse_config(text, environ={})
    clock = FixedClock(datetime(2024, 6, 1, tzinfo=UTC))
    forecaster = SiteForecaster(config, None, clock)  # type: ignore[arg-type]
    days = forecaster.calendar.holidays
    assert date(2024, 11, 29) in days  # California: the day after Thanksgiving
    assert date(2025, 1, 1) in days
    assert date(2024, 8, 16) in days
