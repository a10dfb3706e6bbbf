"""The pause between forecast workers after failures: doubling, capped, reset by a success."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.site.forecasting import WORKER_PAUSE_MAX_S, WORKER_PAUSE_MIN_S, WorkerPause


def test_failures_in_a_row_double_the_pause_up_to_an_hour() -> None:
    now = [1000.0]
    pause = WorkerPause(monotonic=lambda: now[0])
    assert pause.remaining_s() == 0.0
    assert [pause.failed() for _ in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert pause.remaining_s() == 3600.0
    now[0] += 3599.0
    assert pause.remaining_s() == 1.0
    now[0] += 1.0
    assert pause.remaining_s() == 0.0


def test_a_success_resets_the_pause() -> None:
    now = [0.0]
    pause = WorkerPause(monotonic=lambda: now[0])
    pause.failed()
    pause.failed()
    pause.succeeded()
    assert pause.remaining_s() == 0.0
    assert pause.failed() == WORKER_PAUSE_MIN_S


@given(st.lists(st.booleans(), max_size=40), st.floats(0, 1e6))
def test_the_pause_is_always_within_its_bounds(outcomes: list[bool], start: float) -> None:
    now = [start]
    pause = WorkerPause(monotonic=lambda: now[0])
    for failed in outcomes:
        if failed:
            started = pause.failed()
            assert WORKER_PAUSE_MIN_S <= started <= WORKER_PAUSE_MAX_S
            assert pause.remaining_s() == started
        else:
            pause.succeeded()
            assert pause.remaining_s() == 0.0
