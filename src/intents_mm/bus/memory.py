"""In-process bus for one asyncio event loop: the latency-critical backend of ``simulate``/``run-all``.

Implements the contract in :mod:`intents_mm.bus.port`. Design, kept lean for a publish→handler path of
tens of microseconds: ``publish`` appends one small entry (referencing, never copying, the payload) to
each matching durable consumer's queue and wakes that consumer's worker task, which awaits the handler
one delivery at a time. No serialisation, no threads.

Bounds: each durable consumer holds at most ``max_queue`` un-acked messages (queued, in flight, waiting
for redelivery); ``publish`` awaits while any matching consumer is full, so a slow consumer slows its
publishers instead of growing memory or dropping messages. A durable that is stopped keeps its queue,
so it keeps pushing back on publishers once full: stop durables you no longer need for good only
together with the bus. A handler that publishes to a subject its own durable consumes can therefore
wait on itself when that queue is full; keep ``max_queue`` above such feedback.

Dedupe keeps the last ``dedupe_window`` message ids (insertion order; oldest forgotten first). Timers
(ack wait, nak delay) use the event loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence

from intents_mm.bus.port import Handler, Subscription, redelivery_delay_s
from intents_mm.bus.subjects import matcher, validate_subject, validate_subscription
from intents_mm.errors import BusError, InputError

__all__ = ["MemoryBus"]

log = logging.getLogger("intents_mm.bus")

# entry states
_READY = 0  # queued, never delivered
_DELIVERED = 1  # handed to the handler, not yet acked; the ack-wait timer runs
_WAITING = 2  # nak'ed with a delay; the redelivery timer runs
_REDELIVER = 3  # in the redelivery queue
_ACKED = 4


class _Entry:
    """One message as seen by one durable consumer."""

    __slots__ = ("data", "msg_id", "num_delivered", "state", "subject", "timer")

    def __init__(self, subject: str, msg_id: str, data: bytes) -> None:
        self.subject = subject
        self.msg_id = msg_id
        self.data = data
        self.num_delivered = 0
        self.state = _READY
        self.timer: asyncio.TimerHandle | None = None


class _MemoryDelivery:
    __slots__ = ("_consumer", "_entry", "_settled", "data", "msg_id", "num_delivered", "subject")

    def __init__(self, entry: _Entry, consumer: _Consumer) -> None:
        self.subject = entry.subject
        self.msg_id = entry.msg_id
        self.data = entry.data
        self.num_delivered = entry.num_delivered
        self._entry = entry
        self._consumer = consumer
        self._settled = False

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.ack(self._entry)

    async def nak(self, delay_s: float | None = None) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.nak(self._entry, self.num_delivered, delay_s)

    def __repr__(self) -> str:
        return f"<MemoryDelivery {self.subject} {self.msg_id} #{self.num_delivered}>"


class _Counters:
    __slots__ = (
        "ack_timeouts",
        "acked",
        "deduplicated",
        "delivered",
        "handler_errors",
        "naked",
        "publish_waits",
        "published",
        "redelivered",
    )

    def __init__(self) -> None:
        self.published = 0
        self.deduplicated = 0
        self.publish_waits = 0
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.naked = 0
        self.ack_timeouts = 0
        self.handler_errors = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Consumer:
    """A durable consumer's state; outlives its subscriptions for the lifetime of the bus."""

    def __init__(self, bus: MemoryBus, name: str, patterns: tuple[str, ...]) -> None:
        self.bus = bus
        self.name = name
        self.patterns = patterns
        self.matches = matcher(patterns)
        self.ready: deque[_Entry] = deque()  # first deliveries, publish order
        self.redeliver: deque[_Entry] = deque()  # redeliveries, served first
        self.unacked = 0  # every message accepted and not acked (the queue bound counts these)
        self.pending = 0  # delivered at least once and not acked (max_in_flight counts these)
        self.wake = asyncio.Event()  # worker: something to deliver, capacity freed, or stop
        self.space = asyncio.Event()  # publishers: unacked fell below max_queue
        self.space_waiters = 0
        self.sub: _MemorySubscription | None = None
        self.ack_wait_s = 30.0
        self.max_in_flight = 256
        self.timers: set[_Entry] = set()  # entries with a live timer, cancelled on close

    def ack(self, entry: _Entry) -> None:
        if entry.state == _ACKED:
            return
        if self.bus._finished:
            raise BusError("bus is closed; the ack was not recorded")
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
            self.timers.discard(entry)
        entry.state = _ACKED  # an entry still sitting in `redeliver` is skipped by the worker
        self.unacked -= 1
        self.pending -= 1
        self.bus._counters.acked += 1
        if self.space_waiters:
            self.space.set()
        if self.sub is not None and self.ready:
            self.wake.set()

    def nak(self, entry: _Entry, attempt: int, delay_s: float | None) -> None:
        if entry.state != _DELIVERED or entry.num_delivered != attempt:
            return  # acked already, or this delivery expired and was handed out again
        if self.bus._finished:
            raise BusError("bus is closed; the nak was not recorded")
        if entry.timer is not None:
            entry.timer.cancel()
        self.bus._counters.naked += 1
        if delay_s is not None and delay_s > 0:
            entry.state = _WAITING
            entry.timer = asyncio.get_running_loop().call_later(delay_s, self._requeue, entry)
            self.timers.add(entry)
        else:
            self._requeue(entry)

    def _requeue(self, entry: _Entry) -> None:
        entry.timer = None
        self.timers.discard(entry)
        if entry.state in (_DELIVERED, _WAITING):
            entry.state = _REDELIVER
            self.redeliver.append(entry)
            self.wake.set()

    def _expire(self, entry: _Entry, attempt: int) -> None:
        if entry.state == _DELIVERED and entry.num_delivered == attempt:
            self.bus._counters.ack_timeouts += 1
            self._requeue(entry)

    def next_entry(self) -> _Entry | None:
        redeliver = self.redeliver
        while redeliver:
            entry = redeliver.popleft()
            if entry.state == _REDELIVER:
                return entry
        if self.ready and self.pending < self.max_in_flight:
            self.pending += 1
            return self.ready.popleft()
        return None

    async def wait_space(self) -> None:
        self.space_waiters += 1
        self.space.clear()
        try:
            await self.space.wait()
        finally:
            self.space_waiters -= 1

    def close(self) -> None:
        for entry in self.timers:
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        self.timers.clear()
        self.space.set()
        self.wake.set()

    def describe(self) -> dict[str, object]:
        return {
            "subjects": list(self.patterns),
            "active": self.sub is not None,
            "unacked": self.unacked,
            "in_flight": self.pending,
            "queued": len(self.ready),
        }


class _MemorySubscription:
    def __init__(self, consumer: _Consumer, handler: Handler) -> None:
        self._consumer = consumer
        self._handler = handler
        self._stopping = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"bus-memory-{self._consumer.name}"
        )

    async def _run(self) -> None:
        c = self._consumer
        counters = c.bus._counters
        handler = self._handler
        loop = asyncio.get_running_loop()
        while not self._stopping:
            entry = c.next_entry()
            if entry is None:
                c.wake.clear()
                await c.wake.wait()
                continue
            entry.num_delivered += 1
            entry.state = _DELIVERED
            entry.timer = loop.call_later(c.ack_wait_s, c._expire, entry, entry.num_delivered)
            c.timers.add(entry)
            counters.delivered += 1
            if entry.num_delivered > 1:
                counters.redelivered += 1
            delivery = _MemoryDelivery(entry, c)
            try:
                await handler(delivery)
            except Exception as exc:
                counters.handler_errors += 1
                log.warning(
                    "bus handler of durable %s failed on %s msg_id=%s delivery=%d: %s",
                    c.name,
                    delivery.subject,
                    delivery.msg_id,
                    delivery.num_delivered,
                    exc,
                    exc_info=exc,
                )
                if not delivery._settled and not c.bus._finished:
                    await delivery.nak(redelivery_delay_s(delivery.num_delivered))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopping = True
        c = self._consumer
        c.wake.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=c.ack_wait_s)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        self._stopped = True
        if c.sub is self:
            c.sub = None


class MemoryBus:
    """Single-process bus with bounded per-consumer queues; see the module and port docstrings."""

    def __init__(self, *, max_queue: int = 10_000, dedupe_window: int = 100_000) -> None:
        if max_queue < 1 or dedupe_window < 1:
            raise InputError("MemoryBus max_queue and dedupe_window must be at least 1")
        self._max_queue = max_queue
        self._dedupe_window = dedupe_window
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._consumers: dict[str, _Consumer] = {}
        self._routes: dict[str, tuple[_Consumer, ...]] = {}
        self._counters = _Counters()
        self._started = False
        self._closed = False  # publish/subscribe refused from here on
        self._finished = False  # close() done: acks refused too

    async def start(self) -> None:
        if self._closed:
            raise BusError("memory bus was closed; make a new one")
        self._started = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self._consumers.values():
            c.space.set()  # blocked publishers wake up and raise BusError
        subs = [c.sub for c in self._consumers.values() if c.sub is not None]
        await asyncio.gather(*(s.stop() for s in subs))  # running handlers may still ack
        for c in self._consumers.values():
            c.close()
        self._finished = True

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("memory bus is closed")
        if not self._started:
            raise BusError("memory bus is not started (call start() first)")

    def _route(self, subject: str) -> tuple[_Consumer, ...]:
        route = self._routes.get(subject)
        if route is None:
            validate_subject(subject)
            route = tuple(c for c in self._consumers.values() if c.matches(subject))
            self._routes[subject] = route
        return route

    def _full(self, route: tuple[_Consumer, ...]) -> _Consumer | None:
        limit = self._max_queue
        for c in route:
            if c.unacked >= limit:
                return c
        return None

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if self._closed or not self._started:
            self._check_open()
        route = self._routes.get(subject)
        if route is None:
            route = self._route(subject)
        seen = self._seen
        if msg_id in seen:
            self._counters.deduplicated += 1
            return
        full = self._full(route)
        if full is not None:
            self._counters.publish_waits += 1
            while full is not None:
                await full.wait_space()
                self._check_open()
                route = self._route(subject)  # consumers may have been added while we waited
                full = self._full(route)
            if msg_id in seen:
                self._counters.deduplicated += 1
                return
        seen[msg_id] = None
        if len(seen) > self._dedupe_window:
            seen.popitem(last=False)
        self._counters.published += 1
        for c in route:
            c.ready.append(_Entry(subject, msg_id, data))
            c.unacked += 1
            if c.sub is not None:
                c.wake.set()

    async def subscribe(
        self,
        subjects: Sequence[str],
        durable: str,
        handler: Handler,
        *,
        ack_wait_s: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        self._check_open()
        patterns = validate_subscription(subjects, durable, ack_wait_s, max_in_flight)
        c = self._consumers.get(durable)
        if c is None:
            c = _Consumer(self, durable, patterns)
            self._consumers[durable] = c
            self._routes.clear()
        elif c.sub is not None:
            raise BusError(f"durable consumer {durable!r} already has an active subscriber on this bus")
        elif c.patterns != patterns:
            c.patterns = patterns
            c.matches = matcher(patterns)
            self._routes.clear()
        c.ack_wait_s = float(ack_wait_s)
        c.max_in_flight = int(max_in_flight)
        sub = _MemorySubscription(c, handler)
        c.sub = sub
        sub.start()
        return sub

    def healthy(self) -> bool:
        return self._started and not self._closed

    def describe(self) -> dict[str, object]:
        return {
            "backend": "memory",
            "server": None,
            "stream": None,
            "healthy": self.healthy(),
            "max_queue": self._max_queue,
            "dedupe_window": self._dedupe_window,
            "counters": self._counters.as_dict(),
            "consumers": {name: c.describe() for name, c in self._consumers.items()},
        }
