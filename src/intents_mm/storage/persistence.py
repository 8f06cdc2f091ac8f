"""history-writer persistence: every bus subject into its table, in batches, acked only once stored.

:class:`HistoryPersister` subscribes a durable consumer to every subject, decodes each delivery,
collects deliveries into batches (up to ``batch_max`` messages, waiting at most
``batch_interval_s`` after the first) and writes each batch in one transaction with
:meth:`HistoryStore.write_batch`. Deliveries are acked only after their batch is committed.

Failure handling:

- database unreachable, or a write slower than ``write_timeout_s`` (:class:`StoreError`): nothing
  is acked; the same batch is retried with exponential backoff (``retry_initial_s`` doubling up to
  ``retry_max_s``) while new deliveries wait in a bounded queue (which pushes back on the bus).
  ``healthy`` turns False and ``last_error`` says why; once the database is back the backlog
  drains. Writes are idempotent by ``msg_id``, so a redelivered message is never stored twice.
- a state broadcast without a table (``messages.EPHEMERAL_SUBJECTS``: ``risk.reservations``) is
  acked and skipped (not counted).
- malformed message (not a valid envelope for its subject): acked and counted as poison, never
  retried. The same holds for a message the database refuses for its content
  (:class:`StoreRejectedError`): the batch is split in halves until the refused message is isolated,
  and every other message of the batch is still stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final, Protocol, cast

import msgspec

from intents_mm import messages as m
from intents_mm.bus.port import Bus, Delivery, Handler, Subscription
from intents_mm.errors import BusError, InputError, StoreError
from intents_mm.storage.store import StoreRejectedError

log = logging.getLogger(__name__)

DEFAULT_DURABLE: Final = "history-writer"


class SubscribingBus(Protocol):
    """The part of the bus port (:class:`intents_mm.bus.port.Bus`) the persister needs."""

    async def subscribe(self, subjects: Sequence[str], durable: str, handler: Handler) -> Subscription: ...


class BatchWriter(Protocol):
    """The part of :class:`HistoryStore` the persister uses."""

    async def write_batch(
        self, envelopes: Sequence[m.Envelope[m.Payload]], raw: Sequence[bytes] | None = None
    ) -> int: ...


class PersisterStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for ``/state`` and metrics; all counts are since start."""

    healthy: bool
    last_error: str | None
    last_poison: str | None
    backlog: int
    received: int
    stored: int
    duplicates: int
    poison: int
    acked: int
    ack_failures: int
    write_failures: int
    batches: int


class _Item(msgspec.Struct):
    env: m.Envelope[m.Payload]
    delivery: Delivery
    raw: bytes  # the envelope as it travelled: stored as is (no second encoding)


class HistoryPersister:
    """Consumes every subject durably and stores it; see the module docstring for the contract."""

    def __init__(
        self,
        bus: SubscribingBus,
        store: BatchWriter,
        *,
        batch_max: int = 500,
        batch_interval_s: float = 0.05,
        durable: str = DEFAULT_DURABLE,
        subjects: Sequence[str] = (">",),
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        queue_max: int | None = None,
        write_timeout_s: float = 30.0,
        ack_wait_s: float | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if batch_max < 1:
            raise InputError("batch_max must be at least 1")
        if batch_interval_s < 0 or retry_initial_s <= 0 or write_timeout_s <= 0:
            raise InputError("batch interval, retry delay and write timeout must be positive")
        if ack_wait_s is not None and ack_wait_s <= 0:
            raise InputError("ack_wait_s must be positive")
        if retry_max_s < retry_initial_s:
            raise InputError("retry_max_s must be at least retry_initial_s")
        self._bus = bus
        self._store = store
        self._batch_max = batch_max
        self._batch_interval_s = batch_interval_s
        self._durable = durable
        self._subjects = tuple(subjects)
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._write_timeout_s = write_timeout_s
        if max_in_flight is not None and max_in_flight < 1:
            raise InputError("max_in_flight must be at least 1")
        self._ack_wait_s = ack_wait_s
        self._max_in_flight = max_in_flight
        #: Set once the durable consumer is attached (messages published from then on are persisted).
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_max or 4 * batch_max)
        self._inflight = 0
        self._putting = 0
        self._subscription: Subscription | None = None
        self._stopping = False
        self._progress = asyncio.Event()
        self._full = asyncio.Event()  # set when a batch's worth of items is queued
        self.healthy = True
        self.last_error: str | None = None
        self.last_poison: str | None = None
        self.received = 0
        self.stored = 0
        self.duplicates = 0
        self.poison = 0
        self.acked = 0
        self.ack_failures = 0
        self.write_failures = 0
        self.batches = 0

    # ------------------------------------------------------------------------------ state

    @property
    def backlog(self) -> int:
        """Messages received and decoded but not yet stored and acked (queued or being written)."""
        return self._putting + self._queue.qsize() + self._inflight

    def stats(self) -> PersisterStats:
        return PersisterStats(
            healthy=self.healthy,
            last_error=self.last_error,
            last_poison=self.last_poison,
            backlog=self.backlog,
            received=self.received,
            stored=self.stored,
            duplicates=self.duplicates,
            poison=self.poison,
            acked=self.acked,
            ack_failures=self.ack_failures,
            write_failures=self.write_failures,
            batches=self.batches,
        )

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or being written; False if ``timeout_s`` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.backlog:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------------------ running

    async def run(self) -> None:
        """Subscribe and persist until cancelled. Unacked messages are redelivered by the bus later."""
        if self._ack_wait_s is None and self._max_in_flight is None:
            subscription = await self._bus.subscribe(self._subjects, self._durable, self._on_delivery)
        else:
            # Bus-specific settings only when asked for, so a bus offering just the three-argument
            # subscribe also works; unset ones take the port's defaults.
            subscription = await cast(Bus, self._bus).subscribe(
                self._subjects,
                self._durable,
                self._on_delivery,
                ack_wait_s=30.0 if self._ack_wait_s is None else self._ack_wait_s,
                max_in_flight=256 if self._max_in_flight is None else self._max_in_flight,
            )
        self._subscription = subscription
        self._stopping = False
        self.subscribed.set()
        try:
            while True:
                batch = await self._next_batch()
                try:
                    await self._commit(batch)
                finally:
                    self._inflight = 0
                    self._progress.set()
        finally:
            await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        # Unblock a handler waiting for queue room, so the bus can stop at once; whatever was queued
        # is un-acked and will be redelivered to the next subscriber of the durable.
        self._stopping = True
        while not self._queue.empty():
            self._queue.get_nowait()
        sub, self._subscription = self._subscription, None
        if sub is not None:
            with contextlib.suppress(BusError):
                await sub.stop()

    async def _on_delivery(self, delivery: Delivery) -> None:
        if self._stopping:
            return  # left un-acked: redelivered after the restart
        if delivery.subject in m.EPHEMERAL_SUBJECTS:
            await self._ack(delivery)  # a state broadcast (heartbeat), not history: no table
            return
        self.received += 1
        try:
            env = m.decode(delivery.data, subject=delivery.subject)
        except InputError as exc:
            self.poison += 1
            self.last_poison = f"{delivery.subject} {delivery.msg_id}: {exc}"
            log.warning("history-writer: poison message acked and dropped: %s", self.last_poison)
            await self._ack(delivery)
            return
        self._putting += 1
        try:
            data = delivery.data
            await self._queue.put(
                _Item(env=env, delivery=delivery, raw=data if type(data) is bytes else bytes(data))
            )
            if self._queue.qsize() + 1 >= self._batch_max:
                self._full.set()  # a whole batch is waiting: write it now
        finally:
            self._putting -= 1

    async def _next_batch(self) -> list[_Item]:
        """Take up to ``batch_max`` items; items taken count as in flight (``backlog``) at once.

        After the first item it waits until ``batch_interval_s`` has passed or ``batch_max`` items are
        queued, then takes them all at once: one wake-up per batch, not one per message."""
        batch = [await self._queue.get()]
        self._inflight = 1
        if self._queue.qsize() + 1 < self._batch_max and self._batch_interval_s > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._batch_interval_s):
                    await self._full.wait()
        queue = self._queue
        while len(batch) < self._batch_max and not queue.empty():
            batch.append(queue.get_nowait())
        self._inflight = len(batch)
        return batch

    async def _commit(self, batch: list[_Item]) -> None:
        """Store ``batch`` (retrying while the database is down), then ack every delivery in it."""
        delay = self._retry_initial_s
        while True:
            try:
                try:
                    async with asyncio.timeout(self._write_timeout_s):
                        inserted = await self._store.write_batch(
                            [item.env for item in batch], [item.raw for item in batch]
                        )
                except TimeoutError:
                    raise StoreError(
                        f"history store write timed out after {self._write_timeout_s:g} s"
                    ) from None
            except StoreRejectedError as exc:
                if len(batch) == 1:
                    self.poison += 1
                    self.last_poison = f"{batch[0].env.subject} {batch[0].env.msg_id}: {exc}"
                    log.warning("history-writer: message refused by the store, dropped: %s", self.last_poison)
                    await self._ack(batch[0].delivery)
                    return
                middle = len(batch) // 2
                await self._commit(batch[:middle])
                await self._commit(batch[middle:])
                return
            except StoreError as exc:
                self.write_failures += 1
                self.last_error = str(exc)
                if self.healthy:
                    log.warning(
                        "history-writer: store unavailable, holding %d messages: %s", self.backlog, exc
                    )
                self.healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            break
        if not self.healthy:
            log.info("history-writer: store available again, draining %d messages", self.backlog)
        self.healthy = True
        self.batches += 1
        self.stored += inserted
        self.duplicates += len(batch) - inserted
        for i, item in enumerate(batch):
            if i and not i % 32:
                await asyncio.sleep(0)  # a large batch does not hold the event loop
            await self._ack(item.delivery)

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except BusError as exc:
            # Stored (or poison) already: a redelivery is deduplicated by msg_id.
            self.ack_failures += 1
            log.warning("history-writer: ack of %s failed: %s", delivery.msg_id, exc)
            return
        self.acked += 1
