"""Programmatic Alembic migrations and store URL resolution, for PostgreSQL and SQLite.

No ``alembic.ini`` is needed: :func:`migrate` builds the Alembic config in code, points it at the
packaged ``migrations`` directory and hands Alembic an open connection. On PostgreSQL the upgrade runs
in one transaction under an advisory lock, so services starting together migrate once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from intents_mm.errors import InputError, StoreError
from intents_mm.messages import encode_payload

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating (arbitrary, fixed).
_MIGRATION_LOCK_KEY: Final = 0x1A7E_575D_0000_0001

_PG_PREFIXES: Final = ("postgresql://", "postgres://", "postgresql+psycopg://")


def resolve_store_url(postgres_url: str | None, var_dir: Path) -> str:
    """The SQLAlchemy URL of the history store.

    A ``POSTGRES_URL`` such as ``postgresql://user@host/db`` or ``postgres://...`` becomes
    ``postgresql+psycopg://...`` (query parameters kept). ``None`` or an empty value selects the
    embedded SQLite file ``<var_dir>/history.sqlite3`` (the directory is created). A SQLite URL
    (``sqlite:///path`` or ``sqlite+aiosqlite:///path``) is accepted as is, with the async driver.
    Anything else raises :class:`InputError` naming ``POSTGRES_URL``.
    """
    if postgres_url is None or not postgres_url.strip():
        var_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{var_dir.resolve() / 'history.sqlite3'}"
    url = postgres_url.strip()
    for prefix in _PG_PREFIXES:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not rest.strip("/"):
                raise InputError("POSTGRES_URL names no host or database")
            return "postgresql+psycopg://" + rest
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix) and len(url) > len(prefix):
            return "sqlite+aiosqlite:///" + url[len(prefix) :]
    scheme = url.split("://", 1)[0] if "://" in url else "(none)"
    raise InputError(
        f"POSTGRES_URL must look like postgresql://user@host:5432/db (scheme {scheme!r} is not supported)"
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<invalid store url>"


def _json_serialize(value: Any) -> str:
    return encode_payload(value).decode()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for the store: JSON via msgspec, pre-ping, bounded connect time, SQLite WAL."""
    try:
        parsed = sa.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise InputError(f"invalid history store URL {redact_url(url)}") from None
    kwargs: dict[str, Any] = {"json_serializer": _json_serialize, "pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
    elif parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        raise InputError(f"unsupported history store URL {redact_url(url)}")
    try:
        engine = create_async_engine(url, **kwargs)
    except (sa_exc.ArgumentError, ImportError) as exc:
        raise InputError(f"cannot use history store URL {redact_url(url)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no history store migrations are packaged")
    return head


def one_line(exc: BaseException) -> str:
    """A library error as one short line, without SQL text or bound parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(exc).__name__
    return first[:300]


async def current_revision(url: str) -> str | None:
    """The revision the store at ``url`` is migrated to, or ``None`` for an empty database."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise StoreError(f"history store {redact_url(url)} unavailable: {one_line(exc)}") from None
    finally:
        await engine.dispose()


async def migrate(url: str) -> list[str]:
    """Upgrade the store at ``url`` to the head revision; returns the revisions applied, oldest first.

    Running it on an up-to-date store applies nothing and returns ``[]``. Raises :class:`StoreError`
    when the database is unreachable or a migration fails (the transaction is rolled back on
    PostgreSQL).
    """
    engine = create_engine(url)
    applied: list[str] = []

    def record(*, step: Any, **_kw: Any) -> None:
        if step.is_upgrade:
            applied.extend(step.up_revision_ids)

    def upgrade(sync_conn: sa.Connection) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["on_version_apply"] = [record]
        command.upgrade(cfg, "head")

    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            await conn.run_sync(upgrade)
    except (sa_exc.SQLAlchemyError, OSError) as exc:
        raise StoreError(f"history store migration on {redact_url(url)} failed: {one_line(exc)}") from None
    finally:
        await engine.dispose()
    return applied
