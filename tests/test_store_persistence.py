"""HistoryPersister: batches, acks after commit, poison handling, and surviving a PostgreSQL outage.

The bus here is a small in-test broker with JetStream-like semantics (durable consumer, dedupe on
publish by msg_id, redelivery of unacked messages after ``ack_wait_s``), so the persister is tested
against redeliveries and duplicates, not only the happy path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import pytest

from conftest import ensure_postgres, start_postgres, stop_postgres
from intents_mm import messages as m
from intents_mm.errors import InputError
from intents_mm.storage import schema
from intents_mm.storage.migrate import migrate
from intents_mm.storage.persistence import HistoryPersister
from intents_mm.storage.store import HistoryStore
from test_messages_samples import T0, sample_envelopes


@dataclass
class FakeDelivery:
    bus: FakeBus
    subject: str
    msg_id: str
    data: bytes
    num_delivered: int
    sent_at: float = 0.0

    async def ack(self) -> None:
        self.bus.acks.append(self.msg_id)
        self.bus.pending.pop(self.msg_id, None)

    async def nak(self, delay_s: float = 0.0) -> None:
        self.bus.pending.pop(self.msg_id, None)
        self.bus.loop.call_later(delay_s, self.bus.redeliver, self)


@dataclass
class FakeBus:
    """One durable consumer; publish dedupes by msg_id; unacked deliveries come back after ack_wait_s."""

    ack_wait_s: float = 30.0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    queue: asyncio.Queue[FakeDelivery] = field(default_factory=asyncio.Queue)
    published: set[str] = field(default_factory=set)
    pending: dict[str, FakeDelivery] = field(default_factory=dict)
    acks: list[str] = field(default_factory=list)
    deliveries: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    subjects: tuple[str, ...] = ()

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        if msg_id in self.published:
            return
        self.published.add(msg_id)
        self.queue.put_nowait(FakeDelivery(self, subject, msg_id, data, 0))

    def redeliver(self, d: FakeDelivery) -> None:
        self.queue.put_nowait(FakeDelivery(self, d.subject, d.msg_id, d.data, d.num_delivered))

    async def subscribe(
        self, subjects: Sequence[str], durable: str, handler: Callable[[FakeDelivery], Awaitable[None]]
    ) -> FakeBus:
        self.subjects = tuple(subjects)

        async def consume() -> None:
            while True:
                d = await self.queue.get()
                d.num_delivered += 1
                d.sent_at = self.loop.time()
                self.pending[d.msg_id] = d
                self.deliveries += 1
                await handler(d)

        async def expire() -> None:
            while True:
                await asyncio.sleep(self.ack_wait_s / 4)
                now = self.loop.time()
                for d in list(self.pending.values()):
                    if now - d.sent_at >= self.ack_wait_s:
                        del self.pending[d.msg_id]
                        self.redeliver(d)

        self.tasks = [asyncio.create_task(consume()), asyncio.create_task(expire())]
        return self

    async def unsubscribe(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def running(persister: HistoryPersister) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(persister.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url)
    await st.connect()
    try:
        yield st
    finally:
        await st.close()


def _many(n: int, prefix: str) -> list[m.Envelope[m.Payload]]:
    out: list[m.Envelope[m.Payload]] = []
    while len(out) < n:
        out.extend(sample_envelopes(start_ns=T0 + len(out) * 10**6, prefix=f"{prefix}{len(out)}"))
    return out[:n]


async def _publish(bus: FakeBus, envs: Sequence[m.Envelope[m.Payload]]) -> None:
    for env in envs:
        await bus.publish(env.subject, m.encode(env), msg_id=env.msg_id)


async def _event_rows(store: HistoryStore) -> int:
    counts = await store.counts()
    return sum(counts[name] for name in schema.EVENT_TABLES)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_stores_every_subject_in_batches_and_acks_after(store: HistoryStore) -> None:
    bus = FakeBus()
    persister = HistoryPersister(bus, store, batch_max=100, batch_interval_s=0.01)
    envs = _many(550, "a")
    async with running(persister):
        await _publish(bus, envs)
        await _wait_for(lambda: len(bus.acks) == 550, 20)
        assert await persister.wait_idle(5)
    assert bus.subjects == m.ALL_SUBJECTS
    assert sorted(bus.acks) == sorted(e.msg_id for e in envs)
    assert await _event_rows(store) == 550
    stats = persister.stats()
    assert stats.stored == 550 and stats.duplicates == 0 and stats.poison == 0
    assert stats.received == 550 and stats.acked == 550 and stats.backlog == 0 and stats.healthy
    assert 6 <= stats.batches < 550  # batched, never more than batch_max per write
    # every subject landed in its own table, read back equal
    for env in envs[:11]:
        rows = await store.recent(schema.SUBJECT_TABLES[env.subject][0].name, limit=1000)
        assert env in [r.envelope for r in rows]


async def test_poison_is_acked_counted_and_not_retried(store: HistoryStore) -> None:
    bus = FakeBus()
    persister = HistoryPersister(bus, store, batch_interval_s=0.01)
    good = sample_envelopes(prefix="g")
    async with running(persister):
        await bus.publish(m.SWAP_REQUEST, b"{not json", msg_id="junk-1")
        await bus.publish(m.SWAP_REQUEST, m.encode(good[1]), msg_id="misrouted")  # a quote status
        await bus.publish("demand.unknown", m.encode(good[0]), msg_id="unknown-subject")
        await _publish(bus, good)
        await _wait_for(lambda: len(bus.acks) == 14, 10)
        assert await persister.wait_idle(5)
        await asyncio.sleep(0.1)
    assert bus.deliveries == 14  # nothing redelivered
    assert persister.poison == 3 and persister.stored == 11
    assert persister.last_poison is not None and "unknown-subject" in persister.last_poison
    assert await _event_rows(store) == 11


async def test_redelivered_and_republished_messages_are_stored_once(store: HistoryStore) -> None:
    bus = FakeBus()
    persister = HistoryPersister(bus, store, batch_interval_s=0.01)
    envs = sample_envelopes(prefix="r")
    async with running(persister):
        await _publish(bus, envs)
        await _wait_for(lambda: len(bus.acks) == 11, 10)
        # a second producer process replays with the same ids through a bus without dedupe
        for env in envs[:5]:
            bus.queue.put_nowait(FakeDelivery(bus, env.subject, env.msg_id, m.encode(env), 1))
        await _wait_for(lambda: len(bus.acks) == 16, 10)
        assert await persister.wait_idle(5)
    assert persister.stored == 11 and persister.duplicates == 5
    assert await _event_rows(store) == 11


@pytest.mark.pg
async def test_refused_message_does_not_block_its_batch(pg_url: str) -> None:
    await migrate(pg_url)
    store = HistoryStore(pg_url)
    await store.connect()
    bus = FakeBus()
    persister = HistoryPersister(bus, store, batch_interval_s=0.2)
    envs = _many(40, "n")
    swap = envs[0].payload
    assert isinstance(swap, m.SwapRequest)
    # valid JSON and a valid message, but PostgreSQL text cannot hold NUL
    bad = msgspec.structs.replace(
        envs[0], msg_id="nul", payload=msgspec.structs.replace(swap, partner_id="a\0b")
    )
    try:
        async with running(persister):
            await _publish(bus, [*envs[:20], bad, *envs[20:]])
            await _wait_for(lambda: len(bus.acks) == 41, 10)
            assert await persister.wait_idle(5)
        assert persister.poison == 1 and persister.stored == 40
        assert persister.last_poison is not None and "nul" in persister.last_poison
        assert persister.healthy
        assert await _event_rows(store) == 40
    finally:
        await store.close()


@pytest.mark.pg
async def test_postgres_outage_loses_nothing_and_doubles_nothing(pg_url: str) -> None:
    """Acceptance: stop PostgreSQL under the persister, publish, restart, every message stored once."""
    await migrate(pg_url)
    store = HistoryStore(pg_url)
    await store.connect()
    # a short ack_wait makes the bus redeliver held messages during the outage, as JetStream would
    bus = FakeBus(ack_wait_s=0.4)
    persister = HistoryPersister(bus, store, batch_max=50, batch_interval_s=0.01, retry_max_s=0.5)
    before = _many(60, "b")
    during = _many(300, "d")
    after = _many(40, "z")
    try:
        async with running(persister):
            await _publish(bus, before)
            await _wait_for(lambda: len(bus.acks) == 60, 10)
            assert await persister.wait_idle(5)
            try:
                stop_postgres()
                await _publish(bus, during)
                await _wait_for(lambda: not persister.healthy, 10)
                await asyncio.sleep(1.0)  # several retries and redeliveries while down
                assert len(bus.acks) == 60, "nothing may be acked while the database is down"
                assert persister.backlog > 0
                assert persister.last_error is not None and "\n" not in persister.last_error
                # the bounded queue pushes back: the bus still holds part of the outage traffic
                assert bus.deliveries < 60 + 300
            finally:
                start_postgres()
                ensure_postgres()
            await _publish(bus, after)
            await _wait_for(lambda: set(bus.acks) >= {e.msg_id for e in before + during + after}, 30)
            assert await persister.wait_idle(10)
        assert persister.healthy
        assert persister.write_failures > 0
        assert persister.duplicates > 0  # held messages expired and were redelivered meanwhile
        expected = before + during + after
        assert await _event_rows(store) == len(expected)
        assert persister.stored == len(expected)
        for table in schema.EVENT_TABLES:
            rows = await store.recent(table, limit=10_000)
            ids = [r.envelope.msg_id for r in rows]
            assert len(ids) == len(set(ids))
        stored = {
            r.envelope.msg_id: r.envelope
            for table in schema.EVENT_TABLES
            for r in await store.recent(table, limit=10_000)
        }
        assert stored == {e.msg_id: e for e in expected}
    finally:
        start_postgres()
        ensure_postgres()
        await store.close()


class _StallingStore:
    """A real store whose first ``stalls`` writes hang, like a database that accepts and never answers."""

    def __init__(self, store: HistoryStore, stalls: int) -> None:
        self.store = store
        self.stalls = stalls

    async def write_batch(self, envelopes: Sequence[m.Envelope[m.Payload]]) -> int:
        if self.stalls:
            self.stalls -= 1
            await asyncio.Event().wait()
        return await self.store.write_batch(envelopes)


async def test_a_hanging_write_times_out_and_is_retried(sqlite_url: str) -> None:
    await migrate(sqlite_url)
    store = HistoryStore(sqlite_url)
    await store.connect()
    bus = FakeBus()
    persister = HistoryPersister(
        bus, _StallingStore(store, stalls=2), batch_interval_s=0.01, write_timeout_s=0.1, retry_initial_s=0.01
    )
    envs = sample_envelopes(prefix="h")
    try:
        async with running(persister):
            await _publish(bus, envs)
            await _wait_for(lambda: len(bus.acks) == 11, 10)
            assert await persister.wait_idle(5)
        assert persister.write_failures == 2 and persister.healthy
        assert persister.last_error is not None and "timed out after 0.1 s" in persister.last_error
        assert await _event_rows(store) == 11
    finally:
        await store.close()


def test_constructor_validates_settings() -> None:
    class NoBus:
        def subscribe(self, subjects: Sequence[str], durable: str, handler: object) -> None:
            raise AssertionError("not called")

    class NoStore:
        async def write_batch(self, envelopes: Sequence[m.Envelope[m.Payload]]) -> int:
            raise AssertionError("not called")

    with pytest.raises(InputError, match="batch_max"):
        HistoryPersister(NoBus(), NoStore(), batch_max=0)
    with pytest.raises(InputError, match="retry_max_s"):
        HistoryPersister(NoBus(), NoStore(), retry_initial_s=1, retry_max_s=0.5)
    with pytest.raises(InputError, match="positive"):
        HistoryPersister(NoBus(), NoStore(), write_timeout_s=0)
