"""The trade executor's signed-command ledger file and its store mirror (HistoryStore batch methods)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intents_mm.clock import ManualClock
from intents_mm.services.executor_ledger import LedgerEntry, LedgerError, SignedLedger
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

S = 1_000_000_000
T0 = 1_700_000_000 * S


def entry(command_id: str, ts: int) -> LedgerEntry:
    return LedgerEntry(command_id, f"hash-{command_id}", "bm9uY2U=", ts + 60 * S, ts)


def failing(ledger: SignedLedger) -> bool:
    return ledger.write_failing  # a call: mypy does not narrow it from an earlier assert


def dirty(ledger: SignedLedger) -> bool:
    return ledger._dirty


def test_append_is_read_back_after_reopen_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "x" / "signed.ledger"
    ledger = SignedLedger(path, clock=clock)
    assert ledger.open() == []
    ledger.append(entry("c1", T0))
    ledger.append(entry("c2", T0 + 1))
    assert "c1" in ledger and "c2" in ledger and "c3" not in ledger
    ledger.close()
    with path.open("ab") as f:
        f.write(b'["c3","h","n",1')  # a crash in the middle of a line
    again = SignedLedger(path, clock=clock)
    assert [e.command_id for e in again.open()] == ["c1", "c2"]
    assert again.skipped_lines == 1 and "c1" in again and "c3" not in again
    assert path.read_bytes().count(b"\n") == 2  # compacted: the torn line is gone
    again.close()


def test_open_keeps_only_the_lookback_and_remember_adds_ids(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "signed.ledger"
    ledger = SignedLedger(path, clock=clock, lookback_ns=100 * S)
    ledger.open()
    ledger.append(entry("old", T0))
    ledger.append(entry("new", T0 + 90 * S))
    ledger.close()
    clock.advance(150 * S)
    reopened = SignedLedger(path, clock=clock, lookback_ns=100 * S)
    assert [e.command_id for e in reopened.open()] == ["new"]
    assert "old" not in reopened
    reopened.remember("from-table", T0 + 140 * S)
    assert "from-table" in reopened and len(reopened) == 2
    reopened.close()


def test_rotation_keeps_the_lookback_in_the_two_segments(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "signed.ledger"
    ledger = SignedLedger(path, clock=clock, lookback_ns=10 * S, rotate_bytes=200)
    ledger.open()
    for i in range(40):
        ledger.append(entry(f"c{i}", T0 + i * S))
    assert ledger.rotations >= 1
    assert ledger.prev_path.exists()
    ledger.close()
    clock.advance(39 * S)
    reopened = SignedLedger(path, clock=clock, lookback_ns=10 * S)
    ids = [e.command_id for e in reopened.open()]
    assert ids == [f"c{i}" for i in range(29, 40)]  # every entry of the last 10 s survived rotation
    assert not reopened.prev_path.exists()
    reopened.close()


def test_a_failing_write_raises_and_is_reported(tmp_path: Path) -> None:
    ledger = SignedLedger(tmp_path / "signed.ledger", clock=ManualClock(T0))
    with pytest.raises(LedgerError):
        ledger.append(entry("c0", T0))  # not open
    ledger.open()
    fd = ledger._fd
    ledger._fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(LedgerError):
            ledger.append(entry("c1", T0))
        assert ledger.write_failing and ledger.last_error and "c1" not in ledger
    finally:
        os.close(ledger._fd)
        ledger._fd = fd
    ledger.append(entry("c2", T0))
    assert failing(ledger) is False
    ledger.close()


def test_an_unopenable_ledger_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError):
        SignedLedger(blocker / "signed.ledger", clock=ManualClock(T0)).open()


def test_a_completed_append_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "signed.ledger"
    script = (
        "import os, signal\n"
        "from intents_mm.services.executor_ledger import LedgerEntry, SignedLedger\n"
        f"ledger = SignedLedger(__import__('pathlib').Path({str(path)!r}))\n"
        "ledger.open()\n"
        "ledger.append(LedgerEntry('killed', 'h', 'n', 1, 2))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert proc.returncode == -9
    assert b'"killed"' in path.read_bytes()


async def test_sync_loop_fdatasyncs_new_lines(tmp_path: Path) -> None:
    ledger = SignedLedger(tmp_path / "signed.ledger", clock=ManualClock(T0), sync_interval_s=0.01)
    ledger.open()
    task = asyncio.create_task(ledger.sync_forever())
    try:
        ledger.append(entry("c1", T0))
        assert dirty(ledger)
        for _ in range(100):
            if not dirty(ledger):
                break
            await asyncio.sleep(0.01)
        assert dirty(ledger) is False and ledger.last_error is None
    finally:
        task.cancel()
        ledger.close()


async def test_store_batch_records_and_reads_back(store_url: str) -> None:
    await migrate(store_url)
    store = HistoryStore(store_url)
    await store.connect()
    try:
        assert await store.record_signed_commands([]) == 0
        rows = [("c1", "h1", "n1", T0, T0 + 40 * S), ("c2", "h2", "n2", T0 + S, T0 + 10 * S)]
        assert await store.record_signed_commands(rows) == 2
        assert await store.record_signed_commands([*rows, ("c3", "h3", "n3", T0 + 2 * S, None)]) == 1
        assert await store.record_signed_command("c1", "x", "y") is False  # the one-row form agrees
        assert await store.signed_commands_since(T0 + S) == [("c2", T0 + S), ("c3", T0 + 2 * S)]
        assert [c for c, _ in await store.signed_commands_since(0)] == ["c1", "c2", "c3"]
        # live quotes: deadline not passed, earliest first; a record without a deadline is never live
        assert await store.live_signed_quotes(T0) == [
            ("c2", "h2", "n2", T0 + 10 * S),
            ("c1", "h1", "n1", T0 + 40 * S),
        ]
        assert await store.live_signed_quotes(T0 + 10 * S + 1) == [("c1", "h1", "n1", T0 + 40 * S)]
        assert await store.live_signed_quotes(T0 + 41 * S) == []
    finally:
        await store.close()
