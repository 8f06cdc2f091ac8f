"""The history store: idempotent event writes and the read queries of watch, metrics and the executor.

One :class:`HistoryStore` wraps one async SQLAlchemy engine on PostgreSQL (psycopg 3) or SQLite
(aiosqlite); the schema is :mod:`intents_mm.storage.schema`, created by
:func:`intents_mm.storage.migrate.migrate`. Every database failure surfaces as :class:`StoreError`
(one line, no SQL, no password); a write the database refuses for its data (a value out of range, a
NUL character) is the subclass :class:`StoreRejectedError`, which retrying cannot fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeVar

import msgspec
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from intents_mm import messages as m
from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.errors import InputError, StoreError
from intents_mm.storage import schema as s
from intents_mm.storage.event_writer import (
    BIND_ERRORS,
    InsertPlan,
    Params,
    SqliteWriter,
    StoreRefused,
    sqlite_path,
)
from intents_mm.storage.migrate import create_engine, head_revision, one_line, redact_url
from intents_mm.storage.types import ns_to_datetime

P = TypeVar("P", bound=m.Payload)

#: Largest number of rows per INSERT statement of :meth:`HistoryStore.write_batch`.
WRITE_CHUNK: Final = 100

#: :meth:`HistoryStore.write_batch` lets the event loop run other tasks after this many rows built.
YIELD_EVERY: Final = 16

#: Markout horizons stored per settlement, in seconds.
MARKOUT_HORIZONS_S: Final = (1, 10, 60, 300)


class ReservationRecords(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`HistoryStore.reservation_records` read back for strategy-engine's start-up rebuild.

    Lists hold ``(envelope ts_ns, payload)`` pairs in insertion order."""

    commands: list[tuple[int, m.ExecuteTrade]]
    results: list[m.TradeResult]
    statuses: list[tuple[int, m.QuoteStatus]]
    settlements: list[m.Settlement]
    confirmed_settlements: list[str]  # quote hashes some stored snapshot listed as shown
    landed_withdrawals: list[str]  # withdrawal action ids some stored snapshot listed as shown
    withdraw_actions: list[tuple[int, m.LiquidityAction]]  # kind "withdraw"
    latest_snapshot_block: int = 0  # the highest block_height of those snapshots


class StoreRejectedError(StoreError):
    """The database refused the data itself (out-of-range value, invalid text); retrying won't help."""


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One row of an event table: its ``id`` (insertion order) and the envelope it was written from."""

    id: int
    envelope: m.Envelope[m.Payload]


def _payload_columns(table: sa.Table, payload_type: type[m.Payload]) -> tuple[str, ...]:
    names = tuple(c.name for c in table.columns if c.name not in s.BASE_EVENT_COLUMNS)
    fields = set(payload_type.__struct_fields__)
    return tuple(n for n in names if n in fields)


#: subject → (table, payload attribute columns, extras function).
_WRITE_PLAN: Final = {
    subject: (table, _payload_columns(table, m.SUBJECT_TYPES[subject][0]), extras)
    for subject, (table, extras) in s.SUBJECT_TABLES.items()
}


def event_row(env: m.Envelope[m.Payload], raw: bytes | None = None) -> tuple[sa.Table, dict[str, Any]]:
    """The table and row an envelope is stored as (key columns flattened, full envelope as JSON).

    ``raw`` is the envelope's JSON as it travelled on the bus, when the caller has it: it is stored
    as it is instead of encoding the envelope again."""
    plan = _WRITE_PLAN.get(env.subject)
    if plan is None:
        raise InputError(f"no history table for subject {env.subject!r}")
    table, columns, extras = plan
    payload = env.payload
    row: dict[str, Any] = {
        "msg_id": env.msg_id,
        "ts": ns_to_datetime(env.ts_ns),
        "ts_ns": env.ts_ns,
        "payload": msgspec.Raw(raw if raw is not None else m.encode(env)),
    }
    for name in columns:
        row[name] = getattr(payload, name)
    if extras is not None:
        row.update(extras(payload))
    return table, row


def _translate(exc: BaseException, what: str) -> StoreError:
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return StoreRejectedError(f"history store refused {what}: {one_line(exc)}")
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        if isinstance(orig, InputError | TypeError | ValueError | OverflowError):
            return StoreRejectedError(f"history store refused {what}: {one_line(exc)}")
    return StoreError(f"history store {what} failed: {one_line(exc)}")


_STORE_ERRORS: Final = (sa_exc.SQLAlchemyError, OSError)


class HistoryStore:
    """Async access to the history store at ``url`` (a SQLAlchemy URL, see ``resolve_store_url``)."""

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._url = url
        self._clock = clock
        self._engine: AsyncEngine | None = None
        self._dialect: str | None = None  # parsed on first use, then read per statement
        self._plans: dict[str, InsertPlan] | None = None
        self._sqlite_writer: SqliteWriter | None = None

    @property
    def url(self) -> str:
        """The store URL with any password hidden."""
        return redact_url(self._url)

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        if self._dialect is None:
            self._dialect = sa.engine.make_url(self._url).get_backend_name()
        return self._dialect

    # ------------------------------------------------------------------------------ lifecycle

    async def connect(self, *, check: bool = True) -> None:
        """Create the engine. With ``check`` (default) the database must be reachable and migrated to
        the head revision, else :class:`StoreError`; without it, connection is deferred to first use."""
        if self._engine is None:
            engine = create_engine(self._url)
            if self.dialect == "sqlite" and self._sqlite_writer is None:
                self._sqlite_writer = SqliteWriter(sqlite_path(self._url))
            self._engine = engine
        if not check:
            return
        try:
            async with self._engine.connect() as conn:
                current = await conn.run_sync(_current_revision)
        except _STORE_ERRORS as exc:
            raise StoreError(f"history store {self.url} unavailable: {one_line(exc)}") from None
        head = head_revision()
        if current != head:
            raise StoreError(
                f"history store {self.url} is at revision {current or 'none'}, "
                f"expected {head}: migrate it first"
            )

    async def close(self) -> None:
        """Dispose of the engine and its connections; the store can be connected again."""
        writer, self._sqlite_writer = self._sqlite_writer, None
        if writer is not None:
            await writer.close()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("history store is not connected")
        return self._engine

    async def ping(self) -> bool:
        """True when the database answers a trivial query now."""
        engine = self._require_engine()
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except _STORE_ERRORS:
            return False
        return True

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # ------------------------------------------------------------------------------ writes

    async def write_batch(
        self, envelopes: Sequence[m.Envelope[m.Payload]], raw: Sequence[bytes] | None = None
    ) -> int:
        """Insert each envelope into its subject's table, in one transaction; returns rows inserted.

        ``raw``, when given, holds each envelope's bus bytes (same order): stored without re-encoding.
        Each table's rows go in one ``executemany`` of a precompiled INSERT
        (:mod:`intents_mm.storage.event_writer`): on SQLite on the store's writer thread, on
        PostgreSQL in statements of at most ``WRITE_CHUNK`` rows, so the event loop runs between them.

        Idempotent: an envelope whose ``msg_id`` is already stored (or repeated in the batch) is
        skipped (``ON CONFLICT (msg_id) DO NOTHING``). Raises :class:`InputError` for a subject with
        no table, :class:`StoreRejectedError` when the database refuses a value and
        :class:`StoreError` when it cannot be reached; in both cases nothing of the batch is stored.
        """
        if not envelopes:
            return 0
        if raw is not None and len(raw) != len(envelopes):
            raise InputError("write_batch: raw must hold one entry per envelope")
        engine = self._require_engine()
        plans = self._insert_plans(engine)
        by_table: dict[str, tuple[InsertPlan, list[Params]]] = {}
        seen: set[tuple[str, str]] = set()
        for i, env in enumerate(envelopes):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)  # let a quote that arrived meanwhile through
            table, row = event_row(env, raw[i] if raw is not None else None)
            key = (table.name, env.msg_id)
            if key in seen:
                continue
            seen.add(key)
            plan = plans[table.name]
            try:
                params = plan.params(row)
            except BIND_ERRORS as exc:
                raise StoreRejectedError(
                    f"history store refused {env.subject} {env.msg_id}: {one_line(exc)}"
                ) from None
            by_table.setdefault(table.name, (plan, []))[1].append(params)
        statements = [(plan.sql, rows) for plan, rows in by_table.values()]
        if self._sqlite_writer is not None:
            try:
                return await self._sqlite_writer.write(statements)
            except StoreRefused as exc:
                raise StoreRejectedError(
                    f"history store refused write of {len(envelopes)} messages: {exc}"
                ) from None
            except StoreError as exc:
                raise StoreError(f"history store write of {len(envelopes)} messages failed: {exc}") from None
        inserted = 0
        try:
            async with engine.begin() as conn:
                for sql, rows in statements:
                    for start in range(0, len(rows), WRITE_CHUNK):
                        result = await conn.exec_driver_sql(sql, rows[start : start + WRITE_CHUNK])
                        inserted += result.rowcount
        except _STORE_ERRORS as exc:
            raise _translate(exc, f"write of {len(envelopes)} messages") from None
        return inserted

    def _insert_plans(self, engine: AsyncEngine) -> dict[str, InsertPlan]:
        if self._plans is None:
            dialect = engine.dialect
            self._plans = {table.name: InsertPlan(table, dialect) for table, _ in s.SUBJECT_TABLES.values()}
        return self._plans

    async def put_state(self, key: str, value: Any) -> None:
        """Store a small JSON-safe setting under ``key`` (Decimals are stored as strings)."""
        now = self._clock.now_ns()
        row = {
            "key": key,
            "value": msgspec.Raw(m.encode_payload(value)),
            "updated_ts": ns_to_datetime(now),
            "updated_ts_ns": now,
        }
        stmt = self._insert(s.service_state).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "value": stmt.excluded.value,
                "updated_ts": stmt.excluded.updated_ts,
                "updated_ts_ns": stmt.excluded.updated_ts_ns,
            },
        )
        await self._execute_write(stmt, f"state write for {key!r}")

    async def get_state(self, key: str) -> Any:
        """The JSON value stored under ``key`` (dicts, lists, str, int, bool, None), or ``None``."""
        stmt = sa.select(sa.cast(s.service_state.c.value, sa.Text)).where(s.service_state.c.key == key)
        rows = await self._fetch(stmt, f"state read for {key!r}")
        if not rows:
            return None
        return msgspec.json.decode(rows[0][0])

    async def record_signed_command(self, command_id: str, quote_hash: str, nonce_b64: str) -> bool:
        """Record that ``command_id`` was signed; False (and nothing changed) if it already was.

        This is the executor's "signed at most once" ledger: ``command_id`` is the primary key.
        """
        now = self._clock.now_ns()
        stmt = (
            self._insert(s.signed_commands)
            .values(
                command_id=command_id,
                quote_hash=quote_hash,
                nonce=nonce_b64,
                signed_ts=ns_to_datetime(now),
                signed_ts_ns=now,
            )
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(s.signed_commands.c.command_id)
        )
        rows = await self._execute_write(stmt, f"signed command record for {command_id!r}")
        return len(rows) == 1

    async def record_signed_commands(self, entries: Sequence[tuple[str, str, str, int, int | None]]) -> int:
        """Record many ``(command_id, quote_hash, nonce_b64, signed_ts_ns, deadline_ns)`` at once, in one
        transaction; ids already recorded are left as they are. Returns how many were new.

        The trade executor mirrors its local append-only ledger here asynchronously (see
        ``docs/services/trade-executor.md``); :meth:`record_signed_command` stays the one-row form.
        """
        if not entries:
            return 0
        rows = [
            {
                "command_id": command_id,
                "quote_hash": quote_hash,
                "nonce": nonce_b64,
                "signed_ts": ns_to_datetime(signed_ts_ns),
                "signed_ts_ns": signed_ts_ns,
                "deadline_ns": deadline_ns,
            }
            for command_id, quote_hash, nonce_b64, signed_ts_ns, deadline_ns in entries
        ]
        stmt = (
            self._insert(s.signed_commands)
            .on_conflict_do_nothing(index_elements=["command_id"])
            .returning(s.signed_commands.c.command_id)
        )
        engine = self._require_engine()
        try:
            async with engine.begin() as conn:
                result = await conn.execute(stmt, rows)
                return len(result.all())
        except _STORE_ERRORS as exc:
            raise _translate(exc, f"signed command records ({len(rows)})") from None

    async def record_quote_cancels(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record cancel outcomes, one row per quote (``quote_cancels``; columns as in the schema, times
        as ``ts_ns``), in one transaction."""
        if not rows:
            return
        values = [{**row, "ts": ns_to_datetime(row["ts_ns"])} for row in rows]
        engine = self._require_engine()
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.insert(s.quote_cancels), values)
        except _STORE_ERRORS as exc:
            raise _translate(exc, "write of the quote cancels") from None

    async def quote_cancels(self, *, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest cancel rows, newest first."""
        t = s.quote_cancels
        stmt = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        rows = await self._fetch(stmt, "quote cancel read")
        return [{k: v for k, v in row._mapping.items() if k != "ts"} for row in rows]

    async def live_signed_quotes(self, now_ns: int) -> list[tuple[str, str, str, int]]:
        """``(command_id, quote_hash, nonce_b64, deadline_ns)`` of the signed quotes whose deadline is
        at or after ``now_ns`` (records without a deadline are not live), earliest deadline first."""
        t = s.signed_commands
        stmt = (
            sa.select(t.c.command_id, t.c.quote_hash, t.c.nonce, t.c.deadline_ns)
            .where(t.c.deadline_ns >= now_ns)  # indexed
            .order_by(t.c.deadline_ns)
        )
        engine = self._require_engine()
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except _STORE_ERRORS as exc:
            raise _translate(exc, "read of the live signed quotes") from None
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def signed_commands_since(self, since_ns: int) -> list[tuple[str, int]]:
        """``(command_id, signed_ts_ns)`` of the commands recorded as signed at or after ``since_ns``,
        oldest first."""
        stmt = (
            sa.select(s.signed_commands.c.command_id, s.signed_commands.c.signed_ts_ns)
            .where(s.signed_commands.c.signed_ts >= ns_to_datetime(since_ns))  # indexed
            .order_by(s.signed_commands.c.signed_ts)
        )
        return [(str(row[0]), int(row[1])) for row in await self._fetch(stmt, "signed command read")]

    async def upsert_settlement(self, settlement: m.Settlement) -> bool:
        """Insert or update the settlement keyed by ``quote_hash``; True when a new row was inserted.

        On update every column takes the new value, except that a markout or reference mid given as
        ``None`` keeps the stored value (so markouts can be filled in one horizon at a time).
        """
        now = self._clock.now_ns()
        row = {
            "quote_hash": settlement.quote_hash,
            "intent_hash": settlement.intent_hash,
            "tx_hash": settlement.tx_hash,
            "command_id": settlement.command_id,
            "quote_id": settlement.quote_id,
            "asset_in": settlement.asset_in,
            "asset_out": settlement.asset_out,
            "amount_in": settlement.amount_in,
            "amount_out": settlement.amount_out,
            "reference_mid_at_fill": settlement.reference_mid_at_fill,
            "markout_1s_bps": settlement.markout_1s_bps,
            "markout_10s_bps": settlement.markout_10s_bps,
            "markout_60s_bps": settlement.markout_60s_bps,
            "markout_300s_bps": settlement.markout_300s_bps,
            "settled_ts": ns_to_datetime(settlement.settled_ts_ns),
            "settled_ts_ns": settlement.settled_ts_ns,
            "updated_ts": ns_to_datetime(now),
        }
        t = s.settlements
        stmt = self._insert(t).values(row)
        keep_if_null = {"command_id", "quote_id", "reference_mid_at_fill"} | {
            f"markout_{h}s_bps" for h in MARKOUT_HORIZONS_S
        }
        update: dict[str, Any] = {}
        for name in row:
            if name == "quote_hash":
                continue
            if name in keep_if_null:
                update[name] = sa.func.coalesce(stmt.excluded[name], t.c[name])
            else:
                update[name] = stmt.excluded[name]
        stmt2 = stmt.on_conflict_do_update(index_elements=["quote_hash"], set_=update)
        engine = self._require_engine()
        try:
            async with engine.begin() as conn:
                existing = (
                    await conn.execute(sa.select(t.c.id).where(t.c.quote_hash == row["quote_hash"]))
                ).first()
                await conn.execute(stmt2)
        except _STORE_ERRORS as exc:
            raise _translate(exc, f"settlement write for {settlement.quote_hash!r}") from None
        return existing is None

    async def _execute_write(self, stmt: sa.Executable, what: str) -> list[Any]:
        engine = self._require_engine()
        try:
            async with engine.begin() as conn:
                result = await conn.execute(stmt)
                return list(result.all()) if result.returns_rows else []
        except _STORE_ERRORS as exc:
            raise _translate(exc, what) from None

    # ------------------------------------------------------------------------------ reads

    async def _fetch(self, stmt: sa.Executable, what: str) -> list[Any]:
        engine = self._require_engine()
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(stmt)).all())
        except _STORE_ERRORS as exc:
            raise StoreError(f"history store {what} failed: {one_line(exc)}") from None

    @staticmethod
    def _event_table(table: str) -> sa.Table:
        t = s.EVENT_TABLES.get(table)
        if t is None:
            raise InputError(f"unknown history table {table!r}; one of: {', '.join(s.EVENT_TABLES)}")
        return t

    @staticmethod
    def _to_event(table: sa.Table, row: Any) -> StoredEvent:
        row_id, text = int(row[0]), str(row[1])
        try:
            env = m.decode(text.encode(), subject=s.TABLE_SUBJECTS[table.name])
        except InputError as exc:
            raise StoreError(f"{table.name} row {row_id} cannot be decoded: {exc}") from None
        return StoredEvent(id=row_id, envelope=env)

    def _event_select(self, t: sa.Table) -> sa.Select[Any]:
        return sa.select(t.c.id, sa.cast(t.c.payload, sa.Text))

    async def recent(self, table: str, limit: int = 50, since_id: int | None = None) -> list[StoredEvent]:
        """Rows of an event table in insertion order (oldest first).

        Without ``since_id``: the newest ``limit`` rows. With it: the first ``limit`` rows whose id is
        greater (tail a table by passing the last id seen). Raises :class:`InputError` for an
        unknown table or a negative limit.
        """
        if limit < 0:
            raise InputError("limit must not be negative")
        t = self._event_table(table)
        if since_id is None:
            stmt = self._event_select(t).order_by(t.c.id.desc()).limit(limit)
            rows = list(reversed(await self._fetch(stmt, f"read of {table}")))
        else:
            stmt = self._event_select(t).where(t.c.id > since_id).order_by(t.c.id).limit(limit)
            rows = await self._fetch(stmt, f"read of {table}")
        return [self._to_event(t, row) for row in rows]

    async def _latest_payload(
        self, t: sa.Table, payload_type: type[P], *where: sa.ColumnElement[bool], ts_ns_max: int | None = None
    ) -> P | None:
        stmt = self._event_select(t)
        conditions = list(where)
        if ts_ns_max is not None:
            # The ts index narrows the scan; ts_ns keeps nanosecond precision.
            conditions.append(t.c.ts <= ns_to_datetime(ts_ns_max))
            conditions.append(t.c.ts_ns <= ts_ns_max)
        stmt = stmt.where(*conditions).order_by(t.c.ts.desc(), t.c.ts_ns.desc(), t.c.id.desc()).limit(1)
        rows = await self._fetch(stmt, f"read of {t.name}")
        if not rows:
            return None
        payload = self._to_event(t, rows[0]).envelope.payload
        if not isinstance(payload, payload_type):
            raise StoreError(f"{t.name} holds a {type(payload).__name__}, expected {payload_type.__name__}")
        return payload

    async def live_signed_trade_result(self, quote_hash: str) -> m.TradeResult | None:
        """Our newest ``exec.trade_result`` carrying ``quote_hash`` that makes it a live signed quote
        (:func:`intents_mm.messages.is_live_signed_quote`: accepted, or an error with a quote hash and
        deadline), by an indexed lookup; None when there is none."""
        t = s.trade_execution_results
        result = await self._latest_payload(
            t, m.TradeResult, t.c.quote_hash == quote_hash, t.c.outcome.in_(("accepted", "error"))
        )
        return result if result is not None and m.is_live_signed_quote(result) else None

    async def _payloads_since(
        self, t: sa.Table, payload_type: type[P], since_ns: int, *where: sa.ColumnElement[bool]
    ) -> list[tuple[int, P]]:
        """``(ts_ns, payload)`` of the rows of ``t`` with an envelope time at or after ``since_ns``
        (the ts index narrows the scan), in insertion order."""
        stmt = (
            sa.select(t.c.id, sa.cast(t.c.payload, sa.Text), t.c.ts_ns)
            .where(t.c.ts >= ns_to_datetime(since_ns), t.c.ts_ns >= since_ns, *where)
            .order_by(t.c.id)
        )
        out: list[tuple[int, P]] = []
        for row in await self._fetch(stmt, f"read of {t.name}"):
            payload = self._to_event(t, row).envelope.payload
            if not isinstance(payload, payload_type):
                raise StoreError(
                    f"{t.name} holds a {type(payload).__name__}, expected {payload_type.__name__}"
                )
            out.append((int(row[2]), payload))
        return out

    async def reservation_records(
        self, *, commands_since_ns: int, settled_since_ns: int
    ) -> ReservationRecords:
        """Everything strategy-engine needs to rebuild its reservation book after a restart.

        Commands and results published at or after ``commands_since_ns`` (a command older than that is
        past any deadline it could carry); quote statuses, settlements, withdrawals and the inventory
        snapshots' confirmations since ``settled_since_ns`` (the fill-confirmation safety window).
        Every read is narrowed by an indexed ``ts`` (``settled_ts`` for settlements)."""
        commands = await self._payloads_since(s.execute_trade_commands, m.ExecuteTrade, commands_since_ns)
        results = await self._payloads_since(s.trade_execution_results, m.TradeResult, commands_since_ns)
        statuses = await self._payloads_since(s.quote_status_events, m.QuoteStatus, settled_since_ns)
        snaps = s.intent_inventory_snapshots
        snapshots = await self._payloads_since(
            snaps, m.InventorySnapshot, settled_since_ns, snaps.c.stale.is_(False)
        )
        actions_t = s.liquidity_actions
        actions = await self._payloads_since(
            actions_t, m.LiquidityAction, settled_since_ns, actions_t.c.kind == "withdraw"
        )
        settled = await self.settlements(limit=1_000_000, since_ts_ns=settled_since_ns)
        return ReservationRecords(
            commands=commands,
            results=[r for _, r in results],
            statuses=statuses,
            settlements=settled,
            confirmed_settlements=[h for _, snap in snapshots for h in snap.settled_quote_hashes],
            landed_withdrawals=[a for _, snap in snapshots for a in snap.landed_withdrawals],
            withdraw_actions=actions,
            latest_snapshot_block=max((snap.block_height for _, snap in snapshots), default=0),
        )

    async def latest_inventory(self) -> m.InventorySnapshot | None:
        """The newest inventory snapshot (stale or not), by envelope time."""
        return await self._latest_payload(s.intent_inventory_snapshots, m.InventorySnapshot)

    async def latest_reference_price(self) -> m.ReferencePrice | None:
        """The newest reference price message (any quality), by envelope time."""
        return await self._latest_payload(s.market_price_events, m.ReferencePrice)

    async def reference_price_at(self, ts_ns: int) -> m.ReferencePrice | None:
        """The newest reference price with a mid published at or before ``ts_ns``."""
        t = s.market_price_events
        return await self._latest_payload(t, m.ReferencePrice, t.c.mid.is_not(None), ts_ns_max=ts_ns)

    async def last_credited_snapshot_before(self, ts_ns: int) -> m.InventorySnapshot | None:
        """The newest non-stale inventory snapshot published strictly before ``ts_ns`` (PnL baseline)."""
        t = s.intent_inventory_snapshots
        return await self._latest_payload(
            t, m.InventorySnapshot, t.c.stale.is_(False), t.c.ts_ns < ts_ns, ts_ns_max=ts_ns
        )

    async def first_execute_command_ts(self) -> int | None:
        """``ts_ns`` of the first ``cmd.execute_trade`` ever stored, or ``None``."""
        t = s.execute_trade_commands
        rows = await self._fetch(
            sa.select(t.c.ts_ns).order_by(t.c.ts, t.c.ts_ns, t.c.id).limit(1),
            "read of execute_trade_commands",
        )
        return int(rows[0][0]) if rows else None

    async def settlements(
        self,
        *,
        limit: int = 100,
        since_ts_ns: int | None = None,
        missing_markouts: bool = False,
        order: Literal["oldest_first", "newest_first"] = "oldest_first",
    ) -> list[m.Settlement]:
        """Settlements ordered by ``settled_ts``.

        ``since_ts_ns`` keeps those settled at or after it; ``missing_markouts`` keeps those with at
        least one markout not yet measured.
        """
        if limit < 0:
            raise InputError("limit must not be negative")
        t = s.settlements
        stmt = sa.select(t)
        if since_ts_ns is not None:
            stmt = stmt.where(t.c.settled_ts >= ns_to_datetime(since_ts_ns), t.c.settled_ts_ns >= since_ts_ns)
        if missing_markouts:
            stmt = stmt.where(sa.or_(*(t.c[f"markout_{h}s_bps"].is_(None) for h in MARKOUT_HORIZONS_S)))
        if order == "newest_first":
            stmt = stmt.order_by(t.c.settled_ts.desc(), t.c.settled_ts_ns.desc(), t.c.id.desc())
        else:
            stmt = stmt.order_by(t.c.settled_ts, t.c.settled_ts_ns, t.c.id)
        rows = await self._fetch(stmt.limit(limit), "read of settlements")
        return [_settlement(row._mapping) for row in rows]

    async def get_settlement(self, quote_hash: str) -> m.Settlement | None:
        """The settlement of ``quote_hash``, or ``None``."""
        t = s.settlements
        rows = await self._fetch(sa.select(t).where(t.c.quote_hash == quote_hash), "read of settlements")
        return _settlement(rows[0]._mapping) if rows else None

    async def counts(self) -> dict[str, int]:
        """Rows per table, for every table of the schema."""
        engine = self._require_engine()
        try:
            async with engine.connect() as conn:
                return {name: await _count(conn, table) for name, table in s.metadata.tables.items()}
        except _STORE_ERRORS as exc:
            raise StoreError(f"history store count failed: {one_line(exc)}") from None


async def _count(conn: AsyncConnection, table: sa.Table) -> int:
    return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def _current_revision(sync_conn: sa.Connection) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _settlement(row: sa.RowMapping) -> m.Settlement:
    return m.Settlement(
        quote_hash=row["quote_hash"],
        intent_hash=row["intent_hash"],
        tx_hash=row["tx_hash"],
        command_id=row["command_id"],
        quote_id=row["quote_id"],
        asset_in=row["asset_in"],
        asset_out=row["asset_out"],
        amount_in=row["amount_in"],
        amount_out=row["amount_out"],
        reference_mid_at_fill=row["reference_mid_at_fill"],
        markout_1s_bps=row["markout_1s_bps"],
        markout_10s_bps=row["markout_10s_bps"],
        markout_60s_bps=row["markout_60s_bps"],
        markout_300s_bps=row["markout_300s_bps"],
        settled_ts_ns=row["settled_ts_ns"],
    )
