"""The fast write path of the history store: precompiled INSERTs, one executemany per table.

:meth:`HistoryStore.write_batch` stores every bus message; at a few hundred quotes a second that is
over a thousand rows a second, so the per-batch cost matters more than the per-row one. Going
through SQLAlchemy Core for each batch (statement cache lookup, ``insertmanyvalues`` with
``RETURNING``, a pre-ping, and on SQLite about twenty hand-offs to aiosqlite's thread per batch)
cost ~3-5 ms of CPU per batch, most of it on the event loop that also answers quotes. Here:

- :class:`InsertPlan`: each event table's ``INSERT ... ON CONFLICT (msg_id) DO NOTHING`` compiled
  once for the store's dialect, with the column order and SQLAlchemy's own bind processors for that
  dialect (the same :mod:`intents_mm.storage.types` conversions and checks as every other write, so
  what is stored is byte for byte what the Core path stored). Building a row's parameters is a
  tuple/dict comprehension; a value the types refuse raises :class:`InputError`.
- :class:`SqliteWriter`: SQLite writes run on one thread of their own, over a plain ``sqlite3``
  connection to the same file (WAL, ``synchronous=NORMAL``, 30 s busy timeout, as the engine's), one
  hand-off per batch: ``BEGIN IMMEDIATE``, one ``executemany`` per table, ``COMMIT``. ``sqlite3``
  releases the GIL while SQLite works, so the event loop keeps running. Reads and the other writes
  keep using the async engine; WAL lets them run side by side.
- PostgreSQL batches go through the engine's connection with ``exec_driver_sql`` (one
  ``executemany`` per table, no statement compilation), psycopg talks to the server on the loop.

Inserted-row counts come from the driver's ``rowcount`` (``ON CONFLICT DO NOTHING`` counts only rows
inserted), so duplicates are still reported as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from intents_mm.errors import InputError, StoreError

#: Errors a bind processor raises for a value the column refuses.
BIND_ERRORS: Final = (InputError, TypeError, ValueError, OverflowError)

Params = tuple[Any, ...] | dict[str, Any]


class StoreRefused(StoreError):
    """Raised by :class:`SqliteWriter` when SQLite refuses the data itself (mapped to a rejected write)."""


class InsertPlan:
    """One event table's idempotent INSERT, compiled for ``dialect``, and how to bind a row to it."""

    __slots__ = ("_keys", "_positional", "_processors", "sql")

    def __init__(self, table: sa.Table, dialect: Dialect) -> None:
        keys = [c.key for c in table.columns if not (c.primary_key and c.autoincrement)]
        insert = postgresql.insert(table) if dialect.name == "postgresql" else sqlite.insert(table)
        stmt = insert.on_conflict_do_nothing(index_elements=["msg_id"]).inline()
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        self.sql: str = compiled.string
        self._positional: bool = bool(compiled.positional)
        order = list(compiled.positiontup or keys) if self._positional else keys
        if sorted(order) != sorted(keys):
            raise InputError(f"insert plan of {table.name}: compiled parameters {order} != columns {keys}")
        # SQLAlchemy's own per-parameter processors for this dialect (a sequence only for tuple-valued
        # parameters, which an INSERT of plain columns does not have).
        processors = cast(dict[str, Callable[[Any], Any] | None], dict(compiled._bind_processors))
        self._keys: tuple[str, ...] = tuple(order)
        self._processors: tuple[Callable[[Any], Any] | None, ...] = tuple(processors.get(k) for k in order)

    @property
    def keys(self) -> tuple[str, ...]:
        """The column keys in the order of the statement's parameters."""
        return self._keys

    def params(self, row: dict[str, Any]) -> Params:
        """The driver parameters for ``row`` (every column key present). Raises :class:`InputError`
        (or the processor's own ``TypeError``/``ValueError``) for a value the column refuses."""
        values = [
            row[key] if proc is None or row[key] is None else proc(row[key])
            for key, proc in zip(self._keys, self._processors, strict=True)
        ]
        if self._positional:
            return tuple(values)
        return dict(zip(self._keys, values, strict=True))


def sqlite_path(url: str) -> str:
    """The database file of a SQLite URL; :class:`InputError` for an in-memory database (a second
    connection would not see it, and a history that vanishes at exit is no history)."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or "mode=memory" in database:
        raise InputError("the SQLite history store must be a file, not an in-memory database")
    return database


class SqliteWriter:
    """Runs batches of ``executemany`` on one thread with its own ``sqlite3`` connection."""

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the writer thread
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        return conn

    def _write(self, statements: Sequence[tuple[str, Sequence[Params]]]) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            inserted = 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for sql, rows in statements:
                        inserted += conn.executemany(sql, rows).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError) as exc:
                raise StoreRefused(f"{type(exc).__name__}: {exc}") from None
            except sqlite3.Error as exc:
                # The connection may be unusable (file gone, disk I/O error): open a new one next time.
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._conn = None
                raise StoreError(f"{type(exc).__name__}: {exc}") from None
            return inserted

    async def write(self, statements: Sequence[tuple[str, Sequence[Params]]]) -> int:
        """Insert every ``(sql, rows)`` in one transaction; rows inserted (duplicates not counted).

        Raises :class:`StoreRefused` when SQLite refuses a value, :class:`StoreError` otherwise."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-store-writer")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write, statements)

    def _close_conn(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    async def close(self) -> None:
        """Close the connection (after any write in progress) and stop the thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        executor.shutdown(wait=True)
