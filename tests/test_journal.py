"""The spill journal: history-writer's persister loses nothing while the store is down, even across a crash.

Functional tests on the memory bus with a store that can be switched off (both engines); the double-
fault drill with a real PostgreSQL and a ``kill -9`` of ``run-all`` is ``tests/test_e2e_journal_drill.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest

from intents_mm import messages as m
from intents_mm.bus.memory import MemoryBus
from intents_mm.errors import InputError, StoreError
from intents_mm.storage.journal import REJECTED_FILE, SpillJournal
from intents_mm.storage.migrate import migrate
from intents_mm.storage.persistence import HistoryPersister
from intents_mm.storage.store import HistoryStore, StoreRejectedError
from test_store_persistence import _many, _publish, _stored, _wait_for, running


class _SwitchableStore:
    """A real store behind a switch: while ``down`` every write fails as an unreachable database."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.down = False
        self.attempts = 0

    async def write_batch(
        self, envelopes: Sequence[m.Envelope[m.Payload]], raw: Sequence[bytes] | None = None
    ) -> int:
        self.attempts += 1
        if self.down:
            raise StoreError("history store write of 1 messages failed: connection refused")
        return await self.store.write_batch(envelopes, raw)


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url)
    await st.connect()
    try:
        yield st
    finally:
        await st.close()


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("spill-*.jnl"))


async def test_spilled_while_down_acked_then_replayed_without_traffic(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    switch = _SwitchableStore(store)
    switch.down = True
    journal = SpillJournal(tmp_path / "journal")
    persister = HistoryPersister(
        bus, switch, journal=journal, batch_interval_s=0.01, retry_initial_s=0.02, retry_max_s=0.1
    )
    envs = _many(60, "down")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: persister.acked == 60, 10)
        # acked because durable in the journal: nothing in the store, nothing held in memory
        assert persister.backlog == 0 and not persister.healthy
        assert journal.rows_pending == 60 and persister.spilled == 60
        assert await _stored(store) == {}
        stats = persister.stats()
        assert stats.journal is not None and stats.journal.rows_pending == 60
        assert stats.failing_since_ns is not None and "connection refused" in (stats.last_error or "")
        # the store comes back: replayed on the retry timer although no new message arrives
        switch.down = False
        await _wait_for(lambda: not journal.pending, 10)
        assert persister.healthy and persister.failing_since_ns is None
    assert await _stored(store) == {e.msg_id: e for e in envs}
    assert _segments(tmp_path / "journal") == []
    assert journal.replayed == 60 and journal.replays == 1 and journal.last_replay_ts_ns is not None
    assert persister.stored == 60


async def test_new_messages_go_behind_the_journal_until_it_is_replayed(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    switch = _SwitchableStore(store)
    switch.down = True
    journal = SpillJournal(tmp_path / "j")
    persister = HistoryPersister(
        bus, switch, journal=journal, batch_interval_s=0.01, retry_initial_s=0.02, retry_max_s=0.05
    )
    first, second = _many(30, "a"), _many(30, "b")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, first)
        await _wait_for(lambda: persister.acked == 30, 10)
        switch.down = False
        await _publish(bus, second)
        await _wait_for(lambda: persister.acked == 60 and not journal.pending, 10)
        assert await persister.wait_idle(5)
    stored = await _stored(store)
    assert stored == {e.msg_id: e for e in [*first, *second]}
    # the spilled messages were stored before the ones that came after them
    rows = await store.recent("swap_demand_events", limit=1000)
    ids = [r.envelope.msg_id for r in sorted(rows, key=lambda r: r.id)]
    spilled_swaps = [e.msg_id for e in first if e.subject == m.SWAP_REQUEST]
    later_swaps = [e.msg_id for e in second if e.subject == m.SWAP_REQUEST]
    assert spilled_swaps and later_swaps
    assert max(ids.index(i) for i in spilled_swaps) < min(ids.index(i) for i in later_swaps)


async def test_a_restarted_persister_replays_what_the_dead_one_spilled(
    sqlite_url: str, bus: MemoryBus, tmp_path: Path
) -> None:
    await migrate(sqlite_url)
    store = HistoryStore(sqlite_url)
    await store.connect()
    try:
        switch = _SwitchableStore(store)
        switch.down = True
        directory = tmp_path / "journal"
        first = HistoryPersister(
            bus, switch, journal=SpillJournal(directory), batch_interval_s=0.01, retry_initial_s=0.02
        )
        envs = _many(25, "crash")
        async with running(first):
            await asyncio.wait_for(first.subscribed.wait(), 5)
            await _publish(bus, envs)
            await _wait_for(lambda: first.acked == 25, 10)
        # "crash": the first persister is gone with the store still down; a torn tail line as a
        # kill -9 in the middle of a write could leave
        segments = _segments(directory)
        assert len(segments) == 1
        with segments[0].open("ab") as f:
            f.write(b'{"subject":"demand.swap_req')
        switch.down = False
        second_journal = SpillJournal(directory)
        second = HistoryPersister(bus, store, journal=second_journal, batch_interval_s=0.01)
        async with running(second):
            await asyncio.wait_for(second.subscribed.wait(), 5)
            await _wait_for(lambda: not second_journal.pending, 10)
        assert await _stored(store) == {e.msg_id: e for e in envs}
        assert second_journal.replayed == 25 and second_journal.bad_lines == 1
        aside = [json.loads(line) for line in (directory / REJECTED_FILE).read_text().splitlines()]
        assert len(aside) == 1 and "does not decode" in aside[0]["error"]
        assert aside[0]["data"].startswith('{"subject":"demand.swap_req')
        # replaying the same lines again stores nothing twice
        third_journal = SpillJournal(directory)
        third_journal.open()
        assert not third_journal.pending
    finally:
        await store.close()


async def test_replay_is_idempotent_when_part_was_stored_already(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    envs = _many(20, "dup")
    await store.write_batch(envs[:10])
    journal = SpillJournal(tmp_path / "j")
    await journal.spill([m.encode(e) for e in envs])
    await journal.spill([m.encode(e) for e in envs[5:]])  # spilled twice (a redelivery)
    persister = HistoryPersister(bus, store, journal=journal, batch_interval_s=0.01)
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _wait_for(lambda: not journal.pending, 10)
    assert await _stored(store) == {e.msg_id: e for e in envs}
    assert journal.replayed == 10 and journal.replay_duplicates == 25


class _RefusingStore:
    """Refuses (as the database does for a NUL) any batch holding a message whose msg_id starts with
    ``bad``; counts the rows it was asked to write."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    async def write_batch(
        self, envelopes: Sequence[m.Envelope[m.Payload]], raw: Sequence[bytes] | None = None
    ) -> int:
        if any(e.msg_id.startswith("bad") for e in envelopes):
            raise StoreRejectedError("history store refused write: invalid byte sequence 0x00")
        return await self.store.write_batch(envelopes, raw)


async def test_a_refused_message_is_set_aside_with_its_error_and_counted(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    journal = SpillJournal(tmp_path / "j")
    envs = _many(30, "ok")
    bad = msgspec.structs.replace(envs[3], msg_id="bad-1")
    # one refused message in a replayed segment, one arriving live
    await journal.spill([m.encode(e) for e in [*envs[:10], bad]])
    persister = HistoryPersister(bus, _RefusingStore(store), journal=journal, batch_interval_s=0.05)
    bad_live = msgspec.structs.replace(envs[4], msg_id="bad-2")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _wait_for(lambda: not journal.pending, 10)
        await _publish(bus, [*envs[10:20], bad_live, *envs[20:]])
        await _wait_for(lambda: persister.acked == 21, 10)
        assert await persister.wait_idle(5)
    assert await _stored(store) == {e.msg_id: e for e in envs}
    assert persister.rejected == 2 and persister.healthy
    assert persister.last_rejected is not None and "bad-2" in persister.last_rejected
    aside = [json.loads(line) for line in (tmp_path / "j" / REJECTED_FILE).read_text().splitlines()]
    assert [(a["msg_id"], a["subject"]) for a in aside] == [
        ("bad-1", envs[3].subject),
        ("bad-2", envs[4].subject),
    ]
    assert all("0x00" in a["error"] for a in aside)
    assert m.decode(aside[1]["data"].encode()).msg_id == "bad-2"


async def test_a_journal_that_cannot_be_written_falls_back_to_holding(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    journal = SpillJournal(blocker / "journal")  # cannot be created: a file is in the way
    switch = _SwitchableStore(store)
    switch.down = True
    persister = HistoryPersister(
        bus, switch, journal=journal, batch_interval_s=0.01, retry_initial_s=0.02, retry_max_s=0.05
    )
    envs = _many(12, "hold")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: switch.attempts >= 3, 10)
        assert persister.acked == 0 and persister.backlog == 12 and not persister.healthy
        switch.down = False
        await _wait_for(lambda: persister.acked == 12, 10)
    assert persister.journal is None  # disabled at start, said so in the log
    assert await _stored(store) == {e.msg_id: e for e in envs}


async def test_a_failing_spill_holds_the_batch_and_says_why(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    directory = tmp_path / "j"
    journal = SpillJournal(directory)
    switch = _SwitchableStore(store)
    switch.down = True
    persister = HistoryPersister(
        bus, switch, journal=journal, batch_interval_s=0.01, retry_initial_s=0.02, retry_max_s=0.05
    )
    envs = _many(8, "full")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        # segments can no longer be created (a file where the directory was; root ignores modes)
        directory.rmdir()
        directory.write_text("in the way")
        try:
            await _publish(bus, envs)
            await _wait_for(lambda: persister.spill_failures >= 2, 10)
            assert persister.acked == 0 and persister.backlog == 8
            assert persister.last_error is not None and "spill journal" in persister.last_error
        finally:
            directory.unlink()
            directory.mkdir()
        switch.down = False
        await _wait_for(lambda: persister.acked == 8, 10)
    assert await _stored(store) == {e.msg_id: e for e in envs}


async def test_journal_segments_rotate_and_survive_reopening(tmp_path: Path) -> None:
    envs = _many(40, "rot")
    journal = SpillJournal(tmp_path / "j", segment_bytes=2000)
    for start in range(0, 40, 5):
        await journal.spill([m.encode(e) for e in envs[start : start + 5]])
    assert journal.rows_pending == 40 and journal.stats().segments > 1
    journal.close()
    again = SpillJournal(tmp_path / "j")
    again.open()
    assert again.rows_pending == 40
    read = [env.msg_id for path in again.sealed_segments() for env, _raw in again.read_segment(path)]
    assert read == [e.msg_id for e in envs]
    for path in again.sealed_segments():
        lines = len(again.read_segment(path))
        again.drop_segment(path, inserted=lines, lines=lines)
    assert not again.pending and again.replayed == 40 and _segments(tmp_path / "j") == []
    with pytest.raises(InputError):
        SpillJournal(tmp_path / "x", segment_bytes=0)
    with pytest.raises(InputError, match="spill_after_failures"):
        HistoryPersister(MemoryBus(), _SwitchableStore(None), spill_after_failures=0)  # type: ignore[arg-type]


async def test_an_envelope_with_newlines_is_journaled_on_one_line(tmp_path: Path) -> None:
    env = _many(1, "nl")[0]
    pretty = json.dumps(json.loads(m.encode(env)), indent=2).encode()
    journal = SpillJournal(tmp_path / "j")
    await journal.spill([pretty])
    [path] = journal.sealed_segments()
    assert path.read_bytes().count(b"\n") == 1
    [(decoded, _raw)] = journal.read_segment(path)
    assert decoded == env
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def test_segments_spilled_for_another_store_are_moved_aside_not_replayed(
    store: HistoryStore, bus: MemoryBus, tmp_path: Path
) -> None:
    directory = tmp_path / "j"
    other = SpillJournal(directory, store="postgresql+psycopg://mm:***@prod-db/intents")
    foreign_envs = _many(5, "prod")
    await other.spill([m.encode(e) for e in foreign_envs])
    other.close()
    journal = SpillJournal(directory, store=store.url)
    persister = HistoryPersister(bus, store, journal=journal, batch_interval_s=0.01)
    envs = _many(5, "mine")
    async with running(persister):
        await asyncio.wait_for(persister.subscribed.wait(), 5)
        await _publish(bus, envs)
        await _wait_for(lambda: persister.acked == 5, 10)
    assert await _stored(store) == {e.msg_id: e for e in envs}  # nothing of the other store's
    [aside] = list(directory.glob("foreign-*"))
    assert len(_segments(aside)) == 1
    assert (aside / "STORE").read_text().strip() == "postgresql+psycopg://mm:***@prod-db/intents"
    assert (directory / "STORE").read_text().strip() == store.url
    stats = journal.stats()
    assert (
        stats.foreign_segments == 1
        and stats.last_error is not None
        and "moved to foreign-" in stats.last_error
    )
    # the same store again: its own segments are kept for replay
    await journal.spill([m.encode(_many(1, "again")[0])])
    journal.close()
    reopened = SpillJournal(directory, store=store.url)
    reopened.open()
    assert reopened.rows_pending == 1 and reopened.foreign_segments == 0


async def test_every_id_the_edge_accepts_can_be_stored_and_nothing_else_is_accepted(
    store: HistoryStore,
) -> None:
    every_allowed = "".join(chr(c) for c in range(0x21, 0x7F))
    assert m.is_valid_id(every_allowed) and m.is_valid_id("x" * m.MAX_ID_CHARS)
    refused = [chr(c) for c in range(0x80) if not 0x21 <= c <= 0x7E] + [
        "\x80",
        "\xa0",
        "é",
        "\ud800",
        "\u2028",
    ]
    assert not [ch for ch in refused if m.is_valid_id(f"q{ch}q")]
    env = _many(1, "edge")[0]
    assert isinstance(env.payload, m.SwapRequest)
    payload = msgspec.structs.replace(env.payload, quote_id=every_allowed, partner_id=every_allowed)
    edge = msgspec.structs.replace(env, msg_id="swap:" + every_allowed[:150], payload=payload)
    assert await store.write_batch([edge], [m.encode(edge)]) == 1
    [row] = await store.recent("swap_demand_events", limit=10)
    assert row.envelope == edge
