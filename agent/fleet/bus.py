"""The fleet bus on NATS JetStream (nats-py): `BusPort` for the site link and the aggregator,
and the centre's set-up of streams and durable consumers.

A publish is a JetStream request: it returns once the stream's leader has stored the message
on a quorum of replicas and answered with a publish acknowledgement. No answer in time (the
node we talk to died with the request in its socket, a leader election, no connection at
all) is `BusUnavailable`; the caller publishes again later with the same `msg_id`, which the
stream drops as a duplicate within its window and the receiver's idempotency key drops after.

A fetch binds to a durable pull consumer made ahead of time by the centre
(`ensure_site_consumer`, `ensure_central_consumer`); a site's user may not create one, and a
consumer created at first fetch would not have held the commands sent before it existed.

The client reconnects forever, to every node of the cluster in turn, backing off once it has
tried them all, so a site that lost its WAN for a day comes back by itself.

A permission violation is sent by the server asynchronously and the request it refused just
gets no answer; the client remembers the violations it was told about, so a request that timed
out on a refused subject raises `BusPermissionDenied` (with the server's words) rather than
looking like an empty consumer or a slow cluster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from agent.fleet.natsconf import CENTRAL_USER, site_inbox_prefix, site_user
from agent.fleet.ports import BusPort, BusUnavailable, Delivery
from agent.fleet.protocol import (
    CENTRAL_CONSUMER,
    CMD_STREAM,
    CMD_SUBJECTS,
    UP_STREAM,
    UP_SUBJECTS,
    cmd_subject,
    site_consumer,
)

log = logging.getLogger(__name__)

DAY_S = 86_400.0
# How long the streams keep messages nobody acked: a site or the centre may be away this long
# and still find everything waiting. Not a delivery guarantee beyond that: the sender's outbox
# is (it republishes whatever it never got confirmed).
STREAM_MAX_AGE_S = 7 * DAY_S
# The stream's de-duplication window: a republish within it is dropped by the stream; after
# it, by the receiver's idempotency key (never relied on alone).
DUPLICATE_WINDOW_S = 10 * 60.0
ACK_WAIT_S = 30.0
# How long the centre's set-up keeps asking a JetStream that does not answer yet.
SETUP_TIMEOUT_S = 30.0
# nats-py hands the server's -ERR text on lower-cased, subject included: compare lower-case.
_PERMISSION = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)"?', re.I)
# The server's refusal of a connection's credentials ("Authorization Violation", "User
# Authentication Expired", ...).
_REFUSED = re.compile(r"authori[sz]ation violation|authentication", re.I)


class BusPermissionDenied(BusUnavailable):
    """The server refused a subject to this user: a configuration error, not an outage."""


class NatsDelivery:
    """One fetched JetStream message (`agent.fleet.ports.Delivery`)."""

    def __init__(self, msg: Msg, bus: NatsBus) -> None:
        self._msg = msg
        self._bus = bus
        meta = msg.metadata
        self._num_delivered = int(meta.num_delivered)
        self.stream_seq = int(meta.sequence.stream)

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def num_delivered(self) -> int:
        return self._num_delivered

    @property
    def msg_id(self) -> str | None:
        headers = self._msg.headers or {}
        return headers.get("Nats-Msg-Id")

    async def ack(self) -> None:
        """Acknowledge and wait for the server's confirmation: without it the ack may have
        been lost with a node, and the message will come back (the receiver's key absorbs it)."""
        self._bus.check_connected()
        try:
            await self._msg.ack_sync(timeout=self._bus.ack_timeout_s)
        except TimeoutError:  # nats-py raises its own or asyncio's
            raise self._bus.unavailable(self._msg.reply, "ack not confirmed") from None
        except nats.errors.Error as exc:
            raise BusUnavailable(f"ack failed: {exc}") from None

    async def nak(self, delay_s: float) -> None:
        try:
            await self._msg.nak(delay=delay_s if delay_s > 0 else None)
            await self._bus.flush()
        except nats.errors.Error as exc:
            raise BusUnavailable(f"nak failed: {exc}") from None

    async def term(self) -> None:
        try:
            await self._msg.term()
            await self._bus.flush()
        except nats.errors.Error as exc:
            raise BusUnavailable(f"term failed: {exc}") from None


class _ConnectErrors:
    """What the first connect met, for the one line that says why it failed. A server that
    refuses the credentials closes the connection, so the next attempt often meets a reset
    or a timeout: the refusal is the reason, whatever came after it."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.refusal: str | None = None

    def note(self, text: str) -> None:
        self.last = text
        if _REFUSED.search(text):
            self.refusal = text

    def reason(self, exc: BaseException) -> str:
        return self.refusal or self.last or str(exc) or type(exc).__name__


class _Backoff:
    """Which node to try next and how long to wait first: every node once at once (a dead
    node should cost one failed connect, not a pause), then rounds spaced out exponentially
    with jitter up to `max_s`, so a thousand sites do not hammer a cluster coming back."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.attempt = 0
        self.last_netloc: str | None = None

    def reset(self, netloc: str | None) -> None:
        self.attempt = 0
        self.last_netloc = netloc

    def __call__(self, servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        if not servers:
            return None, self.max_s
        ordered = sorted(servers, key=lambda s: s.uri.netloc == self.last_netloc)
        choice = ordered[self.attempt % len(ordered)]
        rounds = self.attempt // len(ordered)
        self.attempt += 1
        if rounds == 0:
            return choice, 0.0
        delay = min(self.max_s, self.base_s * 2 ** (rounds - 1))
        return choice, delay * random.uniform(0.8, 1.2)


class NatsBus:
    """`agent.fleet.ports.BusPort` on a nats-py connection (make one with `connect`)."""

    def __init__(
        self,
        nc: Client,
        *,
        publish_timeout_s: float = 5.0,
        ack_timeout_s: float = 5.0,
        inbox_prefix: str = "_INBOX",
        domain: str | None = None,
    ) -> None:
        self._nc = nc
        self.inbox_prefix = inbox_prefix
        self.publish_timeout_s = publish_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self._api = f"$JS.{domain}.API" if domain is not None else "$JS.API"
        self._js = nc.jetstream(timeout=publish_timeout_s, domain=domain)
        self._pulls: dict[tuple[str, str], JetStreamContext.PullSubscription] = {}
        self._denied: dict[str, str] = {}  # subject or subscription -> the server's words

    # --- connecting -----------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        servers: Sequence[str],
        *,
        user: str,
        password: str,
        name: str,
        inbox_prefix: str = "_INBOX",
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 5.0,
        ack_timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        domain: str | None = None,
    ) -> NatsBus:
        """Connect to any of `servers`; BusUnavailable if none accepted us within
        `connect_timeout_s` (the reason: refused credentials, nothing listening). `domain`:
        the cluster's JetStream domain, for a client behind a leaf node."""
        if not servers:
            raise ValueError("no NATS servers given")
        nc = Client()
        backoff = _Backoff(backoff_base_s, backoff_max_s)
        bus_box: list[NatsBus] = []
        errors = _ConnectErrors()

        async def on_error(exc: Exception) -> None:
            text = str(exc) or type(exc).__name__
            errors.note(text)
            if bus_box and bus_box[0].note_error(text):
                return
            log.warning("fleet bus (%s): %s", name, text)

        async def on_disconnect() -> None:
            if nc.is_closed:
                return
            log.warning("fleet bus (%s): disconnected, reconnecting", name)

        async def on_reconnect() -> None:
            url = nc.connected_url
            backoff.reset(url.netloc if url else None)
            log.info("fleet bus (%s): reconnected to %s", name, url.netloc if url else "?")

        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=list(servers),
                    user=user,
                    password=password,
                    name=name,
                    inbox_prefix=inbox_prefix,
                    max_reconnect_attempts=-1,
                    # The first connect pauses this long between rounds (whole seconds in nats-py).
                    reconnect_time_wait=1,
                    reconnect_to_server_handler=backoff,
                    connect_timeout=2,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                timeout=connect_timeout_s,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await nc.close()
            raise BusUnavailable(
                f"no NATS server of {', '.join(servers)} accepted {user!r} within "
                f"{connect_timeout_s} s: {errors.reason(exc)}"
            ) from None
        url = nc.connected_url
        backoff.reset(url.netloc if url else None)
        bus = cls(
            nc,
            publish_timeout_s=publish_timeout_s,
            ack_timeout_s=ack_timeout_s,
            inbox_prefix=inbox_prefix,
            domain=domain,
        )
        bus_box.append(bus)
        return bus

    @classmethod
    async def connect_site(
        cls, servers: Sequence[str], site: str, password: str, **options: Any
    ) -> NatsBus:
        """A site's connection: user `site-<id>`, replies under `_INBOX_<id>` (its only
        subscribe permission)."""
        return await cls.connect(
            servers,
            user=site_user(site),
            password=password,
            name=options.pop("name", f"flexbridge-site-{site}"),
            inbox_prefix=site_inbox_prefix(site),
            **options,
        )

    @classmethod
    async def connect_central(
        cls, servers: Sequence[str], password: str, **options: Any
    ) -> NatsBus:
        return await cls.connect(
            servers,
            user=CENTRAL_USER,
            password=password,
            name=options.pop("name", "flexbridge-aggregator"),
            **options,
        )

    async def close(self) -> None:
        await self._nc.close()

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def messages_sent(self) -> int:
        """Messages handed to the connection so far (sent or buffered to send)."""
        return int(self._nc.stats["out_msgs"])

    @property
    def jetstream(self) -> JetStreamContext:
        return self._js

    async def flush(self) -> None:
        """Push buffered one-way messages (nak, term) to the socket."""
        try:
            await self._nc.flush(timeout=max(1, round(self.ack_timeout_s)))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"flush failed: {exc}") from None

    async def step_down_consumer(self, stream: str, durable: str) -> None:
        """Make the consumer's Raft group elect a leader again (the centre's user only).

        The repair for a node that, after a restart, keeps reporting this consumer "not
        current" on /healthz however much traffic flows (seen with nats-server 2.9.10): the
        new election brings its replica back in step. Harmless otherwise: the consumer is
        unavailable for the election's few hundred milliseconds, a fetch then just waits."""
        subject = f"{self._api}.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}"
        try:
            reply = await self._nc.request(subject, b"", timeout=self.publish_timeout_s)
        except nats.errors.Error as exc:
            raise BusUnavailable(f"step-down of {stream}/{durable} failed: {exc}") from None
        if b'"success":true' not in reply.data:
            raise BusUnavailable(f"step-down of {stream}/{durable} refused: {reply.data!r}")

    # --- errors ---------------------------------------------------------------------------
    def check_connected(self) -> None:
        """Refuse at once while there is no connection. nats-py would buffer the request
        until it reconnects; a site offline for a day retrying its outbox would pile up stale
        copies that all go out at once on return (past the stream's de-duplication window)."""
        if self._nc.is_closed:
            raise BusUnavailable("the bus connection is closed")
        if not self._nc.is_connected:
            raise BusUnavailable("not connected to any NATS server (reconnecting)")

    def note_error(self, text: str) -> bool:
        """Remember a permission violation the server told us about; True if it was one."""
        match = _PERMISSION.search(text)
        if match is None:
            return False
        subject = match[2].lower()
        if subject not in self._denied:
            log.error("fleet bus: the server refused %s (%s)", subject, text)
        self._denied[subject] = text
        return True

    def unavailable(self, subject: str | None, what: str) -> BusUnavailable:
        """The error for a request on `subject` that got no answer."""
        if subject is not None and subject.lower() in self._denied:
            return BusPermissionDenied(f"{what}: {self._denied[subject.lower()]}")
        for denied, text in self._denied.items():
            if denied.startswith(self.inbox_prefix.lower() + "."):
                return BusPermissionDenied(f"{what}: {text} (replies cannot reach us)")
        if not self._nc.is_connected:
            return BusUnavailable(f"{what}: not connected to any NATS server")
        return BusUnavailable(f"{what}: no answer from the cluster in time")

    # --- BusPort --------------------------------------------------------------------------
    async def publish(self, subject: str, msg_id: str, payload: bytes) -> None:
        self.check_connected()
        try:
            ack = await self._js.publish(
                subject,
                payload,
                timeout=self.publish_timeout_s,
                headers={"Nats-Msg-Id": msg_id},
            )
        except TimeoutError:  # nats-py raises its own or asyncio's
            raise self.unavailable(
                subject, f"publish {msg_id} to {subject} not confirmed"
            ) from None
        except nats.js.errors.NoStreamResponseError:
            if subject.lower() in self._denied:
                raise self.unavailable(subject, f"publish {msg_id} to {subject}") from None
            raise BusUnavailable(
                f"no stream answered for {subject} (none stores it, or it has no leader now)"
            ) from None
        except nats.js.errors.APIError as exc:
            raise BusUnavailable(f"the stream refused {msg_id} on {subject}: {exc}") from None
        except nats.errors.Error as exc:
            raise BusUnavailable(f"publish {msg_id} to {subject} failed: {exc}") from None
        if ack.duplicate:
            log.debug("fleet bus: %s was already stored (seq %s)", msg_id, ack.seq)

    async def fetch(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[Delivery]:
        return list(await self.fetch_deliveries(stream, durable, batch, timeout_s))

    async def fetch_deliveries(
        self, stream: str, durable: str, batch: int, timeout_s: float
    ) -> list[NatsDelivery]:
        """`fetch`, typed with what a NATS delivery also knows (stream sequence, msg id)."""
        self.check_connected()
        next_subject = f"{self._api}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        try:
            sub = self._pulls.get((stream, durable))
            if sub is None:
                # Once per consumer: a missing one must be an error, not an endless "empty".
                await self._js.consumer_info(stream, durable, timeout=timeout_s)
                sub = await self._js.pull_subscribe_bind(durable=durable, stream=stream)
                self._pulls[(stream, durable)] = sub
            msgs = await sub.fetch(batch, timeout=timeout_s)
        except TimeoutError:  # nats-py raises its own or asyncio's
            if (stream, durable) not in self._pulls:
                info_subject = f"{self._api}.CONSUMER.INFO.{stream}.{durable}"
                raise self.unavailable(info_subject, f"consumer {durable} on {stream}") from None
            denied = self.unavailable(next_subject, f"fetch from {stream}/{durable}")
            if isinstance(denied, BusPermissionDenied) or not self._nc.is_connected:
                raise denied from None
            return []
        except nats.js.errors.NotFoundError:
            raise BusUnavailable(
                f"consumer {durable} on {stream} does not exist (the centre creates it when "
                "the site joins)"
            ) from None
        except nats.errors.NoRespondersError:
            raise BusUnavailable(f"JetStream does not answer for {stream}/{durable}") from None
        except nats.js.errors.APIError as exc:
            raise BusUnavailable(f"fetch from {stream}/{durable} refused: {exc}") from None
        except nats.errors.Error as exc:
            raise BusUnavailable(f"fetch from {stream}/{durable} failed: {exc}") from None
        return [NatsDelivery(m, self) for m in msgs]


# --- set-up by the centre ---------------------------------------------------------------
async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 3,
    max_age_s: float = STREAM_MAX_AGE_S,
    duplicate_window_s: float = DUPLICATE_WINDOW_S,
    timeout_s: float = SETUP_TIMEOUT_S,
) -> None:
    """Create FLEET_UP and FLEET_CMD, or bring their settings to these; calling it again is
    harmless. File storage, `replicas` copies; when a stream is full it refuses new messages
    (the sender keeps them in its outbox) instead of dropping old ones unseen. BusUnavailable
    when JetStream gives no answer within `timeout_s` (see `_set_up`)."""
    for name, subjects in ((UP_STREAM, UP_SUBJECTS), (CMD_STREAM, CMD_SUBJECTS)):
        config = StreamConfig(
            name=name,
            subjects=[subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=max_age_s,
            duplicate_window=duplicate_window_s,
            discard=DiscardPolicy.NEW,
        )
        await _set_up(f"stream {name}", functools.partial(_ensure_stream, js, config), timeout_s)


class _Unsettled(Exception):
    """JetStream's answers contradict each other for a moment: a create that a request we
    gave up on started is still being applied (or undone). `_set_up` asks again."""


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    refused = ""
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            log.info("fleet bus: created stream %s", config.name)
            return
        except nats.js.errors.BadRequestError as exc:
            # Another aggregator process created it just now, or a create of ours that timed
            # out is being applied: update below.
            refused = f"; its create was refused: {exc.description}"
    try:
        await js.update_stream(config)
    except nats.js.errors.NotFoundError:
        raise _Unsettled(f"stream {config.name} was not there to update{refused}") from None


async def _set_up(what: str, step: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Run one idempotent set-up step until JetStream answers it, for up to `timeout_s`.

    JetStream answers API requests only once the cluster has a meta leader, and creating a
    replicated stream waits for the new stream's own election: right after the cluster
    (re)starts, or on a loaded machine, one request times out or gets 503 and the next one
    succeeds. A create we stopped waiting for may still be applied: for a moment a create
    says the stream exists and an update says it does not (`_Unsettled`). Every step reads the
    current state before it changes anything, so repeating one whose request was applied
    after we stopped waiting does no harm. Errors that are answers (a consumer with another
    filter, a refused configuration) are not retried.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.2
    while True:
        try:
            await step()
            return
        except (
            TimeoutError,  # nats-py raises its own or asyncio's
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
            _Unsettled,
        ) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if loop.time() + delay >= deadline:
                raise BusUnavailable(
                    f"setting up {what}: no settled answer from JetStream in {timeout_s:g} s "
                    f"({reason})"
                ) from None
            log.warning("fleet bus: setting up %s: %s; asking again", what, reason)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)


async def ensure_site_consumer(
    js: JetStreamContext,
    site: str,
    *,
    ack_wait_s: float = ACK_WAIT_S,
    timeout_s: float = SETUP_TIMEOUT_S,
) -> None:
    """The durable consumer `site-<id>` on FLEET_CMD, filtered to the site's subject, made
    when the site joins (before any command for it): it holds every command from then on
    until the site acks it, redelivering forever (a command past its `valid_until` is acked
    by the site as expired)."""
    await _ensure_consumer(
        js,
        timeout_s,
        CMD_STREAM,
        ConsumerConfig(
            durable_name=site_consumer(site),
            filter_subject=cmd_subject(site),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1_000,
        ),
    )


async def ensure_central_consumer(
    js: JetStreamContext, *, ack_wait_s: float = ACK_WAIT_S, timeout_s: float = SETUP_TIMEOUT_S
) -> None:
    """The durable consumer `central` on FLEET_UP, shared by every aggregator process (each
    message goes to one of them)."""
    await _ensure_consumer(
        js,
        timeout_s,
        UP_STREAM,
        ConsumerConfig(
            durable_name=CENTRAL_CONSUMER,
            filter_subject=UP_SUBJECTS,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=20_000,
            max_waiting=512,
        ),
    )


async def _ensure_consumer(
    js: JetStreamContext, timeout_s: float, stream: str, config: ConsumerConfig
) -> None:
    what = f"consumer {config.durable_name} on {stream}"
    await _set_up(what, functools.partial(_ensure_consumer_once, js, stream, config), timeout_s)


async def _ensure_consumer_once(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream, config)
        log.info("fleet bus: created consumer %s on %s", config.durable_name, stream)
        return
    if info.config.filter_subject != config.filter_subject:
        raise ValueError(
            f"consumer {config.durable_name} on {stream} filters {info.config.filter_subject}, "
            f"not {config.filter_subject}: delete it first"
        )
    have = info.config
    if (have.ack_wait, have.max_deliver, have.max_ack_pending, have.ack_policy) == (
        config.ack_wait,
        config.max_deliver,
        config.max_ack_pending,
        config.ack_policy,
    ) and (config.max_waiting is None or have.max_waiting == config.max_waiting):
        return  # as wanted: one API call per site at every aggregator start, not two
    # Same durable name and filter: the server updates what may change (ack_wait, ...).
    await js.add_consumer(stream, config)


if TYPE_CHECKING:  # mypy checks that these implement the ports

    def _bus_port(bus: NatsBus) -> BusPort:
        return bus

    def _delivery(delivery: NatsDelivery) -> Delivery:
        return delivery
