"""Alembic environment: runs on a connection handed over by :mod:`intents_mm.storage.migrate`.

There is no ``alembic.ini`` and no URL here: :func:`intents_mm.storage.migrate.migrate` opens the
engine (async, PostgreSQL or SQLite), takes a migration lock and passes its sync connection in
``config.attributes["connection"]``. Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context

from intents_mm.storage.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run history store migrations through intents_mm.storage.migrate.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    on_version_apply=config.attributes.get("on_version_apply", ()),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    user_module_prefix="intents_mm.storage.types.",
)
with context.begin_transaction():
    context.run_migrations()
