"""Dialect-specific statements the domains share (both dialects speak ON CONFLICT)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import ClauseElement, ColumnElement, Delete, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
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


_FROM_CALLER = object()  # a bind without a value of its own: the caller's parameter
# Each `$n`'s bind: its name, its own value (or _FROM_CALLER), its type's processor.
_Binds = list[tuple[str, Any, Callable[[Any], Any] | None]]


class DriverStatement:
    """A Core statement compiled once for its connection's dialect (asyncpg) and run on the
    pooled connection's driver connection: the same SQL, bind casts and bind processing as
    SQLAlchemy's execution, without its per-execution work (about 100 us of CPU per statement
    on this machine, bench/README.md). Only for a statement that runs alone, outside any
    transaction the connection has begun (SQLAlchemy would not know of it), and returns one
    row."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: tuple[str, _Binds] | None = None

    def _compile(self, dialect: Dialect) -> tuple[str, _Binds]:
        compiled = cast(SQLCompiler, self._statement.compile(dialect=dialect))
        binds: _Binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: an expanding bind needs SQLAlchemy's execution")
            value = _FROM_CALLER if bind.required else bind.effective_value
            binds.append((name, value, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        return compiled.string, binds

    async def row(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        """The statement's one row (an asyncpg Record), `conn` being in autocommit. As after
        SQLAlchemy's own execution, a connection cut off mid-command (cancelled) or gone is not
        pooled again, and a connection the driver calls unusable is an outage (503)."""
        if self._compiled is None:
            self._compiled = self._compile(conn.dialect)
        sql, binds = self._compiled
        values = []
        for name, value, process in binds:
            given = params[name] if value is _FROM_CALLER else params.get(name, value)
            values.append(given if process is None else process(given))
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            return await driver.fetchrow(sql, *values)
        except BaseException as exc:
            lost = driver.is_closed() or _unusable(exc)
            if lost or not isinstance(exc, Exception):
                await conn.invalidate()
            if lost:
                raise ConnectionError("the database connection is unusable") from exc
            raise


def _unusable(exc: BaseException) -> bool:
    """asyncpg's InterfaceError (a closed or confused connection), which SQLAlchemy reports as
    its own InterfaceError, an outage."""
    from asyncpg import InterfaceError  # type: ignore[import-untyped]

    return isinstance(exc, InterfaceError)
