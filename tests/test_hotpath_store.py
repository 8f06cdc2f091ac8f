"""History-store writes on the hot path's side: bus bytes stored as they are, large batches chunked."""

from __future__ import annotations

import sqlalchemy as sa

from intents_mm import messages as m
from intents_mm.clock import ManualClock
from intents_mm.storage import schema
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import WRITE_CHUNK, HistoryStore

T0 = 1_760_000_000_000_000_000


def swap(i: int) -> m.Envelope[m.Payload]:
    payload = m.SwapRequest(
        quote_id=f"q-{i}",
        asset_in="nep141:btc.omft.near",
        asset_out="nep141:eure.near",
        exact_amount_in=5000 + i,
        min_deadline_ms=30_000,
        received_ts_ns=T0,
        relay_deadline_ns=T0 + 3 * 10**9,
    )
    env: m.Envelope[m.Payload] = m.new_envelope(
        m.SWAP_REQUEST, payload, clock=ManualClock(T0), msg_id=f"swap:q-{i}"
    )
    return env


async def test_raw_bytes_are_stored_as_they_travelled_and_big_batches_are_chunked(store_url: str) -> None:
    await migrate(store_url)
    store = HistoryStore(store_url)
    await store.connect()
    try:
        envs = [swap(i) for i in range(WRITE_CHUNK * 2 + 5)]
        raw = [m.encode(e) for e in envs]
        raw[0] = raw[0].replace(b'"payload":{', b'"payload":{ ', 1)  # same JSON, other bytes
        assert m.decode(raw[0]) == envs[0]
        assert await store.write_batch(envs, raw) == len(envs)
        assert await store.write_batch(envs, raw) == 0  # idempotent by msg_id
        table = schema.EVENT_TABLES["swap_demand_events"]
        async with store._require_engine().connect() as conn:
            rows = (await conn.execute(sa.select(table.c.msg_id, sa.cast(table.c.payload, sa.Text)))).all()
        stored = {str(r[0]): str(r[1]) for r in rows}
        assert len(stored) == len(envs)
        assert m.decode(stored["swap:q-0"].encode()) == envs[0]
        if store.dialect == "sqlite":  # PostgreSQL's jsonb normalises the text
            assert stored["swap:q-0"].encode() == raw[0]
    finally:
        await store.close()
