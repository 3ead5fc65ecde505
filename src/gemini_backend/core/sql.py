"""Dialect-specific statements the domains share (both dialects speak ON CONFLICT)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import ClauseElement, ColumnElement, Delete, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler


def insert_for(session: AsyncSession, table: Any) -> Any:
    """An INSERT with `.on_conflict_do_update/do_nothing` for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def violates_unique(exc: IntegrityError, index: str, columns: str) -> bool:
    """Whether `exc` is a duplicate in the unique index `index` on `columns` ("table.column"):
    PostgreSQL names the index, SQLite the columns."""
    message = str(exc.orig)
    return f'"{index}"' in message or f"UNIQUE constraint failed: {columns}" in message


def bounded_delete(table: Any, key: Any, *where: ColumnElement[bool], limit: int) -> Delete:
    """DELETE of at most `limit` rows matching `where`, picked by their key in a subquery (both
    databases), so a purge of many rows is many short transactions, never one long lock.

    `where` is checked again on the rows themselves: a row updated while the DELETE waited for
    its lock (a code sent again, a guard locked) is re-read by PostgreSQL and kept."""
    return delete(table).where(key.in_(select(key).where(*where).limit(limit)), *where)


class DriverStatement:
    """A Core statement compiled once for asyncpg and run on the pooled connection's driver
    connection: the same SQL, bind casts and bind processing as SQLAlchemy's execution,
    without its per-execution work (about 100 us of CPU per statement on this machine,
    bench/README.md). Only for a statement that runs alone, outside any transaction the
    connection has begun (SQLAlchemy would not know of it), and returns one row."""

    def __init__(self, statement: ClauseElement) -> None:
        dialect = asyncpg.dialect()  # type: ignore[no-untyped-call]
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = compiled.string
        self._args: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: an expanding bind needs SQLAlchemy's execution")
            fixed = None if bind.required else bind.effective_value
            self._args.append((name, fixed, bind.type.bind_processor(dialect)))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments, in the order of the SQL's `$n`."""
        values = []
        for name, fixed, process in self._args:
            value = params[name] if fixed is None else fixed
            values.append(value if process is None else process(value))
        return values

    async def row(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        """The statement's one row (an asyncpg Record), `conn` being in autocommit. A connection
        found or left closed is invalidated (the pool replaces it, as after SQLAlchemy's own
        execution) and reported as a ConnectionError (an outage: 503)."""
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            return await driver.fetchrow(self.sql, *self.args(params))
        except Exception as exc:
            if not driver.is_closed():
                raise
            await conn.invalidate()
            raise ConnectionError("the database connection was lost") from exc
