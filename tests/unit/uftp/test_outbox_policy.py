"""Delivery policy (UFTP 3.1.0 specification, transport, "Transmission"): which HTTP outcomes are
final, and how long to wait before the next try."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from uftp.outbox import Attempt, backoff_delay, classify, next_attempt_at
from uftp.settings import RetryPolicy, SettingsError


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_success(status: int) -> None:
    assert classify(status).delivered


@pytest.mark.parametrize("status", [500, 502, 503, 504, 524, 404, 408, 419, 425, 429, 600, 199])
def test_temporary(status: int) -> None:
    outcome = classify(status)
    assert not outcome.delivered
    assert not outcome.final


@pytest.mark.parametrize("status", [400, 401, 403, 405, 411, 413, 415, 422])
def test_final(status: int) -> None:
    outcome = classify(status)
    assert (outcome.delivered, outcome.final) == (False, True)


def test_exponential_backoff_with_cap() -> None:
    policy = RetryPolicy(first_delay_s=2, max_delay_s=300)
    assert [backoff_delay(policy, n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff_delay(policy, 1, jitter=0.75) == 1.5
    assert backoff_delay(policy, 10_000) == 300  # no overflow


def test_retry_window_is_at_least_an_hour() -> None:
    with pytest.raises(SettingsError, match="one hour"):
        RetryPolicy(give_up_after_s=1800)
    with pytest.raises(SettingsError):
        RetryPolicy(first_delay_s=10, max_delay_s=5)


def test_next_attempt_backs_off_honours_retry_after_and_gives_up() -> None:
    policy = RetryPolicy(first_delay_s=2, max_delay_s=300, give_up_after_s=3600)
    created = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    now = created + timedelta(minutes=10)
    temporary = Attempt(delivered=False, error="HTTP 503")
    at = next_attempt_at(policy, temporary, 3, created, now, jitter=1.0)
    assert at == now + timedelta(seconds=8)
    # The peer's Retry-After when it asks for longer, up to the longest back-off.
    slow = Attempt(delivered=False, error="HTTP 429", retry_after_s=60)
    assert next_attempt_at(policy, slow, 3, created, now, jitter=1.0) == now + timedelta(seconds=60)
    greedy = Attempt(delivered=False, error="HTTP 429", retry_after_s=86_400)
    assert next_attempt_at(policy, greedy, 3, created, now, 1.0) == now + timedelta(seconds=300)
    # A final error, or a next try beyond the retry window: give up.
    final = Attempt(delivered=False, final=True, error="HTTP 400")
    assert next_attempt_at(policy, final, 1, created, now, jitter=1.0) is None
    late = created + timedelta(seconds=3600 - 5)
    assert next_attempt_at(policy, temporary, 3, created, late, jitter=1.0) is None
