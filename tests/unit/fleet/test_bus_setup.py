"""Connecting and setting up the bus, on stand-ins (pure logic, no server).

The first connect names a refused password as its reason even after the resets that follow
it. The centre's set-up asks JetStream again when a request goes unanswered or JetStream says
it is not ready (503), and only then: a refusal or a conflicting consumer is an answer, raised
at once. The same set-up against a real cluster without quorum is in
tests/integration/fleet/test_bus.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, StreamConfig

from agent.fleet.bus import (
    _ConnectErrors,
    ensure_central_consumer,
    ensure_site_consumer,
    ensure_streams,
)
from agent.fleet.ports import BusUnavailable
from agent.fleet.protocol import CMD_STREAM, UP_STREAM


def _not_found() -> Exception:
    return nats.js.errors.NotFoundError(code=404, err_code=10059, description="not found")


def _unavailable() -> Exception:
    return nats.js.errors.ServiceUnavailableError(
        code=503, description="JetStream system temporarily unavailable"
    )


class FakeJetStream:
    """Streams and consumers in dicts; `faults` are raised, one per API call, first."""

    def __init__(self, faults: Iterator[Exception | None] | None = None) -> None:
        self.streams: dict[str, StreamConfig] = {}
        self.consumers: dict[tuple[str, str], ConsumerConfig] = {}
        self.calls: list[str] = []
        self._faults = faults if faults is not None else iter(())

    def _call(self, name: str) -> None:
        self.calls.append(name)
        fault = next(self._faults, None)
        if fault is not None:
            raise fault

    async def stream_info(self, name: str) -> Any:
        self._call("stream_info")
        if name not in self.streams:
            raise _not_found()
        return self.streams[name]

    async def add_stream(self, config: StreamConfig) -> None:
        self.calls.append("add_stream")
        assert config.name is not None
        self.streams[config.name] = config  # applied, even when the answer is lost below
        fault = next(self._faults, None)
        if fault is not None:
            raise fault

    async def update_stream(self, config: StreamConfig) -> None:
        self._call("update_stream")
        assert config.name is not None
        self.streams[config.name] = config

    async def consumer_info(self, stream: str, durable: str) -> Any:
        self._call("consumer_info")
        if (stream, durable) not in self.consumers:
            raise _not_found()

        class Info:
            config = self.consumers[(stream, durable)]

        return Info()

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> None:
        self._call("add_consumer")
        assert config.durable_name is not None
        self.consumers[(stream, config.durable_name)] = config


async def test_a_create_whose_answer_was_lost_is_not_made_twice() -> None:
    """The first FLEET_UP create is applied but its answer times out: the second round finds
    the stream and brings its settings to ours (an update, not a second create)."""
    js = FakeJetStream(iter([None, nats.errors.TimeoutError()]))
    await ensure_streams(js, replicas=3, timeout_s=10)  # type: ignore[arg-type]
    assert set(js.streams) == {UP_STREAM, CMD_STREAM}
    assert js.streams[UP_STREAM].num_replicas == 3
    assert js.calls[:4] == ["stream_info", "add_stream", "stream_info", "update_stream"]
    assert js.calls.count("add_stream") == 2  # one per stream


async def test_not_ready_and_no_responders_are_asked_again() -> None:
    faults = iter([_unavailable(), nats.errors.NoRespondersError(), _unavailable()])
    js = FakeJetStream(faults)
    await ensure_site_consumer(js, "a", timeout_s=10)  # type: ignore[arg-type]
    await ensure_central_consumer(js, timeout_s=10)  # type: ignore[arg-type]
    assert set(js.consumers) == {(CMD_STREAM, "site-a"), (UP_STREAM, "central")}
    assert js.calls.count("consumer_info") == 5  # three refused, then one per consumer


async def test_jetstream_that_never_answers_is_bus_unavailable_naming_the_step() -> None:
    forever = iter(lambda: _unavailable(), None)
    js = FakeJetStream(forever)
    with pytest.raises(BusUnavailable, match=r"setting up stream FLEET_UP: .* in 1 s"):
        await ensure_streams(js, timeout_s=1)  # type: ignore[arg-type]
    assert len(js.calls) > 2  # asked again before giving up
    assert not js.streams


async def test_a_consumer_with_another_filter_is_an_answer_not_retried() -> None:
    js = FakeJetStream()
    js.consumers[(CMD_STREAM, "site-a")] = ConsumerConfig(
        durable_name="site-a", filter_subject="fleet.cmd.b"
    )
    with pytest.raises(ValueError, match="delete it first"):
        await ensure_site_consumer(js, "a", timeout_s=10)  # type: ignore[arg-type]
    assert js.calls == ["consumer_info"]


def test_a_refused_password_stays_the_reason_after_the_resets_it_causes() -> None:
    """The server closes a connection whose credentials it refused; the client's next
    attempts meet resets. The line an operator reads must still say the password was wrong."""
    errors = _ConnectErrors()
    errors.note("nats: 'Authorization Violation'")
    errors.note("[Errno 104] Connection reset by peer")
    assert errors.reason(TimeoutError()) == "nats: 'Authorization Violation'"


def test_without_a_refusal_the_last_error_is_the_reason() -> None:
    errors = _ConnectErrors()
    assert errors.reason(TimeoutError()) == "TimeoutError"
    errors.note("[Errno 111] Connection refused")
    errors.note("nats: timeout")
    assert errors.reason(TimeoutError()) == "nats: timeout"


class CreateInFlight(FakeJetStream):
    """A create of ours that timed out is still being applied: the next create is refused as
    a duplicate and the update finds nothing, once; then the stream is there."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = True

    async def add_stream(self, config: StreamConfig) -> None:
        if self.in_flight:
            self.calls.append("add_stream")
            raise nats.js.errors.BadRequestError(
                code=400, err_code=10058, description="stream name already in use"
            )
        await super().add_stream(config)

    async def update_stream(self, config: StreamConfig) -> None:
        if self.in_flight:
            self.calls.append("update_stream")
            self.in_flight = False
            assert config.name is not None
            self.streams[config.name] = config  # the create lands after this answer
            raise _not_found()
        await super().update_stream(config)


async def test_a_create_still_in_flight_is_asked_again_not_raised() -> None:
    js = CreateInFlight()
    await ensure_streams(js, replicas=3, timeout_s=10)  # type: ignore[arg-type]
    assert set(js.streams) == {UP_STREAM, CMD_STREAM}
    assert js.calls[:5] == [
        "stream_info",
        "add_stream",
        "update_stream",
        "stream_info",
        "update_stream",
    ]


async def test_a_create_refused_for_good_names_the_refusal_when_time_is_up() -> None:
    class Refused(CreateInFlight):
        async def update_stream(self, config: StreamConfig) -> None:
            self.calls.append("update_stream")
            raise _not_found()

    js = Refused()
    with pytest.raises(BusUnavailable, match=r"FLEET_UP .*refused: stream name already in use"):
        await ensure_streams(js, timeout_s=1)  # type: ignore[arg-type]
