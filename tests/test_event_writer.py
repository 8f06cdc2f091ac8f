"""The history store's fast write path: precompiled INSERTs and the SQLite writer thread.

What is stored through it is checked for every subject on both engines by ``test_store.py``
(write, read back, equal); here: the plan binds exactly what SQLAlchemy Core binds, the SQLite
writer's error mapping (busy → outage, refused value → rejected) and recovery, and the persister's
batching (a full batch is written at once, not after the interval).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.sqlite import aiosqlite

from intents_mm import messages as m
from intents_mm.bus.memory import MemoryBus
from intents_mm.errors import InputError, StoreError
from intents_mm.storage import schema
from intents_mm.storage.event_writer import InsertPlan, SqliteWriter, StoreRefused, sqlite_path
from intents_mm.storage.migrate import create_engine, migrate
from intents_mm.storage.persistence import HistoryPersister
from intents_mm.storage.store import HistoryStore, event_row
from test_messages_samples import sample_envelopes


def _comparable(value: object) -> object:
    return value.obj if isinstance(value, Jsonb) else value  # psycopg's JSONB wrapper has no __eq__


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:////tmp/never-opened.sqlite3", "postgresql+psycopg://nobody@127.0.0.1:1/never"],
    ids=["sqlite", "postgresql"],
)
def test_plan_binds_what_sqlalchemy_core_binds(url: str) -> None:
    dialect = create_engine(url).dialect  # the store's engine settings (its JSON serializer); no connection
    for env in sample_envelopes(prefix="plan"):
        table, row = event_row(env, m.encode(env))
        plan = InsertPlan(table, dialect)
        assert "ON CONFLICT (msg_id) DO NOTHING" in plan.sql and "RETURNING" not in plan.sql
        core = table.insert().values(row).compile(dialect=dialect)
        expected = {
            key: _comparable(
                proc(value) if (proc := core._bind_processors.get(key)) and value is not None else value
            )
            for key, value in core.params.items()
        }
        params = plan.params(row)
        bound = dict(zip(plan.keys, params, strict=True)) if isinstance(params, tuple) else params
        assert {k: _comparable(v) for k, v in bound.items()} == expected


def test_plan_refuses_what_the_column_types_refuse() -> None:
    env = sample_envelopes(prefix="bad")[0]
    table, row = event_row(env, m.encode(env))
    plan = InsertPlan(table, aiosqlite.dialect())
    row["ts"] = row["ts"].replace(tzinfo=None)
    with pytest.raises(InputError, match="timezone-aware"):
        plan.params(row)


def test_in_memory_sqlite_is_refused() -> None:
    for url in ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"):
        with pytest.raises(InputError, match="must be a file"):
            sqlite_path(url)
    assert sqlite_path("sqlite+aiosqlite:////var/x/history.sqlite3") == "/var/x/history.sqlite3"


async def test_sqlite_writer_maps_busy_to_an_outage_and_recovers(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sqlite3")
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (k TEXT NOT NULL UNIQUE, v INTEGER)")
    insert = "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING"
    writer = SqliteWriter(path, busy_timeout_s=0.05)
    try:
        assert await writer.write([(insert, [("a", 1), ("b", 2)])]) == 2
        assert await writer.write([(insert, [("a", 1), ("c", 3)])]) == 1  # the duplicate is not counted
        setup.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreError, match="locked") as busy:
            await writer.write([(insert, [("d", 4)])])
        assert not isinstance(busy.value, StoreRefused)  # an outage: the persister retries it
        setup.execute("ROLLBACK")
        assert await writer.write([(insert, [("d", 4)])]) == 1
        with pytest.raises(StoreRefused, match="NOT NULL"):
            await writer.write([(insert, [("e", 5), (None, 6)])])
        # the refused batch left nothing behind, and the writer still works
        assert await writer.write([(insert, [("e", 5)])]) == 1
        rows = setup.execute("SELECT k, v FROM t ORDER BY k").fetchall()
        assert rows == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
    finally:
        await writer.close()
        setup.close()


async def test_a_full_batch_is_written_without_waiting_for_the_interval(sqlite_url: str) -> None:
    await migrate(sqlite_url)
    store = HistoryStore(sqlite_url)
    await store.connect()
    bus = MemoryBus()
    await bus.start()
    persister = HistoryPersister(bus, store, batch_max=8, batch_interval_s=30.0)
    task = asyncio.create_task(persister.run())
    try:
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        envs = sample_envelopes(prefix="full")[:8]
        assert len(envs) == 8
        started = time.monotonic()
        for env in envs:
            await bus.publish(env.subject, m.encode(env), msg_id=env.msg_id)
        async with asyncio.timeout(10):
            while persister.acked < 8:
                await asyncio.sleep(0.01)
        assert time.monotonic() - started < 10  # far less than the 30 s interval
        assert persister.batches == 1 and persister.stored == 8
        counts = await store.counts()
        assert sum(counts[name] for name in schema.EVENT_TABLES) == 8
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
        await store.close()
