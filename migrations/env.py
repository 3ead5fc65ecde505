"""Alembic environment: async engines, the URL from the application's settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from gemini_backend.config import Settings
from gemini_backend.core.db import create_engine
from gemini_backend.models import metadata
from gemini_backend.search.schema import is_search_object

config = context.config


def _settings() -> Settings:
    given = config.attributes.get("settings")
    return given if isinstance(given, Settings) else Settings()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
    )


def _include_name(name: str | None, type_: str, _parents: dict[str, str | None]) -> bool:
    # The search index is migration 0015's, not the models' (search/schema.py).
    return not is_search_object(name, type_)


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            _check_foreign_keys(connection)


def _check_foreign_keys(connection: Connection) -> None:
    """SQLite migrates with foreign keys off (core.db.create_engine): a row left pointing at
    nothing fails the migration, in its transaction."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the migration left rows with broken foreign keys: {broken[:10]}")


async def _run_async() -> None:
    engine = create_engine(_settings(), foreign_keys=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_settings().resolved_database_url,
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
    else:
        asyncio.run(_run_async())
