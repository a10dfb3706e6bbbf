"""`DeadlineTimer`: one loop timer per deadline that comes earlier, none per deadline that moves
later (a relayed charger's every CALL does), and never a missed or early deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ocpp_bridge.deadline import DeadlineTimer


@pytest.fixture
async def armed(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    loop = asyncio.get_running_loop()
    calls: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None).__class__ is DeadlineTimer:
            calls.append(when)  # the timer's, not asyncio.sleep's
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    return calls


async def test_a_deadline_moving_later_costs_no_timer_until_it_is_near(armed: list[float]) -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(fired.append)
    start = loop.time()
    for k in range(50):  # a CALL answered and the next one sent, 50 times
        timer.follow(start + 0.2 + k * 0.001)
        timer.follow(None)
    timer.follow(start + 0.3)
    assert len(armed) == 1
    await asyncio.sleep(0.25)
    assert fired == []  # went off at the first deadline, armed again for the last one
    assert len(armed) == 2
    await asyncio.sleep(0.15)
    assert len(fired) == 1
    assert fired[0] >= start + 0.3


async def test_an_earlier_deadline_is_armed_and_a_dropped_one_never_fires(
    armed: list[float],
) -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(fired.append)
    start = loop.time()
    timer.follow(start + 10)
    timer.follow(start + 0.05)
    assert len(armed) == 2
    await asyncio.sleep(0.1)
    assert len(fired) == 1
    timer.follow(start + 0.15)
    timer.follow(None)
    await asyncio.sleep(0.1)
    assert len(fired) == 1
