"""HistoryPersister on the real buses: batches, acks after commit, poison, a PostgreSQL outage.

The memory bus runs the functional tests on both store engines; the outage acceptance test runs on
NATS JetStream and a private PostgreSQL cluster (``private_postgres``) that the test stops and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
import nats
import pytest

from conftest import PrivatePostgres
from intents_mm import messages as m
from intents_mm.bus.memory import MemoryBus
from intents_mm.bus.nats import NatsBus
from intents_mm.bus.port import Bus
from intents_mm.errors import InputError
from intents_mm.storage import schema
from intents_mm.storage.migrate import migrate
from intents_mm.storage.persistence import HistoryPersister
from intents_mm.storage.store import HistoryStore
from test_messages_samples import T0, sample_envelopes


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


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


async def _publish(bus: Bus, envs: Sequence[m.Envelope[m.Payload]]) -> None:
    for env in envs:
        await bus.publish(env.subject, m.encode(env), msg_id=env.msg_id)


async def _event_rows(store: HistoryStore) -> int:
    counts = await store.counts()
    return sum(counts[name] for name in schema.EVENT_TABLES)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


def _consumer(bus: MemoryBus, durable: str = "history-writer") -> dict[str, int]:
    consumers = bus.describe()["consumers"]
    assert isinstance(consumers, dict)
    info: dict[str, int] = consumers[durable]
    return info


def _counters(bus: MemoryBus) -> dict[str, int]:
    counters = bus.describe()["counters"]
    assert isinstance(counters, dict)
    return counters


async def _stored(store: HistoryStore) -> dict[str, m.Envelope[m.Payload]]:
    out: dict[str, m.Envelope[m.Payload]] = {}
    for table in schema.EVENT_TABLES:
        for row in await store.recent(table, limit=100_000):
            assert row.envelope.msg_id not in out, f"{row.envelope.msg_id} stored twice"
            out[row.envelope.msg_id] = row.envelope
    return out


async def test_stores_every_subject_in_batches_and_acks_after(store: HistoryStore, bus: MemoryBus) -> None:
    persister = HistoryPersister(bus, store, batch_max=100, batch_interval_s=0.01, max_in_flight=600)
    envs = _many(550, "a")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: persister.acked == 550, 20)
        assert await persister.wait_idle(5)
        assert _consumer(bus)["unacked"] == 0
    assert await _stored(store) == {e.msg_id: e for e in envs}
    stats = persister.stats()
    assert stats.stored == 550 and stats.duplicates == 0 and stats.poison == 0
    assert stats.received == 550 and stats.backlog == 0 and stats.healthy
    assert 6 <= stats.batches < 550  # batched, never more than batch_max per write
    assert _counters(bus)["redelivered"] == 0


async def test_poison_is_acked_counted_and_not_retried(store: HistoryStore, bus: MemoryBus) -> None:
    persister = HistoryPersister(bus, store, batch_interval_s=0.01)
    good = sample_envelopes(prefix="g")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await bus.publish(m.SWAP_REQUEST, b"{not json", msg_id="junk-1")
        await bus.publish(m.SWAP_REQUEST, m.encode(good[1]), msg_id="misrouted")  # a quote status
        await _publish(bus, good)
        await _wait_for(lambda: persister.acked == 14, 10)
        assert await persister.wait_idle(5)
        await asyncio.sleep(0.1)
        assert _consumer(bus)["unacked"] == 0
    assert _counters(bus)["redelivered"] == 0
    assert persister.poison == 2 and persister.stored == 12
    assert persister.last_poison is not None and "misrouted" in persister.last_poison
    assert await _event_rows(store) == 12


class _SlowStore:
    """A real store whose first ``stalls`` writes first wait ``delay_s`` (or forever with None)."""

    def __init__(self, store: HistoryStore, stalls: int, delay_s: float | None) -> None:
        self.store = store
        self.stalls = stalls
        self.delay_s = delay_s

    async def write_batch(
        self, envelopes: Sequence[m.Envelope[m.Payload]], raw: Sequence[bytes] | None = None
    ) -> int:
        if self.stalls:
            self.stalls -= 1
            if self.delay_s is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(self.delay_s)
        return await self.store.write_batch(envelopes, raw)


async def test_redeliveries_during_a_slow_write_are_stored_once(store: HistoryStore, bus: MemoryBus) -> None:
    # ack_wait shorter than the first write: the bus redelivers the whole held batch meanwhile
    persister = HistoryPersister(
        bus, _SlowStore(store, stalls=1, delay_s=0.6), batch_interval_s=0.01, ack_wait_s=0.2
    )
    envs = sample_envelopes(prefix="r")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: persister.received >= 22, 10)
        assert await persister.wait_idle(5)
        await _wait_for(lambda: _consumer(bus)["unacked"] == 0, 5)
    assert _counters(bus)["redelivered"] >= 11
    assert persister.stored == 12 and persister.duplicates >= 12
    assert await _stored(store) == {e.msg_id: e for e in envs}


async def test_a_restarted_persister_picks_up_what_was_not_acked(sqlite_url: str, bus: MemoryBus) -> None:
    await migrate(sqlite_url)
    store = HistoryStore(sqlite_url)
    await store.connect()
    envs = sample_envelopes(prefix="s")
    try:
        first = HistoryPersister(bus, _SlowStore(store, stalls=1, delay_s=None), ack_wait_s=0.3)
        async with running(first):
            await asyncio.wait_for(first.subscribed.wait(), 5)
            await _publish(bus, envs)
            await _wait_for(lambda: first.backlog == 12, 5)
        assert first.acked == 0 and await _event_rows(store) == 0
        second = HistoryPersister(bus, store, batch_interval_s=0.01, ack_wait_s=0.3)
        async with running(second):
            await _wait_for(lambda: second.acked == 12, 10)
            assert await second.wait_idle(5)
        assert await _stored(store) == {e.msg_id: e for e in envs}
    finally:
        await store.close()


async def test_refused_message_does_not_block_its_batch(pg_url: str, bus: MemoryBus) -> None:
    await migrate(pg_url)
    store = HistoryStore(pg_url)
    await store.connect()
    persister = HistoryPersister(bus, store, batch_interval_s=0.2)
    envs = _many(40, "n")
    swap = envs[0].payload
    assert isinstance(swap, m.SwapRequest)
    # valid JSON and a valid message, but PostgreSQL text cannot hold NUL
    bad_payload = msgspec.structs.replace(swap, partner_id="a\0b")
    bad = msgspec.structs.replace(envs[0], msg_id="nul", payload=bad_payload)
    try:
        async with running(persister):
            await asyncio.wait_for(persister.subscribed.wait(), 5)
            await _publish(bus, [*envs[:20], bad, *envs[20:]])
            await _wait_for(lambda: persister.acked == 41, 10)
            assert await persister.wait_idle(5)
        assert persister.poison == 1 and persister.stored == 40
        assert persister.last_poison is not None and "nul" in persister.last_poison
        assert persister.healthy
        assert await _stored(store) == {e.msg_id: e for e in envs}
    finally:
        await store.close()


async def _nats_consumer_state(url: str, stream: str, durable: str) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not acked) for a durable, asked of the server."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    finally:
        await nc.close()


async def test_postgres_outage_loses_nothing_and_doubles_nothing(
    private_postgres: PrivatePostgres, nats_server_url: str, stream_prefix: str
) -> None:
    """Acceptance: stop PostgreSQL under the persister, publish, restart it, every message stored once."""
    pg_url = private_postgres.create_database("imm_outage")
    await migrate(pg_url)
    store = HistoryStore(pg_url)
    await store.connect()
    stream = f"{stream_prefix}_S"
    bus = NatsBus(nats_server_url, stream=stream, subject_prefix=stream_prefix.lower())
    await bus.start()
    # a short ack_wait makes JetStream redeliver the messages held during the outage
    persister = HistoryPersister(
        bus, store, batch_max=50, batch_interval_s=0.01, retry_max_s=0.5, ack_wait_s=1.0
    )
    before, during, after = _many(60, "b"), _many(300, "d"), _many(40, "z")
    try:
        async with running(persister):
            await _publish(bus, before)
            await _wait_for(lambda: persister.acked == 60, 15)
            assert await persister.wait_idle(5)
            try:
                await asyncio.to_thread(private_postgres.stop)  # the loop keeps running meanwhile
                await _publish(bus, during)
                await _wait_for(lambda: not persister.healthy, 10)
                await asyncio.sleep(1.5)  # several retries and redeliveries while down
                assert persister.acked == 60, "nothing may be acked while the database is down"
                assert persister.backlog > 0
                assert persister.last_error is not None and "\n" not in persister.last_error
                _, unacked = await _nats_consumer_state(nats_server_url, stream, "history-writer")
                assert unacked > 0
            finally:
                await asyncio.to_thread(private_postgres.start)
            await _publish(bus, after)
            await _wait_for(lambda: persister.stored == 400, 30)
            assert await persister.wait_idle(10)
            await asyncio.sleep(0.2)
            assert await _nats_consumer_state(nats_server_url, stream, "history-writer") == (0, 0)
        assert persister.healthy and persister.write_failures > 0
        assert persister.duplicates > 0  # held messages were redelivered meanwhile
        assert await _stored(store) == {e.msg_id: e for e in before + during + after}
    finally:
        await bus.close()
        await store.close()


async def test_a_hanging_write_times_out_and_is_retried(store: HistoryStore, bus: MemoryBus) -> None:
    persister = HistoryPersister(
        bus,
        _SlowStore(store, stalls=2, delay_s=None),
        batch_interval_s=0.01,
        write_timeout_s=1.0,  # generous: a real write on a loaded machine must never count as a stall
        retry_initial_s=0.01,
    )
    envs = sample_envelopes(prefix="h")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: persister.acked == 12, 10)
        assert await persister.wait_idle(5)
    assert persister.write_failures == 2 and persister.healthy
    assert persister.last_error is not None and "timed out after 1 s" in persister.last_error
    assert await _stored(store) == {e.msg_id: e for e in envs}


async def test_constructor_validates_settings(store: HistoryStore, bus: MemoryBus) -> None:
    with pytest.raises(InputError, match="batch_max"):
        HistoryPersister(bus, store, batch_max=0)
    with pytest.raises(InputError, match="retry_max_s"):
        HistoryPersister(bus, store, retry_initial_s=1, retry_max_s=0.5)
    with pytest.raises(InputError, match="positive"):
        HistoryPersister(bus, store, write_timeout_s=0)
    with pytest.raises(InputError, match="ack_wait_s"):
        HistoryPersister(bus, store, ack_wait_s=0)
    with pytest.raises(InputError, match="max_in_flight"):
        HistoryPersister(bus, store, max_in_flight=0)
