"""History store on SQLite and PostgreSQL: migrations, idempotent writes, exact money, queries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import free_port
from intents_mm import messages as m
from intents_mm.clock import ManualClock
from intents_mm.errors import InputError, StoreError
from intents_mm.storage import schema
from intents_mm.storage.migrate import (
    create_engine,
    current_revision,
    head_revision,
    migrate,
    resolve_store_url,
)
from intents_mm.storage.store import HistoryStore, StoreRejectedError, event_row
from intents_mm.storage.types import Amount, Price, datetime_to_ns, ns_to_datetime
from test_messages_samples import BTC, EURE, T0, U128_MAX, sample_envelopes, sample_payloads

EXPECTED_TABLES = {
    "swap_demand_events",
    "market_price_events",
    "intent_inventory_snapshots",
    "portfolio_metrics_snapshots",
    "liquidity_actions",
    "liquidity_state_snapshots",
    "trade_decisions",
    "execute_trade_commands",
    "trade_execution_results",
    "quote_status_events",
    "operator_actions",
    "settlements",
    "service_state",
    "signed_commands",
    "quote_cancels",
    "dead_letters",
}


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[HistoryStore]:
    await migrate(store_url)
    st = HistoryStore(store_url, clock=ManualClock(T0))
    await st.connect()
    try:
        yield st
    finally:
        await st.close()


async def _table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            names: list[str] = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    finally:
        await engine.dispose()
    return set(names)


def _subject_table(subject: str) -> str:
    return schema.SUBJECT_TABLES[subject][0].name


def _with(env: m.Envelope[m.Payload], **changes: Any) -> m.Envelope[m.Payload]:
    return msgspec.structs.replace(env, **changes)


# ------------------------------------------------------------------------------------ migrations


async def test_migrate_creates_every_table(store_url: str) -> None:
    assert await current_revision(store_url) is None
    assert await migrate(store_url) == ["0001", "0002", "0003", "0004"]
    assert await _table_names(store_url) == EXPECTED_TABLES | {"alembic_version"}
    assert await current_revision(store_url) == head_revision() == "0004"


async def test_migrate_twice_is_a_no_op(store_url: str) -> None:
    assert await migrate(store_url) == ["0001", "0002", "0003", "0004"]
    assert await migrate(store_url) == []
    assert await _table_names(store_url) == EXPECTED_TABLES | {"alembic_version"}


async def test_migration_matches_the_schema_module(store_url: str) -> None:
    await migrate(store_url)
    engine = create_engine(store_url)
    try:
        async with engine.connect() as conn:
            diffs: list[Any] = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), schema.metadata
                )
            )
    finally:
        await engine.dispose()
    assert diffs == []


async def test_postgres_column_types(pg_url: str) -> None:
    await migrate(pg_url)
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT column_name, data_type, numeric_precision, numeric_scale "
                        "FROM information_schema.columns WHERE table_name = 'trade_decisions'"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    types = {r[0]: (r[1], r[2], r[3]) for r in rows}
    assert types["amount_in"] == ("numeric", 39, 0)
    assert types["reference_mid"] == ("numeric", 38, 18)
    assert types["payload"][0] == "jsonb"
    assert types["ts"][0] == "timestamp with time zone"
    assert types["ts_ns"][0] == "bigint"


async def test_connect_refuses_an_unmigrated_store(store_url: str) -> None:
    st = HistoryStore(store_url)
    with pytest.raises(StoreError, match="revision none, expected 0004"):
        await st.connect()
    await st.close()


async def test_unreachable_postgres_is_a_store_error() -> None:
    url = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{free_port()}/nope"
    with pytest.raises(StoreError) as info:
        await migrate(url)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    st = HistoryStore(url)
    with pytest.raises(StoreError, match="unavailable"):
        await st.connect()
    await st.connect(check=False)
    assert await st.ping() is False
    with pytest.raises(StoreError) as info:
        await st.write_batch(sample_envelopes()[:1])
    assert not isinstance(info.value, StoreRejectedError)
    assert "s3cret" not in str(info.value)
    await st.close()


def test_resolve_store_url(tmp_path: Path) -> None:
    assert (
        resolve_store_url("postgresql://u:p@db:5432/mm?sslmode=require", tmp_path)
        == "postgresql+psycopg://u:p@db:5432/mm?sslmode=require"
    )
    assert resolve_store_url("postgres://u@db/mm", tmp_path) == "postgresql+psycopg://u@db/mm"
    assert resolve_store_url(" postgresql+psycopg://u@db/mm ", tmp_path) == "postgresql+psycopg://u@db/mm"
    var = tmp_path / "var" / "deep"
    assert resolve_store_url(None, var) == f"sqlite+aiosqlite:///{var.resolve()}/history.sqlite3"
    assert var.is_dir()
    assert resolve_store_url("", var).endswith("/history.sqlite3")
    assert resolve_store_url("sqlite:////x/y.db", var) == "sqlite+aiosqlite:////x/y.db"
    for bad in ("mysql://u@h/db", "postgresql://", "localhost:5432"):
        with pytest.raises(InputError, match="POSTGRES_URL"):
            resolve_store_url(bad, var)


# ------------------------------------------------------------------------------------ writes


async def test_write_every_subject_and_read_back_equal(store: HistoryStore) -> None:
    envs = sample_envelopes()
    assert await store.write_batch(envs) == len(m.ALL_SUBJECTS)
    for env in envs:
        rows = await store.recent(_subject_table(env.subject))
        assert [r.envelope for r in rows] == [env]
    counts = await store.counts()
    assert set(counts) == EXPECTED_TABLES
    assert all(counts[_subject_table(s)] == 1 for s in m.ALL_SUBJECTS)
    assert counts["settlements"] == counts["service_state"] == counts["signed_commands"] == 0


def test_every_column_is_filled_from_its_envelope() -> None:
    for env in sample_envelopes():
        table, row = event_row(env)
        assert set(row) == {c.name for c in table.columns} - {"id"}, table.name
        assert table is schema.SUBJECT_TABLES[env.subject][0]


async def test_replay_inserts_nothing(store: HistoryStore) -> None:
    envs = sample_envelopes()
    assert await store.write_batch(envs) == len(envs) == 12
    assert await store.write_batch(envs) == 0
    assert await store.write_batch(list(reversed(envs))) == 0
    # a fresh id among replays is still inserted, duplicates inside one batch count once
    extra = _with(envs[0], msg_id="fresh")
    assert await store.write_batch([envs[0], extra, extra, envs[1]]) == 1
    counts = await store.counts()
    assert counts["swap_demand_events"] == 2
    assert sum(counts[_subject_table(s)] for s in m.ALL_SUBJECTS) == 13


async def test_flattened_columns_hold_exact_values(store: HistoryStore, store_url: str) -> None:
    await store.write_batch(sample_envelopes())
    engine = create_engine(store_url)
    try:
        async with engine.connect() as conn:
            demand = (await conn.execute(sa.select(schema.swap_demand_events))).one()._mapping
            cmd = (await conn.execute(sa.select(schema.execute_trade_commands))).one()._mapping
            price = (await conn.execute(sa.select(schema.market_price_events))).one()._mapping
            state = (await conn.execute(sa.select(schema.liquidity_state_snapshots))).one()._mapping
    finally:
        await engine.dispose()
    assert demand["exact_amount_in"] == U128_MAX and type(demand["exact_amount_in"]) is int
    assert demand["exact_amount_out"] is None
    assert demand["quote_id"] == "q-1" and demand["partner_id"] == "1click"
    assert demand["ts_ns"] == T0 + 1000
    assert datetime_to_ns(demand["ts"]) == T0 + 1000
    assert demand["ts"].utcoffset() is not None and demand["ts"].utcoffset().total_seconds() == 0
    assert cmd["amount_out"] == U128_MAX and cmd["reference_mid"] == Decimal("95123.12")
    assert price["mid"] == Decimal("95123.123456789012345678")
    assert isinstance(price["mid"], Decimal)
    assert price["quality"] == "degraded" and price["jump_detected"] is True
    assert state["pending_deposit_count"] == 1 and state["tracked_withdrawal_count"] == 1


async def test_amount_and_price_types_are_exact_on_the_engine(store_url: str) -> None:
    md = sa.MetaData()
    t = sa.Table(
        "money_check",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", Amount()),
        sa.Column("price", Price()),
    )
    values = [2**127 - 1, -(2**127), 2**128 - 1, 0, -1, 10**39 - 1]
    prices = [
        Decimal("0.000000000000000001"),
        Decimal("-99999999999999999999.5"),
        Decimal("1.0000000000000000005"),
    ]
    engine = create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(md.create_all)
            await conn.execute(sa.insert(t), [{"id": i, "amount": v} for i, v in enumerate(values)])
            await conn.execute(sa.insert(t), [{"id": 100 + i, "price": p} for i, p in enumerate(prices)])
            got = dict((await conn.execute(sa.select(t.c.id, t.c.amount).where(t.c.id < 100))).all())
            got_prices = [
                r[0] for r in (await conn.execute(sa.select(t.c.price).where(t.c.id >= 100).order_by(t.c.id)))
            ]
        assert [got[i] for i in range(len(values))] == values
        assert all(type(v) is int for v in got.values())
        # rounded half-even to 18 places on both engines
        assert got_prices == [
            Decimal("0.000000000000000001"),
            Decimal("-99999999999999999999.5"),
            Decimal("1"),
        ]
        assert all(isinstance(p, Decimal) for p in got_prices)
        for bad in (1.5, True, 10**39, "12"):
            with pytest.raises(sa.exc.StatementError):
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(t), [{"id": 999, "amount": bad}])
        for bad_price in (Decimal("NaN"), Decimal("1e20"), 1.5):
            with pytest.raises(sa.exc.StatementError):
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(t), [{"id": 998, "price": bad_price}])
    finally:
        await engine.dispose()


async def test_rejected_values_are_store_rejected_errors(store: HistoryStore) -> None:
    env = sample_envelopes()[0]
    payload = env.payload
    assert isinstance(payload, m.SwapRequest)
    # bypass message validation the way a buggy producer could: an amount with 40 digits
    bad_payload = msgspec.structs.replace(payload)
    msgspec.structs.force_setattr(bad_payload, "exact_amount_in", 10**39)
    bad = _with(env, msg_id="bad", payload=bad_payload)
    with pytest.raises(StoreRejectedError, match="refused"):
        await store.write_batch([sample_envelopes()[1], bad])
    assert (await store.counts())["quote_status_events"] == 0  # the whole batch rolled back


async def test_nul_text_is_rejected_on_postgres(pg_url: str) -> None:
    await migrate(pg_url)
    st = HistoryStore(pg_url)
    await st.connect()
    try:
        env = sample_envelopes()[0]
        payload = env.payload
        assert isinstance(payload, m.SwapRequest)
        bad = _with(env, payload=msgspec.structs.replace(payload, partner_id="a\x00b"))
        with pytest.raises(StoreRejectedError):
            await st.write_batch([bad])
    finally:
        await st.close()


async def test_unknown_subject_has_no_table(store: HistoryStore) -> None:
    env = _with(sample_envelopes()[0], subject="demand.other")
    with pytest.raises(InputError, match="no history table"):
        await store.write_batch([env])
    assert await store.write_batch([]) == 0


# ------------------------------------------------------------------------------------ reads


async def test_recent_orders_and_tails(store: HistoryStore) -> None:
    base = sample_envelopes()[1]  # quote status
    envs = [_with(base, msg_id=f"s{i}", ts_ns=T0 + i) for i in range(7)]
    await store.write_batch(envs[:4])
    await store.write_batch(envs[4:])
    rows = await store.recent("quote_status_events", limit=3)
    assert [r.envelope.msg_id for r in rows] == ["s4", "s5", "s6"]
    ids = [r.id for r in await store.recent("quote_status_events", limit=100)]
    assert ids == sorted(ids) and len(ids) == 7
    tail = await store.recent("quote_status_events", limit=2, since_id=ids[2])
    assert [r.envelope.msg_id for r in tail] == ["s3", "s4"]
    assert await store.recent("quote_status_events", since_id=ids[-1]) == []
    assert await store.recent("quote_status_events", limit=0) == []
    with pytest.raises(InputError, match="unknown history table"):
        await store.recent("settlements")
    with pytest.raises(InputError):
        await store.recent("quote_status_events", limit=-1)


def _inventory(btc: int, *, stale: bool = False) -> m.InventorySnapshot:
    return m.InventorySnapshot(
        account_id="mm.near",
        credited={BTC: btc, EURE: 10**18},
        pending_deposits={},
        inflight_withdrawals={},
        block_height=btc,
        read_ts_ns=T0,
        stale=stale,
        stale_reason="rpc timeout" if stale else None,
    )


def _price(mid: str | None) -> m.ReferencePrice:
    return m.ReferencePrice(
        pair="BTC/EUR",
        mid=None if mid is None else Decimal(mid),
        quality="ok" if mid else "stale",
        sources=[],
        fresh_sources=3,
        quorum=2,
        computed_ts_ns=T0,
    )


def _env(subject: str, payload: m.Payload, ts_ns: int, msg_id: str) -> m.Envelope[m.Payload]:
    return m.new_envelope(subject, payload, clock=ManualClock(ts_ns), msg_id=msg_id)


async def test_inventory_and_price_queries(store: HistoryStore) -> None:
    assert await store.latest_inventory() is None
    assert await store.latest_reference_price() is None
    assert await store.reference_price_at(T0) is None
    assert await store.first_execute_command_ts() is None
    sec = 1_000_000_000
    batch = [
        _env(m.INVENTORY_SNAPSHOT, _inventory(1), T0, "i1"),
        _env(m.INVENTORY_SNAPSHOT, _inventory(2), T0 + 10 * sec, "i2"),
        _env(m.INVENTORY_SNAPSHOT, _inventory(3, stale=True), T0 + 20 * sec, "i3"),
        _env(m.INVENTORY_SNAPSHOT, _inventory(4), T0 + 40 * sec, "i4"),
        _env(m.REFERENCE_PRICE, _price("100"), T0, "p1"),
        _env(m.REFERENCE_PRICE, _price("101"), T0 + 10 * sec + 1, "p2"),
        _env(m.REFERENCE_PRICE, _price(None), T0 + 20 * sec, "p3"),
    ]
    cmd = sample_payloads()[m.EXECUTE_TRADE]
    batch += [
        _env(m.EXECUTE_TRADE, cmd, T0 + 30 * sec, "c2"),
        _env(m.EXECUTE_TRADE, cmd, T0 + 25 * sec, "c1"),
    ]
    # written out of time order on purpose: queries go by envelope time, not insertion order
    await store.write_batch(list(reversed(batch)))

    latest = await store.latest_inventory()
    assert latest is not None and latest.block_height == 4
    first_cmd = await store.first_execute_command_ts()
    assert first_cmd == T0 + 25 * sec
    baseline = await store.last_credited_snapshot_before(first_cmd)
    assert baseline is not None and baseline.block_height == 2  # i3 is stale, i4 is after
    assert await store.last_credited_snapshot_before(T0) is None  # strictly before
    after_first = await store.last_credited_snapshot_before(T0 + 1)
    assert after_first is not None and after_first.block_height == 1

    price = await store.latest_reference_price()
    assert price is not None and price.mid is None and price.quality == "stale"
    at = await store.reference_price_at(T0 + 10 * sec)
    assert at is not None and at.mid == Decimal("100")  # p2 is 1 ns later
    at = await store.reference_price_at(T0 + 10 * sec + 1)
    assert at is not None and at.mid == Decimal("101")
    at = await store.reference_price_at(T0 + 30 * sec)
    assert at is not None and at.mid == Decimal("101")  # p3 has no mid
    assert await store.reference_price_at(T0 - 1) is None


async def test_state_get_put(store: HistoryStore) -> None:
    assert await store.get_state("strategy.limits") is None
    await store.put_state("strategy.limits", {"max_notional_eure": Decimal("5"), "big": 2**127})
    assert await store.get_state("strategy.limits") == {"max_notional_eure": "5", "big": 2**127}
    await store.put_state("strategy.limits", {"max_notional_eure": "7.5"})
    await store.put_state("liquidity.withdrawals_frozen", True)
    assert await store.get_state("strategy.limits") == {"max_notional_eure": "7.5"}
    assert await store.get_state("liquidity.withdrawals_frozen") is True
    await store.put_state("liquidity.withdrawals_frozen", False)
    assert await store.get_state("liquidity.withdrawals_frozen") is False
    assert (await store.counts())["service_state"] == 2


async def test_signed_commands_are_recorded_once(store: HistoryStore) -> None:
    assert await store.record_signed_command("c-1", "hash1", "bm9uY2U=") is True
    assert await store.record_signed_command("c-1", "hash2", "b3RoZXI=") is False
    assert await store.record_signed_command("c-2", "hash1", "bm9uY2U=") is True
    assert (await store.counts())["signed_commands"] == 2


async def test_signed_commands_primary_key_refuses_a_plain_duplicate(store_url: str) -> None:
    await migrate(store_url)
    engine = create_engine(store_url)
    row = {
        "command_id": "c",
        "quote_hash": "h",
        "nonce": "n",
        "signed_ts": ns_to_datetime(T0),
        "signed_ts_ns": T0,
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(schema.signed_commands), row)
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(sa.insert(schema.signed_commands), row)
    finally:
        await engine.dispose()


async def test_settlement_upsert_and_queries(store: HistoryStore) -> None:
    base = m.Settlement(
        quote_hash="qh1",
        intent_hash="ih1",
        tx_hash="tx1",
        command_id="c-1",
        quote_id="q-1",
        asset_in=BTC,
        asset_out=EURE,
        amount_in=1000,
        amount_out=U128_MAX,
        reference_mid_at_fill=Decimal("95000.5"),
        settled_ts_ns=T0 + 5,
    )
    assert await store.upsert_settlement(base) is True
    assert await store.get_settlement("qh1") == base
    later = msgspec.structs.replace
    with_1s = later(base, reference_mid_at_fill=None, markout_1s_bps=Decimal("-1.5"))
    assert await store.upsert_settlement(with_1s) is False
    got = await store.get_settlement("qh1")
    assert got is not None
    assert got.reference_mid_at_fill == Decimal("95000.5")  # kept
    assert got.markout_1s_bps == Decimal("-1.5") and got.markout_10s_bps is None
    full = later(
        base,
        markout_10s_bps=Decimal("2"),
        markout_60s_bps=Decimal("3"),
        markout_300s_bps=Decimal("4"),
    )
    await store.upsert_settlement(full)
    got = await store.get_settlement("qh1")
    assert got is not None and got.markout_1s_bps == Decimal("-1.5") and got.markout_300s_bps == Decimal("4")
    other = later(base, quote_hash="qh2", settled_ts_ns=T0 + 10)
    await store.upsert_settlement(other)
    assert [x.quote_hash for x in await store.settlements()] == ["qh1", "qh2"]
    assert [x.quote_hash for x in await store.settlements(order="newest_first")] == ["qh2", "qh1"]
    assert [x.quote_hash for x in await store.settlements(missing_markouts=True)] == ["qh2"]
    assert [x.quote_hash for x in await store.settlements(since_ts_ns=T0 + 6)] == ["qh2"]
    assert [x.quote_hash for x in await store.settlements(limit=1)] == ["qh1"]
    assert await store.get_settlement("nope") is None
    assert (await store.counts())["settlements"] == 2


async def test_ping_and_close(store: HistoryStore) -> None:
    assert await store.ping() is True
    await store.close()
    with pytest.raises(StoreError, match="not connected"):
        await store.ping()
