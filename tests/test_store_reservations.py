"""The store's reads for the reservation book (strategy-engine's restart rebuild and history-writer's
settlement matching), on SQLite and PostgreSQL, and the book rebuilt from what they return."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from intents_mm import messages as m
from intents_mm.clock import ManualClock
from intents_mm.domain.assets import BTC, BTC_EURE, EURE
from intents_mm.services.strategy_engine import RESERVATION_MARGIN_NS, book_from_records
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

S = 10**9
MS = 10**6
T0 = 1_780_000_000 * S
B, E = BTC.token_id, EURE.token_id


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url, clock=ManualClock(T0))
    await st.connect()
    try:
        yield st
    finally:
        await st.close()


def env(subject: str, payload: Any, ts_ns: int, msg_id: str) -> m.Envelope[m.Payload]:
    cls, version = m.SUBJECT_TYPES[subject]
    return m.Envelope(
        subject=subject, type=cls.__name__, version=version, msg_id=msg_id, ts_ns=ts_ns, payload=payload
    )


def command(n: int) -> m.ExecuteTrade:
    return m.ExecuteTrade(
        command_id=f"cmd:{n}",
        decision_id=f"decision:{n}",
        quote_id=str(n),
        asset_in=E,
        asset_out=B,
        amount_in=3 * 10**18,
        amount_out=1000 * n,
        exact_side="in",
        min_deadline_ms=50_000,
        relay_deadline_ns=T0,
        reference_mid=Decimal(60_000),
    )


def result(n: int, outcome: str, *, signed: bool) -> m.TradeResult:
    return m.TradeResult(
        command_id=f"cmd:{n}",
        quote_id=str(n),
        outcome=outcome,  # type: ignore[arg-type]
        quote_hash=f"h{n}" if signed else None,
        nonce_b64="bm9uY2U=" if signed else None,
        deadline_ns=T0 + 150 * S if signed else None,
        amount_in=3 * 10**18,
        amount_out=1000 * n,
        asset_in=E,
        asset_out=B,
    )


def snapshot(
    block: int, settled: list[str], landed: list[str], *, stale: bool = False
) -> m.InventorySnapshot:
    return m.InventorySnapshot(
        account_id="mm.near",
        credited={B: 100_000, E: 10**20},
        pending_deposits={},
        inflight_withdrawals={},
        block_height=block,
        read_ts_ns=T0,
        stale=stale,
        settled_quote_hashes=settled,
        landed_withdrawals=landed,
    )


def withdraw(action_id: str, status: m.LiquidityActionStatus, tx: str | None = None) -> m.LiquidityAction:
    return m.LiquidityAction(
        action_id=action_id, kind="withdraw", asset_id=B, amount=5000, status=status, near_tx_hash=tx
    )


def status(n: int) -> m.QuoteStatus:
    return m.QuoteStatus(quote_hash=f"h{n}", intent_hash=f"i{n}", tx_hash=f"t{n}", received_ts_ns=T0)


async def test_live_signed_result_lookup_follows_the_one_definition(store: HistoryStore) -> None:
    await store.write_batch(
        [
            env(m.TRADE_RESULT, result(1, "accepted", signed=True), T0, "r1"),
            env(m.TRADE_RESULT, result(2, "error", signed=True), T0, "r2"),  # reply timeout: live
            env(m.TRADE_RESULT, result(3, "rejected", signed=True), T0, "r3"),  # refused: not live
        ]
    )
    assert (got := await store.live_signed_trade_result("h1")) is not None and got.outcome == "accepted"
    assert (got := await store.live_signed_trade_result("h2")) is not None and got.outcome == "error"
    assert await store.live_signed_trade_result("h3") is None
    assert await store.live_signed_trade_result("nope") is None


async def test_reservation_records_windows_and_the_rebuilt_book(store: HistoryStore) -> None:
    now = T0 + 100 * S
    commands_since, settled_since = now - 80 * S, now - 600 * S
    old, recent = now - 300 * S, now - 20 * S
    await store.write_batch(
        [
            env(m.EXECUTE_TRADE, command(1), old, "c1"),  # outside the command window
            env(m.EXECUTE_TRADE, command(2), recent, "c2"),  # accepted, still live
            env(m.EXECUTE_TRADE, command(3), recent, "c3"),  # reply timed out: live
            env(m.EXECUTE_TRADE, command(4), recent, "c4"),  # rejected: released
            env(m.EXECUTE_TRADE, command(5), recent, "c5"),  # no result yet: live until its deadline
            env(m.EXECUTE_TRADE, command(6), recent, "c6"),  # settled, confirmed by a snapshot
            env(m.EXECUTE_TRADE, command(7), recent, "c7"),  # settled, not yet shown
            env(m.TRADE_RESULT, result(1, "accepted", signed=True), old, "r1"),
            env(m.TRADE_RESULT, result(2, "accepted", signed=True), recent, "r2"),
            env(m.TRADE_RESULT, result(3, "error", signed=True), recent, "r3"),
            env(m.TRADE_RESULT, result(4, "rejected", signed=True), recent, "r4"),
            env(m.TRADE_RESULT, result(6, "accepted", signed=True), recent, "r6"),
            env(m.TRADE_RESULT, result(7, "accepted", signed=True), recent, "r7"),
            env(m.QUOTE_STATUS, status(1), old, "s1"),  # settled long ago, never shown
            env(m.QUOTE_STATUS, status(6), recent, "s6"),
            env(m.QUOTE_STATUS, status(7), recent, "s7"),
            env(m.INVENTORY_SNAPSHOT, snapshot(40, ["h6"], ["wd-landed"]), recent + 1, "i1"),
            env(m.INVENTORY_SNAPSHOT, snapshot(41, ["h7"], [], stale=True), recent + 2, "i2"),
            env(m.LIQUIDITY_ACTION, withdraw("wd-open", "requested"), recent, "w1"),
            env(m.LIQUIDITY_ACTION, withdraw("wd-landed", "requested"), recent, "w2"),
            env(m.LIQUIDITY_ACTION, withdraw("wd-landed", "submitted", tx="tx"), recent, "w3"),
            env(m.LIQUIDITY_ACTION, withdraw("wd-failed", "requested"), recent, "w4"),
            env(m.LIQUIDITY_ACTION, withdraw("wd-failed", "failed"), recent, "w5"),
        ]
    )
    await store.upsert_settlement(
        m.Settlement(
            quote_hash="h1",
            intent_hash="i1",
            tx_hash="t1",
            command_id="cmd:1",
            quote_id="1",
            asset_in=E,
            asset_out=B,
            amount_in=3 * 10**18,
            amount_out=1000,
            settled_ts_ns=old,
        )
    )
    records = await store.reservation_records(
        commands_since_ns=commands_since, settled_since_ns=settled_since
    )
    assert [c.command_id for _, c in records.commands] == [f"cmd:{n}" for n in range(2, 8)]
    assert sorted(r.command_id for r in records.results) == ["cmd:2", "cmd:3", "cmd:4", "cmd:6", "cmd:7"]
    assert sorted(st.quote_hash for _, st in records.statuses) == ["h1", "h6", "h7"]
    assert [s.quote_hash for s in records.settlements] == ["h1"]
    assert records.confirmed_settlements == ["h6"]  # the stale snapshot counts for nothing
    assert records.landed_withdrawals == ["wd-landed"]
    assert records.latest_snapshot_block == 40
    assert [a.action_id for _, a in records.withdraw_actions] == [
        "wd-open",
        "wd-landed",
        "wd-landed",
        "wd-failed",
        "wd-failed",
    ]

    book, unmatched, floor = book_from_records(
        records, [], now, pair=BTC_EURE, buffer_ms=10_000, grace_ns=RESERVATION_MARGIN_NS
    )
    live = dict(book.live)
    assert sorted(live) == ["cmd:1", "cmd:2", "cmd:3", "cmd:5", "cmd:7"]
    assert live["cmd:1"].filled_ns == old and live["cmd:7"].filled_ns is not None  # filled, unconfirmed
    assert live["cmd:2"].filled_ns is None and live["cmd:2"].expires_ns == T0 + 150 * S
    assert live["cmd:5"].quote_hash is None and live["cmd:5"].expires_ns == recent + 60 * S
    assert book.reserved_out(B) == 1000 * (1 + 2 + 3 + 5 + 7)
    assert sorted(book.holds) == ["wd-open"] and book.held(B) == 5000
    assert book.available(B, 100_000) == 100_000 - 18_000 - 5000
    assert book.outstanding_eure() == 9  # three unfilled quotes of 3 EURe each (cmd 2, 3, 5)
    assert unmatched == {} and floor == 40
    # the executor ledger names the hash of a command whose result was never stored
    book, _unmatched, _ = book_from_records(
        records, [("cmd:5", "h5", "n", now + 30 * S)], now, pair=BTC_EURE, buffer_ms=10_000, grace_ns=0
    )
    assert book.live["cmd:5"].quote_hash == "h5" and book.command_for("h5") == "cmd:5"
    # past the deadlines (and the grace) only the fills waiting for a confirming snapshot remain
    later = now + 200 * S
    book, _unmatched, _ = book_from_records(records, [], later, pair=BTC_EURE, buffer_ms=10_000, grace_ns=0)
    assert sorted(book.live) == ["cmd:1", "cmd:7"]
