"""The aggregator's systemd watchdog: pings withheld once a loop died or the endpoint is down."""

from __future__ import annotations

import asyncio

from agent.central.app import aggregator_watchdog
from uftp.loops import SupervisedLoop


class Fatal(BaseException):
    """What escapes a step's error handling: a bug that ends the loop."""


async def test_a_dead_loop_withholds_the_ping_and_a_stopped_one_does_not() -> None:
    async def fine() -> float | None:
        return None

    async def doomed() -> float | None:
        raise Fatal("bug")

    healthy = SupervisedLoop("publisher", fine, interval_s=60.0)
    stopped = SupervisedLoop("metering", fine, interval_s=60.0)
    dying = SupervisedLoop("reassign", doomed, interval_s=60.0)
    port: list[int | None] = [8443]
    watchdog = aggregator_watchdog(lambda: port[0], [healthy, stopped, dying])
    for loop in (healthy, stopped):
        loop.start()
    await stopped.stop()
    assert await watchdog.check() == []

    dying.start()
    for _ in range(20):
        await asyncio.sleep(0)
    assert await watchdog.check() == ["loops: stopped for good: reassign"]
    port[0] = None
    assert await watchdog.check() == [
        "uftp: UFTP endpoint down",
        "loops: stopped for good: reassign",
    ]
    await healthy.stop()
