"""NATS JetStream backend of the bus port (``intents-mm run <service>``, or ``run-all`` with ``NATS_URL``).

Implements the contract in :mod:`intents_mm.bus.port`. Layout on the server:

- one stream ``stream`` (file storage, limits retention, discard old) over ``f"{subject_prefix}.>"``;
  retention ``max_age_s`` / ``max_bytes`` and the dedupe ``duplicate_window_s`` are applied at
  :meth:`NatsBus.start`: the stream is created when missing and updated when its settings differ.
- logical subject ``x.y`` travels as ``f"{subject_prefix}.x.y"`` with header ``Nats-Msg-Id: msg_id``.
- one durable **pull** consumer per ``durable`` name: explicit ack, ``ack_wait = ack_wait_s``,
  ``max_ack_pending = max_in_flight``, unlimited deliveries, filtered on the subscription's pattern.
  The deployed server (2.9) has one filter per consumer, so a subscription to several patterns that
  no subject matches twice is **one consumer per pattern** (``<durable>--<pattern slug>``, see
  :func:`~intents_mm.bus.subjects.part_durable`), its handler still awaited one delivery at a time;
  ``max_in_flight`` then holds per pattern. Overlapping patterns share one consumer over the whole
  prefix, the other subjects acked and skipped client-side. When a durable's filter must change it is
  re-created starting after its ack floor, so it keeps its position (and a single consumer of an
  earlier layout is replaced by per-pattern ones the same way).

Consumption: the subscription keeps one long-lived pull request (``batch = max_in_flight``, expiring
every ``pull_expires_s``) outstanding on a private inbox; the server pushes messages into it as they
arrive (sub-millisecond publish→handler on loopback), and the next request is issued as soon as one
completes, expires, or the connection comes back. A worker task awaits the handler one delivery at a
time. Because a pull is always outstanding, an ack-wait redelivery reaches the subscriber even while
its handler is busy.

Failures: the client reconnects forever (``max_reconnect_attempts=-1``); after a reconnect every
subscription re-checks its consumer (re-creating the stream or consumer if the server lost them) and
re-issues its pull. ``publish`` retries with the same ``Nats-Msg-Id`` until JetStream acknowledges it,
so a publish that raced a restart is neither lost nor stored twice (within the dedupe window). Library
errors surface as :class:`~intents_mm.errors.BusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from intents_mm.bus.port import Delivery, Handler, Subscription, redelivery_delay_s
from intents_mm.bus.subjects import (
    disjoint,
    matcher,
    part_durable,
    validate_pattern,
    validate_subject,
    validate_subscription,
)
from intents_mm.errors import BusError, InputError

__all__ = ["NatsBus"]

log = logging.getLogger("intents_mm.bus")

_MSG_ID = "Nats-Msg-Id"
_ERR_STREAM_NOT_FOUND = 10059
_ERR_STREAM_NAME_IN_USE = 10058

# Failures after which a publish is simply tried again with the same msg id.
_RETRYABLE = (
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{exc.description or type(exc).__name__} (code {exc.code}, err_code {exc.err_code})"
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__


def _redact(url: str) -> str:
    """``url`` without user info (tokens, passwords)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class _Counters:
    __slots__ = (
        "acked",
        "deduplicated",
        "delivered",
        "disconnects",
        "filtered",
        "handler_errors",
        "naked",
        "publish_retries",
        "published",
        "reconnects",
        "redelivered",
    )

    def __init__(self) -> None:
        self.published = 0
        self.deduplicated = 0
        self.publish_retries = 0
        self.delivered = 0
        self.redelivered = 0
        self.filtered = 0
        self.acked = 0
        self.naked = 0
        self.handler_errors = 0
        self.disconnects = 0
        self.reconnects = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _NatsDelivery:
    __slots__ = ("_counters", "_msg", "_settled", "data", "msg_id", "num_delivered", "subject")

    def __init__(
        self, msg: Msg, *, subject: str, msg_id: str, num_delivered: int, counters: _Counters
    ) -> None:
        self.subject = subject
        self.msg_id = msg_id
        self.data: bytes = msg.data
        self.num_delivered = num_delivered
        self._msg = msg
        self._counters = counters
        self._settled = False

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._msg.ack()
        except nats.errors.Error as exc:
            raise BusError(
                f"ack of {self.subject} msg_id={self.msg_id} failed: {_describe_exc(exc)}"
            ) from exc
        self._counters.acked += 1

    async def nak(self, delay_s: float | None = None) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._msg.nak(delay=delay_s if delay_s and delay_s > 0 else None)
        except nats.errors.Error as exc:
            raise BusError(
                f"nak of {self.subject} msg_id={self.msg_id} failed: {_describe_exc(exc)}"
            ) from exc
        self._counters.naked += 1

    def __repr__(self) -> str:
        return f"<NatsDelivery {self.subject} {self.msg_id} #{self.num_delivered}>"


class _NatsSubscription:
    """One durable pull consumer: a pull loop keeps a request outstanding, a worker runs the handler."""

    def __init__(
        self,
        bus: NatsBus,
        *,
        durable: str,
        patterns: tuple[str, ...],
        handler: Handler,
        ack_wait_s: float,
        max_in_flight: int,
    ) -> None:
        self._bus = bus
        self.durable = durable
        self.patterns = patterns
        self._handler = handler
        self.ack_wait_s = ack_wait_s
        self.max_in_flight = max_in_flight
        prefix = bus._prefix
        if len(patterns) == 1:
            self.filter_subject = f"{prefix}.{patterns[0]}"
            self._match: Callable[[str], bool] | None = None
        else:
            self.filter_subject = f"{prefix}.>"
            self._match = matcher(patterns)
        self._strip = len(prefix) + 1
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{bus._stream}.{durable}"
        self._pull_request = json.dumps(
            {"batch": max_in_flight, "expires": int(bus._pull_expires_s * 1e9)}
        ).encode()
        self._buf: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._pull_wake = asyncio.Event()
        self._pull_left = 0
        self._need_ensure = False
        self._backoff = False
        self._stopping = False
        self._stopped = False
        self._inbox = ""  # pull request n uses reply subject f"{_inbox}.{n}"
        self._pull_gen = 0
        self._pull_reply = ""
        self._sub: Any = None
        self._pull_task: asyncio.Task[None] | None = None
        self._work_task: asyncio.Task[None] | None = None
        #: When the consumer does not exist yet: the stream sequence it starts at (None: everything).
        self.start_seq: int | None = None

    async def start(self) -> None:
        bus = self._bus
        nc = bus._client()
        await bus._ensure_consumer(self)
        self._inbox = nc.new_inbox()
        try:
            self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        except nats.errors.Error as exc:
            raise BusError(f"cannot subscribe durable {self.durable}: {_describe_exc(exc)}") from exc
        loop = asyncio.get_running_loop()
        self._pull_task = loop.create_task(self._pull_loop(), name=f"bus-nats-pull-{self.durable}")
        self._work_task = loop.create_task(self._work_loop(), name=f"bus-nats-work-{self.durable}")

    # ------------------------------------------------------------------------------ receiving

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and not msg.data:
            status = headers.get("Status")
            if status is not None:
                if msg.subject == self._pull_reply:  # statuses of earlier pull requests are stale
                    self._on_status(status, str(headers.get("Description", "")))
                return
        self._buf.append(msg)
        self._wake.set()
        self._pull_left -= 1
        if self._pull_left <= 0:
            self._pull_wake.set()

    def _on_status(self, status: str, description: str) -> None:
        if status == "100":  # idle heartbeat / flow control: nothing to do
            return
        if status not in ("404", "408"):  # 409 consumer deleted / limits, 503 JetStream unavailable
            log.info("bus: pull for durable %s answered %s %s", self.durable, status, description)
            self._need_ensure = True
            self._backoff = True
        self._pull_wake.set()

    def stopping(self) -> bool:
        return self._stopping

    def on_reconnected(self) -> None:
        self._need_ensure = True
        self._pull_wake.set()

    async def _pull_loop(self) -> None:
        bus = self._bus
        while not self._stopping:
            try:
                nc = bus._client()
                if not nc.is_connected:  # the client is reconnecting; on_reconnected() follows
                    await asyncio.sleep(0.05)
                    continue
                if self._need_ensure:
                    self._need_ensure = False
                    await bus._ensure_consumer(self)
                self._pull_wake.clear()
                self._pull_left = self.max_in_flight
                self._pull_gen += 1
                self._pull_reply = f"{self._inbox}.{self._pull_gen}"
                await nc.publish(self._next_subject, self._pull_request, reply=self._pull_reply)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(bus._pull_expires_s + 1.0):
                        await self._pull_wake.wait()
                if self._backoff:
                    self._backoff = False
                    await asyncio.sleep(0.25)
            except (BusError, nats.errors.Error) as exc:
                if self.stopping():
                    return
                log.info("bus: durable %s pull loop: %s; retrying", self.durable, _describe_exc(exc))
                self._need_ensure = True
                await asyncio.sleep(0.5)

    async def _work_loop(self) -> None:
        buf = self._buf
        counters = self._bus._counters
        strip = self._strip
        match = self._match
        handler = self._handler
        while not self._stopping:
            if not buf:
                self._wake.clear()
                await self._wake.wait()
                continue
            msg = buf.popleft()
            subject = msg.subject[strip:]
            if match is not None and not match(subject):
                counters.filtered += 1
                with contextlib.suppress(nats.errors.Error):
                    await msg.ack()
                continue
            num_delivered = msg.metadata.num_delivered or 1
            headers = msg.headers
            msg_id = headers.get(_MSG_ID, "") if headers else ""
            delivery = _NatsDelivery(
                msg, subject=subject, msg_id=msg_id, num_delivered=num_delivered, counters=counters
            )
            counters.delivered += 1
            if num_delivered > 1:
                counters.redelivered += 1
            try:
                await handler(delivery)
            except Exception as exc:
                counters.handler_errors += 1
                log.warning(
                    "bus handler of durable %s failed on %s msg_id=%s delivery=%d: %s",
                    self.durable,
                    subject,
                    msg_id,
                    num_delivered,
                    exc,
                    exc_info=exc,
                )
                if not delivery._settled:
                    with contextlib.suppress(BusError):
                        await delivery.nak(redelivery_delay_s(num_delivered))

    # ------------------------------------------------------------------------------ stopping

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopping = True
        self._pull_wake.set()
        self._wake.set()
        current = asyncio.current_task()
        if self._pull_task is not None:
            self._pull_task.cancel()
            await asyncio.wait({self._pull_task})
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        work = self._work_task
        if work is not None and work is not current:
            done, _ = await asyncio.wait({work}, timeout=self.ack_wait_s)
            if not done:
                work.cancel()
                await asyncio.wait({work})
        # Hand messages fetched but never given to the handler back to the durable at once.
        while self._buf:
            msg = self._buf.popleft()
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
        nc = self._bus._nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await nc.flush(timeout=2)  # acks reach the server before stop() returns
        self._stopped = True
        if self._bus._subs.get(self.durable) is self:
            del self._bus._subs[self.durable]

    def describe(self) -> dict[str, object]:
        return {
            "subjects": list(self.patterns),
            "filter": self.filter_subject,
            "buffered": len(self._buf),
            "ack_wait_s": self.ack_wait_s,
            "max_in_flight": self.max_in_flight,
        }


class _NatsSplitSubscription:
    """A subscription to several disjoint patterns: one durable pull consumer per pattern.

    The server (2.9) takes one filter subject per consumer; one consumer over the whole prefix would
    hand this subscriber every message on the bus to ack and skip (a third of all deliveries on the
    quote path). So each pattern gets its own consumer, ``part_durable(durable, pattern)``, and the
    handler is still awaited for one delivery at a time (a lock shared by the parts), in publish order
    per subject. A consumer of the old single-consumer layout named ``durable`` is replaced: the parts
    start after its ack floor and it is deleted, so nothing is skipped or replayed.
    """

    def __init__(
        self,
        bus: NatsBus,
        *,
        durable: str,
        patterns: tuple[str, ...],
        handler: Handler,
        ack_wait_s: float,
        max_in_flight: int,
    ) -> None:
        self._bus = bus
        self.durable = durable
        self.patterns = patterns
        lock = asyncio.Lock()

        async def one_at_a_time(delivery: Delivery) -> None:
            async with lock:
                await handler(delivery)

        self.parts = [
            _NatsSubscription(
                bus,
                durable=part_durable(durable, pattern),
                patterns=(pattern,),
                handler=one_at_a_time,
                ack_wait_s=ack_wait_s,
                max_in_flight=max_in_flight,
            )
            for pattern in patterns
        ]
        self._stopped = False

    async def start(self) -> None:
        floor = await self._bus._combined_consumer_floor(self.durable)
        started: list[_NatsSubscription] = []
        try:
            for part in self.parts:
                part.start_seq = None if floor is None else floor + 1
                await part.start()
                started.append(part)
            if floor is not None:
                await self._bus._delete_consumer(self.durable)
        except BaseException:
            for part in started:
                with contextlib.suppress(Exception):
                    await part.stop()
            raise

    def on_reconnected(self) -> None:
        for part in self.parts:
            part.on_reconnected()

    async def stop(self) -> None:
        if self._stopped:
            return
        await asyncio.gather(*(part.stop() for part in self.parts))
        self._stopped = True
        if self._bus._subs.get(self.durable) is self:
            del self._bus._subs[self.durable]

    def describe(self) -> dict[str, object]:
        return {
            "subjects": list(self.patterns),
            "consumers": {part.durable: part.describe() for part in self.parts},
        }


class NatsBus:
    """The bus on NATS JetStream; see the module and port docstrings."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "INTENTS_MM",
        subject_prefix: str = "imm",
        max_age_s: float = 7 * 86400,
        max_bytes: int = 1 << 30,
        duplicate_window_s: float = 120,
        connect_timeout_s: float = 5,
        reconnect_wait_s: float = 0.5,
        publish_timeout_s: float = 2.0,
        api_timeout_s: float = 5.0,
        pull_expires_s: float = 5.0,
    ) -> None:
        if not stream or any(ch in stream for ch in ".*> \t\r\n/\\"):
            raise InputError(f"invalid NATS stream name {stream!r}")
        if "*" in subject_prefix or ">" in subject_prefix:
            raise InputError(f"invalid NATS subject prefix {subject_prefix!r}: wildcards not allowed")
        validate_pattern(subject_prefix)
        if max_age_s <= 0 or max_bytes <= 0 or duplicate_window_s <= 0:
            raise InputError("NATS stream max_age_s, max_bytes and duplicate_window_s must be positive")
        if duplicate_window_s > max_age_s:
            raise InputError("NATS duplicate_window_s cannot exceed max_age_s")
        self._url = url
        self._stream = stream
        self._prefix = subject_prefix
        self._max_age_s = float(max_age_s)
        self._max_bytes = int(max_bytes)
        self._duplicate_window_s = float(duplicate_window_s)
        self._connect_timeout_s = float(connect_timeout_s)
        self._reconnect_wait_s = float(reconnect_wait_s)
        self._publish_timeout_s = float(publish_timeout_s)
        self._api_timeout_s = float(api_timeout_s)
        self._pull_expires_s = float(pull_expires_s)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[str, _NatsSubscription | _NatsSplitSubscription] = {}
        self._full_subjects: dict[str, str] = {}
        self._counters = _Counters()
        self._last_error = ""
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._closed:
            raise BusError("NATS bus was closed; make a new one")
        if self._started:
            return
        nc = NatsClient()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await nc.connect(
                    servers=[self._url],
                    name="intents-mm",
                    connect_timeout=max(1, int(self._connect_timeout_s)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait_s,  # type: ignore[arg-type]
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            detail = self._last_error or _describe_exc(exc)
            raise BusError(f"cannot connect to NATS at {_redact(self._url)}: {detail}") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=self._api_timeout_s)
        try:
            await self._ensure_stream()
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            self._nc = None
            raise
        self._started = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(sub.stop() for sub in list(self._subs.values())))
        nc = self._nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    def _client(self) -> NatsClient:
        if self._closed:
            raise BusError("NATS bus is closed")
        if not self._started or self._nc is None:
            raise BusError("NATS bus is not started (call start() first)")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        self._client()
        assert self._js is not None
        return self._js

    # ------------------------------------------------------------------------------ callbacks

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = _describe_exc(exc)
        log.debug("bus: NATS error: %s", self._last_error)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            self._counters.disconnects += 1
            log.warning("bus: disconnected from NATS at %s; reconnecting", _redact(self._url))

    async def _on_reconnected(self) -> None:
        self._counters.reconnects += 1
        log.warning("bus: reconnected to NATS at %s", _redact(self._url))
        for sub in list(self._subs.values()):
            sub.on_reconnected()

    async def _on_closed(self) -> None:
        if not self._closed:
            log.warning("bus: NATS connection to %s closed", _redact(self._url))

    # ------------------------------------------------------------------------------ server objects

    def _stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self._stream,
            subjects=[f"{self._prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self._max_age_s,
            max_bytes=self._max_bytes,
            duplicate_window=self._duplicate_window_s,
        )

    async def _ensure_stream(self) -> None:
        """Create the stream when missing; update it when its subjects or limits differ."""
        js = self._js
        assert js is not None
        want = self._stream_config()
        try:
            try:
                info = await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(want)
                    log.info("bus: created NATS stream %s on %s.>", self._stream, self._prefix)
                    return
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                        raise
                    info = await js.stream_info(self._stream)  # created concurrently by another process
            have = info.config
            same = (
                list(have.subjects or []) == want.subjects
                and abs((have.max_age or 0.0) - self._max_age_s) < 1e-6
                and have.max_bytes == self._max_bytes
                and abs((have.duplicate_window or 0.0) - self._duplicate_window_s) < 1e-6
            )
            if not same:
                await js.update_stream(want)
                log.info("bus: updated NATS stream %s settings", self._stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot set up NATS stream {self._stream}: {_describe_exc(exc)}") from exc

    def _consumer_config(self, sub: _NatsSubscription, **overrides: Any) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=sub.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=overrides.pop("deliver_policy", DeliverPolicy.ALL),
            ack_wait=sub.ack_wait_s,
            max_ack_pending=sub.max_in_flight,
            max_deliver=-1,
            filter_subject=sub.filter_subject,
            **overrides,
        )

    async def _ensure_consumer(self, sub: _NatsSubscription) -> None:
        """Create ``sub``'s durable pull consumer, or bring an existing one to ``sub``'s settings."""
        js = self._jetstream()
        stream, durable = self._stream, sub.durable
        try:
            info: ConsumerInfo | None
            try:
                info = await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == _ERR_STREAM_NOT_FOUND:
                    await self._ensure_stream()
                info = None
            if info is None:
                if sub.start_seq is None:
                    await js.add_consumer(stream, self._consumer_config(sub))
                else:
                    await js.add_consumer(
                        stream,
                        self._consumer_config(
                            sub, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=sub.start_seq
                        ),
                    )
                return
            have = info.config
            if have.deliver_subject:
                raise BusError(f"durable {durable} exists on stream {stream} as a push consumer; delete it")
            if (have.filter_subject or "") != sub.filter_subject:
                # Changing the filter in place is unreliable on older servers: re-create the consumer
                # after its ack floor so it keeps its position.
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                log.warning(
                    "bus: durable %s filter %s -> %s; re-creating it after stream sequence %d",
                    durable,
                    have.filter_subject,
                    sub.filter_subject,
                    floor,
                )
                await js.delete_consumer(stream, durable)
                await js.add_consumer(
                    stream,
                    self._consumer_config(
                        sub, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1
                    ),
                )
                return
            if (
                abs((have.ack_wait or 0.0) - sub.ack_wait_s) > 1e-6
                or have.max_ack_pending != sub.max_in_flight
            ):
                await js.add_consumer(
                    stream,
                    self._consumer_config(
                        sub,
                        deliver_policy=have.deliver_policy,
                        opt_start_seq=have.opt_start_seq,
                        opt_start_time=have.opt_start_time,
                    ),
                )
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(
                f"cannot set up NATS consumer {durable} on {stream}: {_describe_exc(exc)}"
            ) from exc

    async def _combined_consumer_floor(self, durable: str) -> int | None:
        """The ack floor (stream sequence) of a consumer named ``durable``; None when there is none."""
        try:
            info = await self._jetstream().consumer_info(self._stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            what = f"NATS consumer {durable} on {self._stream}"
            raise BusError(f"cannot read {what}: {_describe_exc(exc)}") from exc
        return info.ack_floor.stream_seq if info.ack_floor is not None else 0

    async def _delete_consumer(self, durable: str) -> None:
        log.warning("bus: durable %s is now one consumer per subject; deleting the old consumer", durable)
        try:
            await self._jetstream().delete_consumer(self._stream, durable)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, TimeoutError) as exc:
            what = f"NATS consumer {durable} on {self._stream}"
            raise BusError(f"cannot delete {what}: {_describe_exc(exc)}") from exc

    # ------------------------------------------------------------------------------ port

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        js = self._jetstream()
        full = self._full_subjects.get(subject)
        if full is None:
            full = f"{self._prefix}.{validate_subject(subject)}"
            self._full_subjects[subject] = full
        attempt = 0
        while True:
            try:
                ack = await js.publish(
                    full,
                    data,
                    timeout=self._publish_timeout_s,
                    stream=self._stream,
                    headers={_MSG_ID: msg_id},
                )
            except _RETRYABLE as exc:
                if self._closed:
                    raise BusError(f"NATS bus closed before publish to {subject} was acknowledged") from exc
                attempt += 1
                self._counters.publish_retries += 1
                if attempt == 1 or attempt % 30 == 0:
                    log.warning(
                        "bus: publish to %s msg_id=%s not acknowledged (%s); retrying",
                        subject,
                        msg_id,
                        _describe_exc(exc),
                    )
                if attempt % 5 == 0 and isinstance(exc, nats.js.errors.NoStreamResponseError):
                    with contextlib.suppress(BusError):
                        await self._ensure_stream()  # the stream may have been deleted
                await asyncio.sleep(min(0.02 * 2**attempt, 1.0))
                continue
            except nats.errors.Error as exc:
                raise BusError(f"publish to {subject} msg_id={msg_id} failed: {_describe_exc(exc)}") from exc
            if ack.duplicate:
                self._counters.deduplicated += 1
            else:
                self._counters.published += 1
            return

    async def subscribe(
        self,
        subjects: Sequence[str],
        durable: str,
        handler: Handler,
        *,
        ack_wait_s: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        self._client()
        patterns = validate_subscription(subjects, durable, ack_wait_s, max_in_flight)
        if durable in self._subs:
            raise BusError(f"durable consumer {durable!r} already has an active subscriber on this bus")
        kind = _NatsSplitSubscription if len(patterns) > 1 and disjoint(patterns) else _NatsSubscription
        sub = kind(
            self,
            durable=durable,
            patterns=patterns,
            handler=handler,
            ack_wait_s=float(ack_wait_s),
            max_in_flight=int(max_in_flight),
        )
        self._subs[durable] = sub
        try:
            await sub.start()
        except BaseException:
            self._subs.pop(durable, None)
            raise
        return sub

    def healthy(self) -> bool:
        nc = self._nc
        return self._started and not self._closed and nc is not None and nc.is_connected

    def describe(self) -> dict[str, object]:
        return {
            "backend": "nats",
            "server": _redact(self._url),
            "stream": self._stream,
            "subject_prefix": self._prefix,
            "healthy": self.healthy(),
            "last_error": self._last_error or None,
            "counters": self._counters.as_dict(),
            "consumers": {name: sub.describe() for name, sub in self._subs.items()},
        }
