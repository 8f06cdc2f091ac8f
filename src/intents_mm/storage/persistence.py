"""history-writer persistence: every bus subject into its table, in batches, acked only once stored.

:class:`HistoryPersister` subscribes a durable consumer to every subject, decodes each delivery,
collects deliveries into batches (up to ``batch_max`` messages, waiting at most
``batch_interval_s`` after the first) and writes each batch in one transaction with
:meth:`HistoryStore.write_batch`. Deliveries are acked only after their batch is committed, or, with
a spill journal, once it is durably in the journal.

Failure handling:

- database unreachable, or a write slower than ``write_timeout_s`` (:class:`StoreError`): ``healthy``
  turns False at once and ``last_error`` says why (history-writer's ``/healthz`` answers 503 with it).

  * With a :class:`~intents_mm.storage.journal.SpillJournal` (the service always has one, under
    ``<INTENTS_MM_VAR_DIR>/history-writer/journal/``): after ``spill_after_failures`` failed attempts
    (1 by default) the batch is appended to the journal, fsynced and acked, so nothing is lost even if
    the process then dies (``kill -9``) before the store is back. While the journal holds anything,
    every new batch goes behind it (to the journal) until a replay has emptied it: replays are tried at
    start, then with exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``), also
    when no message arrives. A replay writes the segments oldest first with ``write_batch`` and deletes
    each one once all of it is stored; it is idempotent (``msg_id``), so a segment replayed twice or a
    message both spilled and stored is stored once. If the journal itself cannot be written the batch
    is held as below.
  * Without a journal (or when it fails): nothing is acked; the same batch is retried with
    exponential backoff while new deliveries wait in a bounded queue (which pushes back on the bus).

  Once a write or a replay succeeds ``healthy`` is True again. Writes are idempotent by ``msg_id``, so
  a redelivered message is never stored twice.
- a state broadcast without a table (``messages.EPHEMERAL_SUBJECTS``: ``risk.reservations``) is
  acked and skipped (not counted).
- malformed message (not a valid envelope for its subject): acked and counted as poison, never
  retried. The same holds for a message the database refuses for its content
  (:class:`StoreRejectedError`, counted also as ``rejected``): the batch is split in halves until the
  refused message is isolated, every other message of the batch is still stored, and the refused one
  is put aside with the error in the journal's ``rejected.jsonl`` (also when it came from a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Final, Protocol, cast

import msgspec

from intents_mm import messages as m
from intents_mm.bus.port import Bus, Delivery, Handler, Subscription
from intents_mm.errors import BusError, InputError, StoreError
from intents_mm.storage.journal import JournalError, JournalStats, SpillJournal
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
    rejected: int
    last_rejected: str | None
    spilled: int
    spill_failures: int
    failing_since_ns: int | None
    journal: JournalStats | None


class _Item(msgspec.Struct):
    env: m.Envelope[m.Payload]
    delivery: Delivery | None  # None for a line replayed from the journal (nothing to ack)
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
        journal: SpillJournal | None = None,
        spill_after_failures: int = 1,
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
        if spill_after_failures < 1:
            raise InputError("spill_after_failures must be at least 1")
        self._journal = journal
        self._spill_after_failures = spill_after_failures
        self._next_replay_at = 0.0  # loop time of the next replay attempt
        self._replay_delay = retry_initial_s
        self._ack_wait_s = ack_wait_s
        self._max_in_flight = max_in_flight
        #: Set once the durable consumer is attached (messages published from then on are persisted).
        self.subscribed = asyncio.Event()
        #: Set once the journal left by a previous process has been replayed (or the attempt failed).
        self.startup_replayed = asyncio.Event()
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
        self.rejected = 0
        self.last_rejected: str | None = None
        self.spilled = 0
        self.spill_failures = 0
        self.failing_since_ns: int | None = None  # wall clock of the first failure of the outage

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
            rejected=self.rejected,
            last_rejected=self.last_rejected,
            spilled=self.spilled,
            spill_failures=self.spill_failures,
            failing_since_ns=self.failing_since_ns,
            journal=self._journal.stats() if self._journal is not None else None,
        )

    @property
    def journal(self) -> SpillJournal | None:
        return self._journal

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
        journal = self._journal
        if journal is not None:
            try:
                journal.open()
            except JournalError as exc:
                log.error("history-writer: spill journal unusable, holding instead: %s", exc)
                self._journal = journal = None
        try:
            while True:
                await self._replay_if_due()
                self.startup_replayed.set()
                batch = await self._next_batch(self._replay_wait())
                if batch is None:
                    continue  # nothing arrived before the next replay attempt
                try:
                    await self._commit(batch)
                finally:
                    self._inflight = 0
                    self._progress.set()
        finally:
            if journal is not None:
                journal.close()
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

    async def _next_batch(self, wait_s: float | None = None) -> list[_Item] | None:
        """Take up to ``batch_max`` items; items taken count as in flight (``backlog``) at once.

        After the first item it waits until ``batch_interval_s`` has passed or ``batch_max`` items are
        queued, then takes them all at once: one wake-up per batch, not one per message. ``None`` when
        no first item arrives within ``wait_s`` (when given)."""
        if wait_s is None:
            first = await self._queue.get()
        else:
            try:
                async with asyncio.timeout(wait_s):
                    first = await self._queue.get()
            except TimeoutError:
                return None
        batch = [first]
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
        """Store ``batch`` (or spill it to the journal while the database is down), then ack it."""
        delay = self._retry_initial_s
        failures = 0
        journal = self._journal
        rejected = self.rejected
        while True:
            behind = journal is not None and journal.pending and not await self._replay_if_due()
            if behind and await self._spill(batch):
                break  # the journal is not empty and the store not back: this batch goes behind it
            try:
                inserted = await self._store_items(batch)
            except StoreError as exc:
                failures += 1
                self._note_failure(exc)
                if (
                    journal is not None
                    and failures >= self._spill_after_failures
                    and await self._spill(batch)
                ):
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._note_success()
            self.batches += 1
            self.stored += inserted
            self.duplicates += len(batch) - inserted - (self.rejected - rejected)
            break
        for i, item in enumerate(batch):
            if i and not i % 32:
                await asyncio.sleep(0)  # a large batch does not hold the event loop
            if item.delivery is not None:
                await self._ack(item.delivery)

    async def _write(self, items: Sequence[_Item]) -> int:
        try:
            async with asyncio.timeout(self._write_timeout_s):
                return await self._store.write_batch(
                    [item.env for item in items], [item.raw for item in items]
                )
        except TimeoutError:
            raise StoreError(f"history store write timed out after {self._write_timeout_s:g} s") from None

    async def _store_items(self, items: list[_Item]) -> int:
        """Write ``items``; a message the store refuses is isolated (halving) and put aside, the rest
        are stored. Returns the rows inserted; :class:`StoreError` when the store is unavailable."""
        try:
            return await self._write(items)
        except StoreRejectedError as exc:
            if len(items) == 1:
                self._reject(items[0], exc)
                return 0
        middle = len(items) // 2
        return await self._store_items(items[:middle]) + await self._store_items(items[middle:])

    def _reject(self, item: _Item, exc: StoreRejectedError) -> None:
        self.poison += 1
        self.rejected += 1
        self.last_poison = self.last_rejected = f"{item.env.subject} {item.env.msg_id}: {exc}"
        log.warning("history-writer: message refused by the store, set aside: %s", self.last_poison)
        if self._journal is not None:
            self._journal.set_aside(item.raw, str(exc), subject=item.env.subject, msg_id=item.env.msg_id)

    def _note_failure(self, exc: StoreError) -> None:
        self.write_failures += 1
        self.last_error = str(exc)
        if self.healthy:
            log.warning("history-writer: store unavailable, holding %d messages: %s", self.backlog, exc)
            self.failing_since_ns = time.time_ns()
        self.healthy = False

    def _note_success(self) -> None:
        if not self.healthy:
            log.info("history-writer: store available again, draining %d messages", self.backlog)
        self.healthy = True
        self.failing_since_ns = None

    async def _spill(self, batch: list[_Item]) -> bool:
        journal = self._journal
        assert journal is not None
        live = [item for item in batch if item.delivery is not None]
        was_empty = not journal.pending
        try:
            await journal.spill([item.raw for item in live])
        except JournalError as exc:
            self.spill_failures += 1
            self.last_error = f"{self.last_error or 'history store unavailable'}; and {exc}"
            log.error("history-writer: could not spill %d messages, holding them: %s", len(live), exc)
            return False
        if was_empty:
            log.warning("history-writer: store unavailable, spilling to the journal %s", journal.directory)
        self.spilled += len(live)
        return True

    def _replay_wait(self) -> float | None:
        """How long the batch loop may wait for a message before the next replay attempt is due."""
        journal = self._journal
        if journal is None or not journal.pending:
            return None
        return max(self._next_replay_at - asyncio.get_running_loop().time(), 0.01)

    async def _replay_if_due(self) -> bool:
        """Replay the journal into the store when an attempt is due; True when the journal is empty."""
        journal = self._journal
        if journal is None or not journal.pending:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_replay_at:
            return False
        if await self._replay(journal):
            self._replay_delay = self._retry_initial_s
            return True
        self._next_replay_at = loop.time() + self._replay_delay
        self._replay_delay = min(self._replay_delay * 2, self._retry_max_s)
        return False

    async def _replay(self, journal: SpillJournal) -> bool:
        """Write every journal segment to the store, oldest first, deleting each once stored."""
        inflight = self._inflight
        try:
            for path in journal.sealed_segments():
                lines = journal.segment_lines(path)
                inserted = decoded = 0
                for start in range(0, len(lines), self._batch_max):
                    chunk = [
                        _Item(env=env, delivery=None, raw=raw)
                        for env, raw in journal.decode_lines(path, lines[start : start + self._batch_max])
                    ]
                    decoded += len(chunk)
                    self._inflight = inflight + len(chunk)
                    if chunk:
                        inserted += await self._store_items(chunk)
                    await asyncio.sleep(0)  # a large segment does not hold up a quote
                journal.drop_segment(path, inserted=inserted, lines=decoded)
                self.stored += inserted
        except JournalError as exc:
            journal.last_replay_error = str(exc)
            log.error("history-writer: journal replay failed: %s", exc)
            return False
        except StoreError as exc:
            journal.last_replay_error = str(exc)
            self._note_failure(exc)
            return False
        finally:
            self._inflight = inflight
        journal.replays += 1
        journal.last_replay_ts_ns = time.time_ns()
        journal.last_replay_error = None
        self._note_success()
        log.info("history-writer: spill journal replayed into the store (%d rows so far)", journal.replayed)
        return True

    async def _ack(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except BusError as exc:
            # Stored (or poison) already: a redelivery is deduplicated by msg_id.
            self.ack_failures += 1
            log.warning("history-writer: ack of %s failed: %s", delivery.msg_id, exc)
            return
        self.acked += 1
