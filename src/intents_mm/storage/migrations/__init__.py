"""Alembic migrations of the history store; run them with :func:`intents_mm.storage.migrate.migrate`."""
